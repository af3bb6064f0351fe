import zoneinfo
from decimal import Decimal
from functools import cache
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.signals import user_password_changed
from billing_site.money import MoneyField
from billing_site.validators import multiline_text_validate, plain_text_validate


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: Any) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> "User":
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, email: str | None) -> "User":
        # Emails are stored lower-cased (above), so signing in must not depend on the case typed.
        return self.get(email=self.normalize_email(email).lower())

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> "User":
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)


def time_zone_validate(name: str) -> None:
    if name not in time_zone_names():
        raise ValidationError("Unknown time zone.", code="invalid")


@cache
def time_zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class User(AbstractBaseUser, PermissionsMixin):
    """A person. The email address is the login."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    time_zone = models.CharField(
        max_length=64, default="UTC", validators=[time_zone_validate], help_text="IANA name; the dashboard shows times in it."
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []
    _password: str | None  # AbstractBaseUser's: the raw password set_password() keeps until the save

    def __str__(self) -> str:
        return self.email

    def clean(self):
        super().clean()
        # Forms (the admin's too) save without the manager: store the email as the manager does.
        self.email = User.objects.normalize_email(self.email).lower()

    def set_unusable_password(self):
        super().set_unusable_password()
        self._password_made_unusable = True

    def save(self, *args, **kwargs):
        # set_password() keeps the new raw password in `_password` until the save (Django's own
        # password_changed hook reads it there); a sign-in that re-hashes the same password clears it first.
        made_unusable = self.__dict__.pop("_password_made_unusable", False)
        replaced = self._password is not None or made_unusable
        if not replaced or self._state.adding:
            return super().save(*args, **kwargs)
        with transaction.atomic():
            super().save(*args, **kwargs)
            user_password_changed.send(sender=User, user=self)


class Organization(models.Model):
    """The tenant: owns a wallet, API keys, usage and payments."""

    name = models.CharField(max_length=120, validators=[plain_text_validate])
    slug = models.SlugField(max_length=60, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Override of the per-key/user rate limit.")
    batch_events_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Override of the usage/batch/ event rate limit."
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="organizations")
    wallet_stripes = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="Where the hot path sends a debit: a copy of the wallet's stripe count (0: one row), written with it.",
    )
    # Who the receipts and statements are made out to (docs/statements.md); the name defaults to `name`.
    billing_name = models.CharField(
        max_length=200, blank=True, validators=[plain_text_validate], help_text="The legal name on receipts and statements."
    )
    billing_address = models.TextField(
        max_length=1000, blank=True, validators=[multiline_text_validate], help_text="Postal address, as printed on documents."
    )
    tax_id = models.CharField(
        max_length=64,
        blank=True,
        validators=[plain_text_validate],
        help_text="VAT number or other tax id, as printed on documents.",
    )

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKeyMode(models.TextChoices):
    LIVE = "live", "Live"
    TEST = "test", "Test"


class ApiKey(models.Model):
    """An organization's API key. Only a SHA-256 digest of the secret is stored (the secret has
    256 bits of entropy, so a slow hash would add latency to every request and no safety)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    mode = models.CharField(max_length=4, choices=ApiKeyMode.choices, default=ApiKeyMode.LIVE)
    prefix = models.CharField(max_length=20, help_text="The readable start of the key, e.g. tg_live_AbC123.")
    digest = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    spend_cap = MoneyField(null=True, blank=True, help_text="Most this key may spend in live mode, in total; empty for no cap.")
    spent = MoneyField(default=0, editable=False)
    # The AI gateway's limits for this key (docs/gateway.md).
    allowed_models = ArrayField(
        models.CharField(max_length=120), default=list, blank=True, help_text="Models this key may call; empty for all."
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Gateway requests per minute; empty for none.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Gateway tokens per minute; empty for none.")
    max_concurrent_streams = models.PositiveIntegerField(
        null=True, blank=True, help_text="Gateway streams open at once; empty for none."
    )

    class Meta:
        indexes = [models.Index(fields=["organization", "created_at"], name="apikey_org_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(spend_cap__isnull=True) | Q(spend_cap__gte=0), name="apikey_spend_cap_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    GUARDED_COLUMNS: ClassVar[frozenset[str]] = frozenset({"spent", "revoked_at"})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # `spent` is money: only the usage statements raise it, in the wallet's lock; a revocation is
        # final (api_key_revoke). A whole-row save of a key loaded earlier (an admin form) would write an
        # old total back and reopen its cap, or un-revoke it: such saves leave both columns alone.
        if not self._state.adding:
            update_fields = kwargs.get("update_fields")
            if update_fields is None:
                kwargs["update_fields"] = [
                    f.name for f in self._meta.concrete_fields if not f.primary_key and f.name not in self.GUARDED_COLUMNS
                ]
            elif self.GUARDED_COLUMNS & set(update_fields):
                raise RuntimeError("An API key's spend and revocation are written only by their services.")
        super().save(*args, **kwargs)

    @property
    def is_test(self) -> bool:
        return self.mode == ApiKeyMode.TEST

    @property
    def lifetime_spent(self) -> Decimal:
        """What the key has spent in live mode: its own `spent`, plus what it spent on the stripes of a
        high-volume wallet (`ApiKeyStripeSpend`; `accounts.selectors.api_key_list` annotates it)."""
        on_stripes = getattr(self, "spent_on_stripes", None)
        if on_stripes is None:
            on_stripes = self.stripe_spends.aggregate(total=models.Sum("spent"))["total"]
        return self.spent + (on_stripes or Decimal(0))

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ApiKeyStripeSpend(models.Model):
    """An API key's spend through one stripe of a high-volume wallet: striped debits raise this row
    instead of the key's own `spent`, so one key's debits do not queue on one row (docs/contract.md
    §2.9). Written only by the usage statements; a key's spend is `ApiKey.lifetime_spent`."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="stripe_spends")
    stripe = models.PositiveSmallIntegerField()
    spent = MoneyField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "stripe"], name="apikey_stripe_spend_unique")]

    def __str__(self) -> str:
        return f"key {self.api_key_id} on stripe {self.stripe}: {self.spent}"


class Invitation(models.Model):
    """An invitation to join an organization. The link's secret is not stored: only its SHA-256
    digest is, like an API key's. Pending while neither accepted nor revoked and not expired."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    digest = models.CharField(max_length=64, db_index=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Tenant data: unique constraints carry the organization (docs/contract.md §6).
            models.UniqueConstraint(fields=["organization", "digest"], name="invitation_unique_digest"),
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_email",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    def is_pending(self, now=None) -> bool:
        now = now or timezone.now()
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now
