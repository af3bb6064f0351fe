"""Auto top-up (docs/credits.md, "Auto top-up"): one setting per organization, and the recharges it
starts (`Payment.auto`)."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from accounts.models import Organization
from billing_site.money import MoneyField

# After this many declines in a row, auto top-up turns itself off and tells the owners.
AUTO_RECHARGE_DECLINES_MAX = 3
# The sandbox's saved payment methods: one that is always charged, one that is always declined.
SANDBOX_METHOD_OK = "pm_sandbox_ok"
SANDBOX_METHOD_DECLINE = "pm_sandbox_decline"
SANDBOX_METHODS = (SANDBOX_METHOD_OK, SANDBOX_METHOD_DECLINE)


class AutoRecharge(models.Model):
    """When the wallet's available balance falls below `threshold`, one recharge of `amount` is charged
    off-session to the saved method, never more than `monthly_max` a UTC calendar month (succeeded and
    pending auto payments count). Changed only through `payments.auto_recharge`, which keeps the
    wallet's `auto_recharge_below` equal to `threshold` while enabled and NULL otherwise."""

    organization = models.OneToOneField(Organization, primary_key=True, on_delete=models.PROTECT, related_name="auto_recharge")
    enabled = models.BooleanField(default=False)
    threshold = MoneyField()
    amount = MoneyField()
    monthly_max = MoneyField()
    provider = models.CharField(max_length=20)
    # Stripe: the customer and a payment method attached to it (entered by staff in the back office).
    # The sandbox: one of SANDBOX_METHODS.
    stripe_customer = models.CharField(max_length=255, blank=True)
    payment_method = models.CharField(max_length=255, blank=True)
    consecutive_declines = models.PositiveSmallIntegerField(default=0, editable=False)
    disabled_reason = models.CharField(max_length=255, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gte=0), name="auto_recharge_threshold_nonnegative"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="auto_recharge_amount_positive"),
            models.CheckConstraint(condition=Q(monthly_max__gte=F("amount")), name="auto_recharge_max_covers_amount"),
        ]

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"auto top-up of {self.organization_id} ({state}): {self.amount} below {self.threshold}"
