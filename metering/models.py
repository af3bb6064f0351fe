from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, Organization
from billing_site.money import MoneyField
from payments.models import Transfer


class CalcMethod(models.TextChoices):
    TOKENS = "TOKENS", "Tokens (input and output per 1M)"
    CHAR_COUNT = "CHAR_COUNT", "Characters (per 1K)"
    WORD_COUNT = "WORD_COUNT", "Words (per 1K)"
    IMAGE_RESOLUTION = "IMAGE_RESOLUTION", "Image tiles of 512×512 (per tile)"
    REQUEST = "REQUEST", "Requests (per request)"


class Service(models.Model):
    """Something billable, e.g. gpt-4o."""

    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    calc_method = models.CharField(max_length=20, choices=CalcMethod.choices)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug


class PriceModel(models.TextChoices):
    """How a price turns quantities into money (docs/pricing.md)."""

    PER_UNIT = "per_unit", "Per unit"
    TIERED = "tiered", "Tiered (graduated)"
    VOLUME = "volume", "Volume"
    PACKAGE = "package", "Package"


class Price(models.Model):
    """The prices of a service from `effective_from` on: for every organization, for one (an override),
    or for the subscribers of one plan. Never edited in place (a trigger refuses UPDATE): a change of
    rate is a new row. A `per_unit` row sets the method's price fields; `tiered` and `volume` rows set
    `tiers`; a `package` row sets `unit_price` (per package) and `package_size`."""

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="prices")
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="prices",
        help_text="Empty: the general price. Set: an override for this organization only.",
    )
    plan = models.ForeignKey(
        "Plan",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="prices",
        help_text="Set: the price for this plan's active subscribers (an organization's own override still comes first).",
    )
    effective_from = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=10, choices=PriceModel.choices, default=PriceModel.PER_UNIT)
    tiers = models.JSONField(
        null=True,
        blank=True,
        help_text='Tiered and volume: [{"up_to": <int or null>, <price fields>, "flat_fee"?}], amounts as strings.',
    )
    package_size = models.BigIntegerField(null=True, blank=True, help_text="Package: quantity units per package.")
    input_price = MoneyField(null=True, blank=True, help_text="TOKENS: per 1,000,000 input tokens.")
    output_price = MoneyField(null=True, blank=True, help_text="TOKENS: per 1,000,000 output tokens.")
    cached_input_price = MoneyField(
        null=True,
        blank=True,
        help_text="TOKENS, optional: per 1,000,000 cached input tokens. Empty: they cost the input price.",
    )
    unit_price = MoneyField(null=True, blank=True, help_text="Per 1,000 characters / 1,000 words / tile / request.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["service", "organization", "-effective_from"], name="price_lookup")]
        constraints = [
            models.CheckConstraint(
                condition=(Q(input_price__isnull=True) | Q(input_price__gte=0))
                & (Q(output_price__isnull=True) | Q(output_price__gte=0))
                & (Q(cached_input_price__isnull=True) | Q(cached_input_price__gte=0))
                & (Q(unit_price__isnull=True) | Q(unit_price__gte=0)),
                name="price_nonnegative",
            ),
            models.CheckConstraint(condition=Q(organization__isnull=True) | Q(plan__isnull=True), name="price_one_scope"),
            models.CheckConstraint(
                condition=Q(package_size__isnull=True) | Q(package_size__gte=1, model="package"), name="price_package_size"
            ),
        ]

    def __str__(self) -> str:
        scope = (self.organization_id and f"org {self.organization_id}") or (self.plan_id and f"plan {self.plan_id}") or "all"
        return f"{self.service} ({scope}) from {self.effective_from:%Y-%m-%d %H:%M}"


class UsageRecord(models.Model):
    """One metered event. Immutable: UPDATE and DELETE are refused by a database trigger."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    quantity = models.BigIntegerField()
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cached_input_tokens = models.BigIntegerField(
        null=True, blank=True, help_text="TOKENS: how many of the input tokens were cached (empty when not reported)."
    )
    input_price = MoneyField(null=True, blank=True)
    output_price = MoneyField(null=True, blank=True)
    cached_input_price = MoneyField(
        null=True, blank=True, help_text="The rate the cached input tokens were charged at (the input price when none was set)."
    )
    unit_price = MoneyField(null=True, blank=True)
    cost = MoneyField()
    test = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(
        max_length=64, help_text="SHA-256 of the canonical request, to tell a replay from a conflict."
    )
    metadata = models.JSONField(default=dict, blank=True)
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    balance_after = MoneyField(null=True, blank=True)
    hold = models.ForeignKey("Hold", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    position = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="The organization's usage of the service this period before this event (positional prices only).",
    )
    pricing = models.JSONField(
        null=True,
        blank=True,
        help_text="What a positional price was priced with: model, tiers or package, and where free units ended.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-created_at", "-id"], name="usage_org_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]
        constraints = [
            # Mode is part of idempotency: a test event can never answer for (and so swallow) a live one.
            models.UniqueConstraint(
                fields=["organization", "test", "idempotency_key"], name="usage_idempotency_key_per_org_mode"
            ),
            models.CheckConstraint(condition=Q(cost__gte=0) & Q(quantity__gte=0), name="usage_nonnegative"),
            # Cached tokens are a part of the input tokens, and their rate is kept exactly when they are
            # (a positional price keeps its tiers in `pricing` instead).
            models.CheckConstraint(
                condition=Q(cached_input_tokens__isnull=True, cached_input_price__isnull=True)
                | Q(
                    cached_input_tokens__isnull=False,
                    input_tokens__isnull=False,
                    cached_input_tokens__gte=0,
                    cached_input_tokens__lte=models.F("input_tokens"),
                    pricing__isnull=False,
                )
                | Q(
                    # explicit NOT NULLs: a comparison with NULL would let the row through
                    cached_input_tokens__isnull=False,
                    input_tokens__isnull=False,
                    cached_input_tokens__gte=0,
                    cached_input_tokens__lte=models.F("input_tokens"),
                    cached_input_price__isnull=False,
                ),
                name="usage_cached_input_within_input_v2",
            ),
        ]

    def __str__(self) -> str:
        return f"usage #{self.pk}"


class UsageRollup(models.Model):
    """Daily totals per (organization, service, day, live/test), kept current with every record so
    that summaries never scan usage records. A high-volume organization's hot-path debits keep one row
    per stripe (docs/contract.md §2.9), so they do not all wait on one rollup row; summaries sum them."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+", db_index=False)
    day = models.DateField()
    test = models.BooleanField(default=False)
    events = models.BigIntegerField(default=0)
    quantity = models.DecimalField(max_digits=30, decimal_places=0, default=0)
    input_tokens = models.DecimalField(max_digits=30, decimal_places=0, default=0)
    output_tokens = models.DecimalField(max_digits=30, decimal_places=0, default=0)
    cost = MoneyField(default=0)
    stripe = models.PositiveSmallIntegerField(
        default=0, help_text="A high-volume wallet's debits each add to their stripe's row (0: any other); readers sum."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "day", "service", "test", "stripe"], name="rollup_unique_day"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.service_id} on {self.day}"


class HoldStatus(models.TextChoices):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class Hold(models.Model):
    """Money reserved for a long or streamed call; moves no money until captured."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    amount = MoneyField()
    maxima = models.JSONField(default=dict, blank=True, help_text="The quantities the amount was estimated from.")
    test = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=HoldStatus.choices, default=HoldStatus.ACTIVE)
    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    budget_spends = ArrayField(
        models.BigIntegerField(),
        default=list,
        blank=True,
        editable=False,
        help_text="The budget spend rows this hold counts against until it is captured or released.",
    )

    class Meta:
        indexes = [models.Index(fields=["expires_at"], condition=Q(status="active"), name="hold_active_expiry")]
        constraints = [
            models.UniqueConstraint(fields=["organization", "test", "idempotency_key"], name="hold_idempotency_key_per_org_mode"),
            # The hold bounds what an over-capture can cost (docs/contract.md §2.4): a zero hold would bound nothing.
            models.CheckConstraint(condition=Q(amount__gt=0), name="hold_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"hold #{self.pk} ({self.status})"


class UsagePosition(models.Model):
    """An organization's usage of one service in one period (calendar month, UTC), kept for the prices
    that depend on it (tiered, volume, package, or a plan's included quantity): the hot path advances
    it in the debit's own statement, so no two events are priced at the same position. Units at
    positions below `free_until` are free (a plan's included quantity)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+", db_index=False)
    period = models.DateField(help_text="The first day of the month.")
    test = models.BooleanField(default=False)
    used = models.BigIntegerField(default=0)
    free_until = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "service", "period", "test"], name="usage_position_once"),
            models.CheckConstraint(condition=Q(used__gte=0) & Q(free_until__gte=0), name="usage_position_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.service_id} in {self.period:%Y-%m}: {self.used}"


class Plan(models.Model):
    """A staff-defined plan: a monthly fee, quantities included each month, and its own prices
    (Price rows with `plan` set)."""

    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    monthly_fee = MoneyField(default=0)
    public = models.BooleanField(default=True, help_text="Customers may choose it (GET plans/).")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(monthly_fee__gte=0), name="plan_fee_nonnegative")]

    def __str__(self) -> str:
        return self.slug


class PlanAllowance(models.Model):
    """A quantity of a service a plan includes each month, used before any price applies."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="allowances")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    quantity = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "service"], name="plan_allowance_once"),
            models.CheckConstraint(condition=Q(quantity__gte=0), name="plan_allowance_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.plan}: {self.quantity} of {self.service}"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"


class Subscription(models.Model):
    """An organization's plan: at most one that is not canceled. Its periods are calendar months (UTC)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=10, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    period = models.DateField(help_text="The first day of the month of the current period.")
    next_plan = models.ForeignKey(
        Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="A downgrade from the next period."
    )
    cancel_at_period_end = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    canceled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization"], condition=~Q(status="canceled"), name="subscription_one_open_per_org"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} on {self.plan} ({self.status})"


class SubscriptionChargeKind(models.TextChoices):
    PERIOD_FEE = "period_fee", "Period fee"
    START_FEE = "start_fee", "Fee for the rest of the month (pro rata)"
    UPGRADE_CREDIT = "upgrade_credit", "Unused part of the old plan (upgrade)"
    UPGRADE_FEE = "upgrade_fee", "New plan for the rest of the month (upgrade)"


class SubscriptionCharge(models.Model):
    """One fee (or credit) of a subscription. A period's fee and a start fee are unique per
    (subscription, period, kind, plan), so a task or request that runs twice charges once."""

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="charges")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+", db_index=False)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    period = models.DateField()
    kind = models.CharField(max_length=16, choices=SubscriptionChargeKind.choices)
    amount = MoneyField(help_text="Positive: charged to the wallet; negative: credited.")
    monthly_fee = MoneyField(default=0, help_text="The plan's monthly fee the amount was computed from.")
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # A period's fee once, however often renewal runs; upgrades are the customer's own acts,
            # serialized on the subscription's lock, and may go A → B → A → B in a month when staff move fees.
            models.UniqueConstraint(
                fields=["subscription", "period", "kind", "plan"],
                condition=Q(kind__in=["period_fee", "start_fee"]),
                name="subscription_charge_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} for {self.period:%Y-%m}"


class VolumeTrueUp(models.Model):
    """The correction, once per (organization, service, period), that makes a closed period's volume
    charges equal the volume price of its total quantity."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+", db_index=False)
    period = models.DateField()
    charged = MoneyField()
    target = MoneyField()
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "service", "period"], name="volume_true_up_once")]

    def __str__(self) -> str:
        return f"true-up {self.organization_id}/{self.service_id} {self.period:%Y-%m}"
