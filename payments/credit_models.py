"""Credit grants, budgets and their spend (docs/credits.md). Imported by `payments.models`.

A grant is money in the wallet earmarked with a category, a burn priority and an expiry: the wallet's
`balance` is the sum of its grants' `remaining` plus ungranted money. `remaining` changes only in the
ledger's statements (a debit's draw, an expiry's write-off), and every change of it is a
`GrantAllocation` row, so `remaining == amount − sum(allocations)` for every grant.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiKey, Organization
from billing_site.money import MoneyField

GRANT_PRIORITY_MIN, GRANT_PRIORITY_MAX, GRANT_PRIORITY_DEFAULT = 1, 100, 50


class GrantCategory(models.TextChoices):
    PROMOTIONAL = "promotional"
    PAID = "paid"


class GrantSource(models.TextChoices):
    STAFF = "staff"
    REDEMPTION = "redemption"
    PLAN = "plan"
    RECHARGE = "recharge"


class CreditGrant(models.Model):
    """Credit put into the wallet by one `grant` transfer (or a redemption), burned by debits in the
    order priority, soonest expiry (none last), oldest; at `expires_at` the rest is written off with one
    `expiry` transfer (`expiry_transfer`)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    amount = MoneyField()
    remaining = MoneyField(editable=False)
    category = models.CharField(max_length=12, choices=GrantCategory.choices)
    priority = models.PositiveSmallIntegerField(default=GRANT_PRIORITY_DEFAULT, help_text="1–100; lower burns first.")
    expires_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=12, choices=GrantSource.choices)
    reason = models.TextField(blank=True)
    transfer = models.ForeignKey("payments.Transfer", on_delete=models.PROTECT, related_name="+")
    expiry_transfer = models.OneToOneField(
        "payments.Transfer", null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # The draw's order, over the grants that still hold something (a debit reads only these).
            models.Index(
                fields=["organization", "priority", "expires_at", "created_at", "id"],
                condition=Q(remaining__gt=0),
                name="grant_burn_order",
            ),
            models.Index(fields=["expires_at"], condition=Q(remaining__gt=0), name="grant_live_expiry"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="grant_amount_positive"),
            models.CheckConstraint(condition=Q(remaining__gte=0) & Q(remaining__lte=F("amount")), name="grant_remaining_range"),
            models.CheckConstraint(
                condition=Q(priority__gte=GRANT_PRIORITY_MIN) & Q(priority__lte=GRANT_PRIORITY_MAX), name="grant_priority_range"
            ),
            models.CheckConstraint(condition=Q(expiry_transfer__isnull=True) | Q(remaining=0), name="grant_expired_is_empty"),
        ]

    def __str__(self) -> str:
        return f"grant #{self.pk} ({self.category}, {self.remaining} of {self.amount})"


class GrantAllocation(models.Model):
    """What one transfer took from one grant (positive) or gave back to it (negative). Immutable
    (a trigger refuses UPDATE and DELETE)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="allocations")
    transfer = models.ForeignKey("payments.Transfer", on_delete=models.PROTECT, related_name="grant_allocations")
    amount = MoneyField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["organization", "grant", "id"], name="allocation_org_grant")]
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="allocation_amount_nonzero")]

    def __str__(self) -> str:
        return f"{self.amount} of grant #{self.grant_id} by transfer #{self.transfer_id}"


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    WEEK = "week"  # ISO weeks: Monday 00:00 UTC
    MONTH = "month"


class BudgetMode(models.TextChoices):
    HARD = "hard"  # a debit that would pass it is refused, atomically with the debit
    SOFT = "soft"  # alerts only


BUDGET_EXISTS = "A budget for this scope and period already exists: change that one."


class Budget(models.Model):
    """A spend limit on usage for the organization, or for one of its API keys, per UTC calendar day,
    week or month. Its spend lives in one BudgetSpend row per period, so it resets by itself."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=5, choices=BudgetPeriod.choices)
    amount = MoneyField()
    mode = models.CharField(max_length=4, choices=BudgetMode.choices, default=BudgetMode.HARD)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "api_key"], name="budget_org_key")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="budget_amount_positive"),
            # Two partial constraints rather than one with nulls_distinct=False, whose system check needs a
            # database connection (so `migrate --check` could not report the deployment's own errors).
            models.UniqueConstraint(
                fields=["organization", "period"],
                condition=Q(api_key__isnull=True),
                name="budget_one_per_scope_period",
                violation_error_message=BUDGET_EXISTS,
            ),
            models.UniqueConstraint(
                fields=["organization", "api_key", "period"],
                condition=Q(api_key__isnull=False),
                name="budget_one_per_key_period",
                violation_error_message=BUDGET_EXISTS,
            ),
        ]

    def __str__(self) -> str:
        scope = f"key {self.api_key_id}" if self.api_key_id else "organization"
        return f"{self.mode} {self.period} budget of {self.amount} ({scope})"


# Alert levels, in order: a BudgetSpend's `alerted` is the highest level whose alert went out this period.
BUDGET_ALERT_PERCENTS = (50, 80, 100)


class BudgetSpend(models.Model):
    """What a budget's scope spent in one period. Written by the ledger's statements (the debit's own
    statement adds to it, or refuses when a hard budget would be passed); `ceiling` and `amount` are the
    budget's as of the last write, so the statement checks them without reading the budget again."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="spends")
    period_start = models.DateTimeField()
    spent = MoneyField(default=0)
    amount = MoneyField()
    ceiling = MoneyField(null=True, blank=True, help_text="The hard limit; empty for a soft budget.")
    alerted = models.PositiveSmallIntegerField(default=0, help_text="How many alert levels (50/80/100 %) went out.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "budget", "period_start"], name="budget_spend_once_per_period"),
        ]

    def __str__(self) -> str:
        return f"{self.spent} of {self.amount} from {self.period_start:%Y-%m-%d}"
