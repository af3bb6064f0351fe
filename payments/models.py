import secrets
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organization
from billing_site.money import MoneyField
from payments.validators import alert_webhook_url_validate


def alert_signing_secret_new() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


STRIPES_MIN, STRIPES_MAX = 2, 64  # a high-volume wallet's stripes, besides its own row


class Wallet(models.Model):
    """An organization's prepaid balance. `balance` is a cache of the sum of its ledger entries,
    written only by `payments.ledger`; `held` is the sum of its active holds. A database trigger
    refuses any change of either that does not also bump `ledger_seq` by one (only the ledger's
    statements do), so a stale whole-row save cannot write an old balance back; settings change
    through `payments.services.wallet_settings_update`, which writes only their columns."""

    organization = models.OneToOneField(Organization, primary_key=True, on_delete=models.PROTECT, related_name="wallet")
    currency = models.CharField(max_length=3, default="USD")
    balance = MoneyField(default=0, editable=False)
    held = MoneyField(default=0, editable=False)
    credit_limit = MoneyField(default=0, help_text="How far below zero a postpaid tenant may go.")
    low_balance_threshold = MoneyField(default=0)
    low_balance_alerted = models.BooleanField(
        default=False, editable=False, help_text="Set when an alert went out; re-armed by a top-up."
    )
    alert_webhook_url = models.URLField(
        max_length=500,
        blank=True,
        validators=[alert_webhook_url_validate],
        help_text="Optional: a signed POST goes here on low balance.",
    )
    alert_signing_secret = models.CharField(
        max_length=64,
        default=alert_signing_secret_new,
        editable=False,
        help_text="Signs the alert webhook's body; the organization sees and rotates it.",
    )
    ledger_seq = models.BigIntegerField(
        default=0, editable=False, help_text="Bumped by exactly one by every ledger statement that changes balance or held."
    )
    # Editable so the admin's wallet form can offer it; it changes only through
    # `wallet_settings_update`, which moves the money (a whole-row save is refused, see `save`).
    stripes = models.PositiveSmallIntegerField(
        default=0,
        help_text="High-volume: how many stripes (WalletStripe rows) keep part of the balance; 0 = one row.",
    )
    # The auto top-up's threshold while it is on (docs/credits.md), copied here so the debit's own
    # statement can say that available fell below it without reading another table.
    auto_recharge_below = MoneyField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(held__gte=0), name="wallet_held_nonnegative"),
            models.CheckConstraint(condition=Q(credit_limit__gte=0), name="wallet_credit_limit_nonnegative"),
            models.CheckConstraint(
                condition=Q(stripes=0) | (Q(stripes__gte=STRIPES_MIN) & Q(stripes__lte=STRIPES_MAX)), name="wallet_stripes_range"
            ),
        ]

    def __str__(self) -> str:
        return f"Wallet of {self.organization_id}"

    LEDGER_COLUMNS = frozenset({"balance", "held", "ledger_seq", "low_balance_alerted", "stripes"})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A whole-row save writes back the balance it loaded, undoing any debit committed since.
        update_fields = kwargs.get("update_fields")
        if not self._state.adding and (update_fields is None or self.LEDGER_COLUMNS & set(update_fields)):
            raise RuntimeError(
                "A wallet is changed by the ledger or by payments.services.wallet_settings_update, never saved whole."
            )
        super().save(*args, **kwargs)

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any, **kwargs: Any) -> "Wallet":
        # A striped wallet's row keeps only its own part (the home stripe): every wallet loaded
        # through the ORM carries the organization's total, so every report reads totals.
        wallet = super().from_db(db, field_names, values, **kwargs)
        if wallet.__dict__.get("stripes") and "balance" in wallet.__dict__:
            wallet.balance += stripes_balance(organization_id=wallet.organization_id)
        return wallet

    @property
    def available(self) -> Decimal:
        return self.balance - self.held


def stripes_balance(*, organization_id: int) -> Decimal:
    """What a high-volume wallet's stripes hold now, all together (read, not locked); 0 without stripes."""
    total = WalletStripe.objects.filter(organization_id=organization_id).aggregate(total=models.Sum("balance"))["total"]
    return total or Decimal(0)


class WalletStripe(models.Model):
    """One stripe of a high-volume wallet (docs/contract.md §2.9): part of the balance, on its own row,
    so debits on different stripes proceed in parallel. Holds and the credit limit stay on the wallet
    row (the home stripe); `held` and `credit_limit` are here, always 0, so the ledger's one
    overdraft rule and statements run on either row. Written only by `payments.ledger` (a trigger
    refuses balance writes that do not bump `ledger_seq`, and deleting a stripe that holds money)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    stripe = models.PositiveSmallIntegerField()
    balance = MoneyField(default=0, editable=False)
    held = MoneyField(default=0, editable=False)
    credit_limit = MoneyField(default=0, editable=False)
    ledger_seq = models.BigIntegerField(default=0, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "stripe"], name="wallet_stripe_once"),
            models.CheckConstraint(condition=Q(stripe__gte=1) & Q(stripe__lte=STRIPES_MAX), name="wallet_stripe_number"),
            # Only checked debits reach a stripe, against a floor of 0: a stripe never goes negative.
            models.CheckConstraint(condition=Q(balance__gte=0), name="wallet_stripe_nonnegative"),
            models.CheckConstraint(condition=Q(held=0) & Q(credit_limit=0), name="wallet_stripe_no_holds_no_credit"),
        ]

    def __str__(self) -> str:
        return f"Stripe {self.stripe} of {self.organization_id}"


class TransferKind(models.TextChoices):
    RECHARGE = "recharge"
    USAGE = "usage"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    REDEMPTION = "redemption"
    SUBSCRIPTION = "subscription"  # a plan's fee, or the credit of its unused part on an upgrade
    REBALANCE = "rebalance"  # between a high-volume wallet's stripes: wallet legs only, never shown to customers
    GRANT = "grant"  # a credit grant put into the wallet (docs/credits.md)
    EXPIRY = "expiry"  # what an expired grant still held, written off to `expired_credits`


class Account(models.TextChoices):
    """Where an entry posts: the organization's wallet, or a system account (balances are sums)."""

    WALLET = "wallet"
    REVENUE = "revenue"
    PAYMENTS_CLEARING = "payments_clearing"
    PROMOTIONS = "promotions"
    ADJUSTMENTS = "adjustments"
    EXPIRED_CREDITS = "expired_credits"


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
    balance, in commit order, of the row they posted to: the wallet row, or its `stripe`."""

    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    account = models.CharField(max_length=20, choices=Account.choices)
    amount = MoneyField()
    balance_after = MoneyField(null=True, blank=True)
    stripe = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The stripe this wallet entry posted to; empty: the wallet row (home)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["organization", "account", "id"], name="entry_org_account_id"),
            models.Index(fields=["account", "created_at"], name="entry_account_time"),
            models.Index(fields=["organization", "stripe", "id"], name="entry_org_stripe_id", condition=Q(stripe__isnull=False)),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="entry_amount_nonzero"),
            models.CheckConstraint(
                condition=(Q(account="wallet") & Q(balance_after__isnull=False))
                | (~Q(account="wallet") & Q(balance_after__isnull=True)),
                name="entry_balance_after_on_wallets_only",
            ),
            models.CheckConstraint(condition=Q(stripe__isnull=True) | Q(account="wallet"), name="entry_stripe_on_wallets_only"),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.amount}"


class PaymentStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


FINAL_PAYMENT_STATUSES = frozenset({PaymentStatus.FAILED, PaymentStatus.CANCELED})


class Payment(models.Model):
    """A recharge through a provider. Credited at most once (its `transfer`), by the settlement task."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payments")
    provider = models.CharField(max_length=20)
    amount = MoneyField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.PENDING)
    provider_reference = models.CharField(max_length=255, blank=True, help_text="The provider's id, e.g. a Checkout Session id.")
    checkout_url = models.URLField(max_length=2000, blank=True)
    livemode = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    refunded_amount = MoneyField(default=0)
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    failure_reason = models.CharField(max_length=255, blank=True)
    auto = models.BooleanField(default=False, editable=False, help_text="Started by auto top-up, off-session.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="payment_org_time"),
            models.Index(fields=["status", "created_at"], name="payment_status_time"),
            models.Index(fields=["provider", "provider_reference"], name="payment_provider_ref"),
            models.Index(fields=["organization", "created_at"], condition=Q(auto=True), name="payment_auto_org_time"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["organization", "idempotency_key"], name="payment_idempotency_key_per_org"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0) & Q(refunded_amount__lte=F("amount")), name="payment_refund_within_amount"
            ),
            # Auto top-up starts exactly one recharge at a time per organization, however many tasks race.
            models.UniqueConstraint(
                fields=["organization"], condition=Q(auto=True) & Q(status="pending"), name="payment_one_pending_auto_per_org"
            ),
        ]

    def __str__(self) -> str:
        return f"payment #{self.pk} {self.amount} {self.currency} ({self.status})"


class WebhookEvent(models.Model):
    """A provider notification, stored once per (provider, event id) before anything acts on it."""

    provider = models.CharField(max_length=20)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=100)
    payload = models.JSONField()
    organization = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="webhook_event_once")]
        indexes = [models.Index(fields=["processed_at", "received_at"], name="webhook_unprocessed")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.event_id}"


class RefundStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Refund(models.Model):
    """Money returned to the payer. Reserved on the wallet (as a hold) before the provider is
    called; posted as a `refund` transfer once the provider accepted it, released otherwise."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = MoneyField()
    status = models.CharField(max_length=10, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    reason = models.TextField()
    forced = models.BooleanField(default=False, help_text="Allowed below the wallet's available balance.")
    provider_reference = models.CharField(max_length=255, blank=True)
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive")]

    def __str__(self) -> str:
        return f"refund #{self.pk} of payment #{self.payment_id}"


class RedemptionCode(models.Model):
    """A voucher. Only a digest of the code is stored; the codes are shown once at generation."""

    batch = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    amount = MoneyField()
    currency = models.CharField(max_length=3, default="USD")
    max_uses = models.PositiveIntegerField(default=1)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # The promotional credit grant a redemption puts into the wallet (docs/credits.md).
    grant_priority = models.PositiveSmallIntegerField(default=50, help_text="1–100; lower burns first.")
    grant_expires_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="The credit expires this many days after it is redeemed; empty for never."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="code_amount_positive"),
            models.CheckConstraint(condition=Q(uses__lte=F("max_uses")), name="code_uses_within_max"),
            models.CheckConstraint(
                condition=Q(grant_priority__gte=1) & Q(grant_priority__lte=100), name="code_grant_priority_range"
            ),
            models.CheckConstraint(
                condition=Q(grant_expires_days__isnull=True) | Q(grant_expires_days__gte=1),
                name="code_grant_expires_days_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.batch})"


class Redemption(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    code = models.ForeignKey(RedemptionCode, on_delete=models.PROTECT, related_name="redemptions")
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "code"], name="redemption_once_per_org")]

    def __str__(self) -> str:
        return f"{self.code} by {self.organization_id}"


class AlertDeliveryKind(models.TextChoices):
    BALANCE_LOW = "balance.low"
    BUDGET_THRESHOLD = "budget.threshold"
    AUTO_RECHARGE_OFF = "auto_recharge.off"
    TEST = "test"


class AlertDelivery(models.Model):
    """One attempt to POST an alert to an organization's webhook, as its delivery log shows it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=AlertDeliveryKind.choices)
    url = models.CharField(max_length=500)
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The receiver's answer; empty when none came."
    )
    delivered = models.BooleanField(default=False)
    error = models.CharField(max_length=300, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "alert deliveries"
        indexes = [models.Index(fields=["organization", "-created_at"], name="alert_delivery_org_time")]

    def __str__(self) -> str:
        return f"{self.kind} to {self.url}: {self.status_code or self.error}"


from payments.auto_models import AutoRecharge  # noqa: E402 - see below
from payments.credit_models import (  # noqa: E402 - the models module is where Django looks for them
    BUDGET_ALERT_PERCENTS,
    GRANT_PRIORITY_DEFAULT,
    GRANT_PRIORITY_MAX,
    GRANT_PRIORITY_MIN,
    Budget,
    BudgetMode,
    BudgetPeriod,
    BudgetSpend,
    CreditGrant,
    GrantAllocation,
    GrantCategory,
    GrantSource,
)
from payments.document_models import DocumentCounter, DocumentKind, Receipt  # noqa: E402

__all__ = [
    "BUDGET_ALERT_PERCENTS",
    "GRANT_PRIORITY_DEFAULT",
    "GRANT_PRIORITY_MAX",
    "GRANT_PRIORITY_MIN",
    "AutoRecharge",
    "Budget",
    "BudgetMode",
    "BudgetPeriod",
    "BudgetSpend",
    "CreditGrant",
    "DocumentCounter",
    "DocumentKind",
    "GrantAllocation",
    "GrantCategory",
    "GrantSource",
    "Receipt",
]
