"""Monthly statements (docs/statements.md): what moved an organization's wallet in one UTC calendar
month, line by line, from its opening balance to its closing balance, equal to the ledger to the last
decimal. Issued once per organization and month, numbered by the database without gaps."""

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organization
from billing_site.money import MoneyField
from metering.models import Service
from payments.models import TransferKind


class Statement(models.Model):
    """One organization's month. Its figures never change once issued (a trigger refuses it); only
    `emailed_at` is written afterwards."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="statements")
    number = models.PositiveIntegerField(db_default=0, editable=False, help_text="Assigned by the database: 1, 2, 3…")
    period_start = models.DateTimeField(help_text="The month's first instant (UTC), included.")
    period_end = models.DateTimeField(help_text="The next month's first instant (UTC), excluded.")
    currency = models.CharField(max_length=3)
    opening_balance = MoneyField()
    closing_balance = MoneyField()
    issued_at = models.DateTimeField(default=timezone.now)
    # The parties as they were when it was issued ({name, lines}): a later change never alters a statement.
    billed_to = models.JSONField(default=dict, editable=False)
    seller = models.JSONField(default=dict, editable=False)
    emailed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "number"], name="statement_number_once"),
            # Exactly once per organization and month, however many issuers run.
            models.UniqueConstraint(fields=["organization", "period_start"], name="statement_month_once"),
            models.CheckConstraint(condition=Q(number__gte=1), name="statement_number_positive"),
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")), name="statement_period_order"),
        ]

    def __str__(self) -> str:
        return f"S-{self.number:06d} ({self.period_start:%B %Y})"


class StatementLine(models.Model):
    """The sum of the statement month's wallet entries of one transfer kind (for usage: of one service;
    `service` empty for usage no record names). Immutable."""

    statement = models.ForeignKey(Statement, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=12, choices=TransferKind.choices)
    service = models.ForeignKey(Service, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    amount = MoneyField(help_text="Signed: what these movements added to the wallet.")
    transfers = models.PositiveIntegerField(help_text="How many ledger transfers the line sums.")

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["statement", "position"], name="statement_line_position_once")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount}"
