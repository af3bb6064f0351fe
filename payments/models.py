from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization
from billing_site.money import MoneyField


class Wallet(models.Model):
    """An organization's prepaid balance. `balance` is a cache of the sum of its ledger entries,
    written only by `payments.ledger`; `held` is the sum of its active holds."""

    organization = models.OneToOneField(Organization, primary_key=True, on_delete=models.PROTECT, related_name="wallet")
    currency = models.CharField(max_length=3, default="USD")
    balance = MoneyField(default=0, editable=False)
    held = MoneyField(default=0, editable=False)
    credit_limit = MoneyField(default=0, help_text="How far below zero a postpaid tenant may go.")
    low_balance_threshold = MoneyField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(held__gte=0), name="wallet_held_nonnegative"),
            models.CheckConstraint(condition=Q(credit_limit__gte=0), name="wallet_credit_limit_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"Wallet of {self.organization_id}"

    @property
    def available(self):
        return self.balance - self.held


class TransferKind(models.TextChoices):
    RECHARGE = "recharge"
    USAGE = "usage"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    REDEMPTION = "redemption"


class Account(models.TextChoices):
    """Where an entry posts: the organization's wallet, or a system account (balances are sums)."""

    WALLET = "wallet"
    REVENUE = "revenue"
    PAYMENTS_CLEARING = "payments_clearing"
    PROMOTIONS = "promotions"
    ADJUSTMENTS = "adjustments"


class Transfer(models.Model):
    """One movement of money; its entries sum to zero (checked by a database trigger)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="transfers")
    kind = models.CharField(max_length=12, choices=TransferKind.choices)
    reference = models.CharField(
        max_length=300, blank=True, help_text="What caused it, e.g. usage:<idempotency key> or payment:45."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    memo = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "kind", "created_at"], name="transfer_org_kind_time")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"


class LedgerEntry(models.Model):
    """Immutable (UPDATE and DELETE are refused by a trigger). Wallet entries carry the running
    balance after them, in commit order."""

    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    account = models.CharField(max_length=20, choices=Account.choices)
    amount = MoneyField()
    balance_after = MoneyField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["organization", "account", "id"], name="entry_org_account_id"),
            models.Index(fields=["account", "created_at"], name="entry_account_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="entry_amount_nonzero"),
            models.CheckConstraint(
                condition=(Q(account="wallet") & Q(balance_after__isnull=False))
                | (~Q(account="wallet") & Q(balance_after__isnull=True)),
                name="entry_balance_after_on_wallets_only",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.amount}"
