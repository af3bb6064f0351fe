"""Dashboard forms: they validate input; services do the writing."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, cast
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.models import ApiKey, ApiKeyMode, Role, time_zone_names
from accounts.services import API_KEY_LIMIT_MAX
from billing_site import throttle
from billing_site.errors import DomainError
from billing_site.money import currency_exponent
from metering.models import Service
from payments.providers import providers_enabled
from payments.validators import alert_webhook_url_validate

if TYPE_CHECKING:
    _LoginFormBase = AuthenticationForm
else:
    _LoginFormBase = object

SIGNUPS_PER_IP_PER_HOUR = 20
RESETS_PER_IP_PER_HOUR = 10


def service_error_add(form: forms.Form, error: DomainError) -> None:
    """Show a service's refusal next to the field its details name, or above the form."""
    form.add_error(next((name for name in error.details if name in form.fields), None), error.message)


class ThrottledLoginMixin(_LoginFormBase):
    """The sign-in lockout of billing_site.throttle (the API token obeys the same one): a locked-out
    attempt does not even check the password."""

    throttled_message = "Too many failed attempts. Try again in %(minutes)s minute(s), or reset your password."

    def clean(self):
        email = self.cleaned_data.get("username") or ""
        ip = throttle.client_ip(self.request) if self.request else ""
        wait = throttle.signin_retry_after(email=email, ip=ip) if email else 0
        if wait:
            raise ValidationError(self.throttled_message, code="throttled", params={"minutes": -(-wait // 60)})
        try:
            cleaned = super().clean()
        except ValidationError as error:
            if email and error.code == "invalid_login":
                throttle.signin_failed(email=email, ip=ip)
            raise
        throttle.signin_succeeded(email=email, ip=ip)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """Django's sign-in for the dashboard, throttled against guessing."""

    error_messages = {**AuthenticationForm.error_messages, "invalid_login": "That email and password do not match an account."}

    def __init__(self, request=None, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        self.fields["username"].label = "Email"
        self.fields["username"].widget = forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The back office's sign-in, throttled the same way (staff accounts are the juiciest target)."""


class SignupForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))
    password = forms.CharField(
        strip=False,
        min_length=8,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters; not a common password.",
    )
    organization = forms.CharField(
        max_length=120,
        label="Organization name",
        widget=forms.TextInput(attrs={"autocomplete": "organization", "placeholder": "Acme AI"}),
    )

    def __init__(self, *args, request=None, **kwargs):
        self.request = request
        super().__init__(*args, **kwargs)

    def clean(self):
        if self.request is not None and throttle.rate_exceeded(
            "signup", throttle.client_ip(self.request), limit=SIGNUPS_PER_IP_PER_HOUR, window=3600
        ):
            raise ValidationError("Too many sign-ups from your network. Try again later.", code="throttled")
        return super().clean()


class InvitationSignupForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, widget=forms.TextInput(attrs={"autocomplete": "name"}))
    password = forms.CharField(strip=False, min_length=8, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))


class ThrottledPasswordResetForm(PasswordResetForm):
    """Django's reset form (silent about unknown addresses), limited per client address so it
    cannot be used to flood an inbox."""

    def __init__(self, *args, request=None, **kwargs):
        self.request = request
        super().__init__(*args, **kwargs)
        self.fields["email"].widget.attrs["autofocus"] = True

    def clean(self):
        if self.request is not None and throttle.rate_exceeded(
            "reset", throttle.client_ip(self.request), limit=RESETS_PER_IP_PER_HOUR, window=3600
        ):
            raise ValidationError("Too many reset requests from your network. Try again later.", code="throttled")
        return super().clean()


class OrganizationForm(forms.Form):
    organization = forms.CharField(max_length=120, label="Organization name")


# --- Usage ------------------------------------------------------------------------------------------

MODE_CHOICES = [("", "Live and test"), ("live", "Live"), ("test", "Test")]
PERIOD_CHOICES = [
    ("today", "Today"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("month", "This month"),
    ("last_month", "Last month"),
    ("custom", "Custom dates"),
]
PERIOD_DEFAULT = "30d"
GROUP_CHOICES = [("day", "Day"), ("service", "Service"), ("key", "API key")]


def _month_start(day: date) -> date:
    return day.replace(day=1)


def period_days(period: str, *, today: date) -> tuple[date, date]:
    """The first and last local day of a preset, as seen on `today`."""
    if period == "today":
        return today, today
    if period == "7d":
        return today - timedelta(days=6), today
    if period == "month":
        return _month_start(today), today
    if period == "last_month":
        last = _month_start(today) - timedelta(days=1)
        return _month_start(last), last
    return today - timedelta(days=29), today


class UsageFilterForm(forms.Form):
    period = forms.ChoiceField(required=False, choices=PERIOD_CHOICES, label="Period")
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    service = forms.ChoiceField(required=False)
    api_key = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="API key")
    mode = forms.ChoiceField(required=False, choices=MODE_CHOICES)
    group = forms.ChoiceField(required=False, choices=GROUP_CHOICES, label="Group by")

    api_keys: dict[int | None, ApiKey]  # the organization's keys by id, set by the view (a record's key id may be None)
    services: dict[int, Service]  # every service by id, set by the view

    def __init__(self, *args, services: list[tuple[str, str]], api_keys: list[ApiKey], **kwargs):
        super().__init__(*args, **kwargs)
        # By name, the slug after it: people know their services by name, the API by slug.
        cast(forms.ChoiceField, self.fields["service"]).choices = [
            ("", "All services"),
            *((slug, f"{name} ({slug})" if name != slug else slug) for slug, name in services),
        ]
        cast(forms.ChoiceField, self.fields["api_key"]).choices = [("", "All keys")] + [
            (key.pk, f"{key.name} ({key.prefix}…)" + (" — revoked" if key.revoked_at else "")) for key in api_keys
        ]

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data  # what Form.clean() answers
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            raise ValidationError("The start date is after the end date.")
        if start or end:
            cleaned["period"] = "custom"
        elif cleaned.get("period") == "custom":
            raise ValidationError("Pick a start or an end date for custom dates.")
        return cleaned

    @property
    def chosen_period(self) -> str:
        data = self.cleaned_data if self.is_valid() else {}
        return data.get("period") or PERIOD_DEFAULT

    @property
    def chosen_group(self) -> str:
        data = self.cleaned_data if self.is_valid() else {}
        return data.get("group") or "day"

    def window(self) -> tuple[datetime | None, datetime]:
        """[start, end) of the chosen period in the current (the person's) time zone: whole local
        days, `date_to` inclusive. No start: from the first record on."""
        tz = timezone.get_current_timezone()
        today = timezone.localdate()
        if self.chosen_period == "custom":
            start, end = self.cleaned_data.get("date_from"), self.cleaned_data.get("date_to") or today
        else:
            start, end = period_days(self.chosen_period, today=today)
        midnight = lambda day: datetime.combine(day, time.min, tzinfo=tz)  # noqa: E731
        return (midnight(start) if start else None), midnight(end + timedelta(days=1))

    def selector_filters(self) -> dict:
        """The arguments of metering.selectors.usage_list."""
        data = self.cleaned_data if self.is_valid() else {}
        start, end = self.window()
        return {
            "service": data.get("service") or None,
            "created_from": start,
            "created_to": end,
            "api_key_id": data.get("api_key"),
            "test": {"live": False, "test": True}.get(data.get("mode") or ""),
        }

    def querystring(self, **changes: str) -> str:
        """The filters as a query string, for the pagination, preset and export links."""
        data = self.cleaned_data if self.is_valid() else {}
        params = {name: data.get(name) for name in self.fields}
        if params.get("period") == "custom" and (params.get("date_from") or params.get("date_to")):
            params["period"] = None  # the dates say it
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v not in (None, "")})


# --- API keys ---------------------------------------------------------------------------------------


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"placeholder": "e.g. Production backend"}))
    mode = forms.ChoiceField(choices=ApiKeyMode.choices, initial=ApiKeyMode.LIVE, widget=forms.RadioSelect)
    spend_cap = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        label="Spend cap",
        help_text="The most this key may ever spend in live mode.",
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The key stops working at the start of this day (UTC).",
    )

    # The AI gateway's limits of the key (accounts.services.api_key_limits_update says what they accept).
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Models",
        help_text="The AI gateway models this key may call; none ticked allows every model.",
    )
    rpm_limit = forms.IntegerField(
        required=False, min_value=1, max_value=API_KEY_LIMIT_MAX, label="Requests per minute", help_text="Empty for no limit."
    )
    tpm_limit = forms.IntegerField(
        required=False, min_value=1, max_value=API_KEY_LIMIT_MAX, label="Tokens per minute", help_text="Empty for no limit."
    )
    max_concurrent_streams = forms.IntegerField(
        required=False, min_value=1, max_value=API_KEY_LIMIT_MAX, label="Streams at once", help_text="Empty for no limit."
    )

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.MultipleChoiceField, self.fields["allowed_models"]).choices = [(model, model) for model in models]

    def clean_expires_on(self):
        day = self.cleaned_data.get("expires_on")
        if day and day <= timezone.now().date():
            raise ValidationError("Pick a day in the future.")
        return day

    def expires_at(self) -> datetime | None:
        day = self.cleaned_data.get("expires_on")
        return datetime.combine(day, time.min, tzinfo=timezone.get_default_timezone()) if day else None


# --- Billing ----------------------------------------------------------------------------------------


def available_providers() -> list[tuple[str, str]]:
    labels = {"sandbox": "Sandbox (test payments)", "stripe": "Card (Stripe)"}
    providers = [p for p in providers_enabled() if p != "stripe" or settings.STRIPE_SECRET_KEY]
    return [(p, labels.get(p, p.title())) for p in providers]


class RechargeForm(forms.Form):
    amount = forms.DecimalField(
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    provider = forms.ChoiceField(widget=forms.RadioSelect)
    idempotency_key = forms.CharField(max_length=64, widget=forms.HiddenInput)

    def __init__(self, *args, currency: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.currency = currency
        choices = available_providers()
        cast(forms.ChoiceField, self.fields["provider"]).choices = choices
        self.fields["provider"].initial = choices[0][0] if choices else None
        self.fields["amount"].widget.attrs.update(min=str(settings.RECHARGE_MIN), max=str(settings.RECHARGE_MAX))

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        places = currency_exponent(self.currency)
        if amount != amount.quantize(Decimal(1).scaleb(-places)):
            raise ValidationError(f"At most {places} decimal places.")
        if not settings.RECHARGE_MIN <= amount <= settings.RECHARGE_MAX:
            raise ValidationError(f"Between {settings.RECHARGE_MIN} and {settings.RECHARGE_MAX} {self.currency}.")
        return amount


class AutoRechargeForm(forms.Form):
    """Auto top-up's settings; the service (payments.auto_recharge) checks the amounts and the method."""

    enabled = forms.BooleanField(required=False, label="Top up automatically")
    threshold = forms.DecimalField(
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        label="When available falls below",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    amount = forms.DecimalField(
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        label="Top-up amount",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    monthly_max = forms.DecimalField(
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        label="At most per month",
        help_text="Pending top-ups count. Resets on the 1st (UTC).",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    provider = forms.ChoiceField(label="Charge", widget=forms.RadioSelect)
    payment_method = forms.ChoiceField(
        required=False,
        label="Sandbox method",
        choices=[
            ("pm_sandbox_ok", "Always charged (pm_sandbox_ok)"),
            ("pm_sandbox_decline", "Always declined (pm_sandbox_decline)"),
        ],
    )

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("auto_id", "auto_%s")  # the page's recharge form has its own `amount` and `provider`
        super().__init__(*args, **kwargs)
        labels = {"sandbox": "Sandbox", "stripe": "Saved card (Stripe)"}
        choices = [(p, labels[p]) for p in providers_enabled() if p in labels and (p != "stripe" or settings.STRIPE_SECRET_KEY)]
        cast(forms.ChoiceField, self.fields["provider"]).choices = choices


class RedeemForm(forms.Form):
    code = forms.CharField(
        max_length=40,
        label="Promotional code",
        widget=forms.TextInput(attrs={"placeholder": "XXXXX-XXXXX-XXXXX-XXXXX", "autocomplete": "off", "spellcheck": "false"}),
    )


# --- Team -------------------------------------------------------------------------------------------


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"placeholder": "teammate@example.com"}))
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args, grantable: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["role"]).choices = [
            (value, name) for value, name in Role.choices if value in grantable
        ]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


# --- Settings ---------------------------------------------------------------------------------------


class AlertSettingsForm(forms.Form):
    low_balance_threshold = forms.DecimalField(
        min_value=Decimal(0),
        max_digits=16,
        decimal_places=6,
        label="Low-balance threshold",
        help_text="We warn you (email to owners and admins, banner, webhook) when the balance falls below it. 0 turns alerts off.",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    alert_webhook_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        label="Alert webhook URL",
        validators=[alert_webhook_url_validate],
        help_text="We POST a signed JSON body here when the balance runs low.",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/hooks/tollgate"}),
    )


class OrganizationRenameForm(forms.Form):
    organization = forms.CharField(max_length=120, label="Organization name")


class BillingDetailsForm(forms.Form):
    """Who receipts and statements are made out to; accounts.services.organization_billing_update checks the text."""

    billing_name = forms.CharField(
        max_length=200,
        required=False,
        label="Billing name",
        help_text="The legal name on receipts; empty prints the organization's name.",
    )
    billing_address = forms.CharField(
        max_length=1000,
        required=False,
        strip=False,
        label="Billing address",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="As printed on documents, one line per line.",
    )
    tax_id = forms.CharField(max_length=64, required=False, label="Tax id", help_text="VAT number or other tax id, if any.")


def service_errors_add(form: forms.Form, error: DomainError) -> None:
    """Show each message of a service's refusal next to the field its details name, else above the form."""
    placed = False
    for name, messages in error.details.items():
        if name in form.fields:
            for message in messages if isinstance(messages, list) else [messages]:
                form.add_error(name, str(message))
            placed = True
    if not placed:
        form.add_error(None, error.message)


def time_zone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(time_zone_names())]


class TimeZoneForm(forms.Form):
    time_zone = forms.ChoiceField(label="Time zone", help_text="Dates and times on every page are shown in this zone.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["time_zone"]).choices = time_zone_choices()


# --- Budgets ----------------------------------------------------------------------------------------

BUDGET_ORGANIZATION_SCOPE = "organization"


class BudgetEditForm(forms.Form):
    """A budget's amount and mode (payments.budgets says what they accept)."""

    amount = forms.DecimalField(
        min_value=Decimal("0.000000000001"),
        max_digits=22,
        decimal_places=12,
        label="Amount",
        help_text="The most the scope may spend in one period.",
    )
    mode = forms.ChoiceField(
        choices=[("hard", "Hard: refuse usage past it"), ("soft", "Soft: alert only")], initial="hard", widget=forms.RadioSelect
    )


class BudgetCreateForm(BudgetEditForm):
    scope = forms.ChoiceField(label="Applies to", help_text="The whole organization, or one live API key.")
    period = forms.ChoiceField(
        choices=[("day", "Day"), ("week", "Week (from Monday)"), ("month", "Month")],
        initial="month",
        help_text="UTC calendar periods: the spend starts again from zero at the next one.",
    )
    field_order = ["scope", "period", "amount", "mode"]

    def __init__(self, *args, api_keys: list[ApiKey], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(BUDGET_ORGANIZATION_SCOPE, "The whole organization")]
        choices += [(str(key.pk), f"API key {key.name} ({key.prefix}…)") for key in api_keys]
        cast(forms.ChoiceField, self.fields["scope"]).choices = choices

    def api_key_id(self) -> int | None:
        scope = self.cleaned_data["scope"]
        return None if scope == BUDGET_ORGANIZATION_SCOPE else int(scope)
