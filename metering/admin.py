"""Back office for services, prices, plans, subscriptions, usage and holds. Prices are history: new rows only."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from billing_site.admin import (
    AMOUNT_INPUTS,
    LabelledForm,
    LabelledInlineFormSet,
    LargeTableAdmin,
    OrganizationFilter,
    ReadOnlyAdmin,
    ReadOnlyInline,
    money_cell,
)
from billing_site.csv_stream import csv_stream_response
from billing_site.money import money_str
from metering.exports import EXPORT_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import (
    Hold,
    Plan,
    PlanAllowance,
    Price,
    PriceModel,
    Service,
    Subscription,
    SubscriptionCharge,
    UsageRecord,
    UsageRollup,
)
from metering.pricing import ALL_PRICE_FIELDS, PriceInvalid, price_validate, prices_listed

TIERS_HELP = (
    "Tiered and volume prices only: a JSON list of tiers, each up to its <code>up_to</code> quantity units (the "
    "last one's is <code>null</code>), with the method's rates as strings in the usual units (per 1M tokens, per 1K "
    "characters or words, per tile, per request) and an optional <code>flat_fee</code>. For example: "
    '<code>[{"up_to": 1000000, "unit_price": "0.02"}, {"up_to": null, "unit_price": "0.01", "flat_fee": "5"}]</code>'
)


# A price row's fields in the order the add forms show them (inline under a service, or on its own page).
PRICE_FORM_FIELDS: tuple[str, ...] = (
    "organization",
    "plan",
    "effective_from",
    "model",
    "input_price",
    "output_price",
    "cached_input_price",
    "unit_price",
    "tiers",
    "package_size",
    "created_by",
    "created_at",
)


class PriceForm(LabelledForm):
    """A new price row, checked by the pricing module's one rule (metering.pricing.price_validate): the
    fields its service's method and its model use, and no others, so a row can never leave a service
    unpriced. Each fault shows on its own field; the tiers are stored in their checked form."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "model" in self.fields:
            self.fields["model"].required = False  # empty: per unit, as before models existed
        if "tiers" in self.fields:
            self.fields["tiers"].help_text = mark_safe(TIERS_HELP)  # noqa: S308 - our own constant text
            self.fields["tiers"].widget.attrs.update(rows=4, cols=60, placeholder='[{"up_to": null, "unit_price": "0.01"}]')

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        service = cleaned.get("service")  # on a service's page, the inline's parent
        if cleaned.get("organization") and cleaned.get("plan"):
            self.add_error("plan", "A price is for one organization or for one plan, not both.")
        if not isinstance(service, Service) or not service.calc_method:
            return cleaned
        model = cleaned.get("model") or PriceModel.PER_UNIT
        cleaned["model"] = model
        try:
            prices, tiers, package_size = price_validate(
                method=service.calc_method,
                model=model,
                fields={name: cleaned.get(name) for name in ALL_PRICE_FIELDS},
                tiers=cleaned.get("tiers"),
                package_size=cleaned.get("package_size"),
            )
        except PriceInvalid as refused:
            for name, messages in refused.errors.items():
                field, _, tier = name.partition("[")
                where = f"Tier {int(tier.rstrip(']')) + 1}: " if tier else ""
                self.add_error(field if field in self.fields else None, [f"{where}{message}" for message in messages])
            return cleaned
        cleaned.update(prices, tiers=tiers, package_size=package_size)
        return cleaned


def tiers_summary(price: Price) -> str:
    """A price's model in a few words, for lists: its tiers' bounds, or its package."""
    if price.model in (PriceModel.TIERED, PriceModel.VOLUME) and price.tiers:
        bounds = " / ".join("∞" if tier.get("up_to") is None else format(tier["up_to"], ",") for tier in price.tiers)
        return f"{len(price.tiers)} tier{'s' if len(price.tiers) != 1 else ''} up to {bounds}"
    if price.model == PriceModel.PACKAGE and price.package_size:
        return f"{price.package_size:,} units per package"
    return "—"


class PriceInline(admin.TabularInline):
    """The whole price history of a service. Existing rows are read-only (the database refuses
    UPDATE too); a rate change is a new row with its effective date."""

    model = Price
    form = PriceForm
    formfield_overrides = AMOUNT_INPUTS
    extra = 1
    fields = PRICE_FORM_FIELDS
    readonly_fields = ["created_by", "created_at"]
    raw_id_fields = ["organization"]  # a labelled id box (with a lookup), not an unlabelled widget
    ordering = ["-effective_from", "-id"]
    can_delete = False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    form = LabelledForm
    list_display = ["slug", "name", "calc_method", "active", "created_at"]
    list_filter = ["calc_method", "active"]
    search_fields = ["slug", "name"]
    inlines = [PriceInline]

    def get_readonly_fields(self, request, obj=None):
        # The method decides what every written record's quantities mean: fixed once created.
        return ["calc_method"] if obj else []

    def save_formset(self, request, form, formset, change):
        for price in formset.save(commit=False):
            price.created_by = request.user
            price.full_clean()
            price.save()
        formset.save_m2m()


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    form = PriceForm
    formfield_overrides = AMOUNT_INPUTS
    fields = ("service", *PRICE_FORM_FIELDS)
    list_display = [
        "service",
        "organization",
        "plan",
        "effective_from",
        "model",
        "input_price",
        "output_price",
        "cached_input_price",
        "unit_price",
        "tiers_shown",
        "created_by",
    ]
    list_filter = ["service", "model", "plan"]
    list_select_related = ["service", "organization", "plan", "created_by"]
    search_fields = ["service__slug", "organization__slug", "plan__slug"]
    date_hierarchy = "effective_from"
    raw_id_fields = ["organization"]  # a labelled id box (with a lookup), not an unlabelled widget
    readonly_fields = ["created_by", "created_at"]

    @admin.display(description="tiers or package")
    def tiers_shown(self, price: Price) -> str:
        return tiers_summary(price)

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        # A scheduled price may be withdrawn before it takes effect; history may not.
        return obj is not None and obj.effective_from > timezone.now() and super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)


# --- Plans and subscriptions -------------------------------------------------------------------------------


class PlanAllowanceInline(admin.TabularInline):
    """What the plan includes each month, per service (quantity units of the service's method)."""

    model = PlanAllowance
    form = LabelledForm
    formset = LabelledInlineFormSet
    extra = 1
    fields = ["service", "quantity"]


class SubscriptionInline(ReadOnlyInline):
    """The plan's subscriptions, newest first; they change only through the subscription services."""

    model = Subscription
    fk_name = "plan"
    fields = ["organization", "status", "period", "next_plan", "cancel_at_period_end", "created_at"]
    ordering = ["-created_at", "-id"]
    show_change_link = True


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    """A plan: fee, what it includes, its prices (new rows only, from the price page), its subscribers.
    Support sees it all and changes nothing (view rights only)."""

    form = LabelledForm
    formfield_overrides = AMOUNT_INPUTS
    list_display = ["slug", "name", "monthly_fee_shown", "public", "included_count", "created_at"]
    list_filter = ["public"]
    search_fields = ["slug", "name"]
    fields = ["slug", "name", "description", "monthly_fee", "public", "plan_prices", "created_at"]
    readonly_fields = ["plan_prices", "created_at"]
    inlines = [PlanAllowanceInline, SubscriptionInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(included=Count("allowances"))

    @admin.display(description="monthly fee", ordering="monthly_fee")
    def monthly_fee_shown(self, plan: Plan) -> str:
        return money_cell(plan.monthly_fee, settings.CURRENCY)

    @admin.display(description="services included", ordering="included")
    def included_count(self, plan: Plan) -> int:
        return getattr(plan, "included", 0)

    @admin.display(description="prices")
    def plan_prices(self, plan: Plan) -> str:
        """The plan's price rows, newest first, read-only, with a link to add one."""
        if plan.pk is None:
            return "Save the plan first, then add its prices."
        rows = Price.objects.filter(plan=plan).select_related("service").order_by("service__slug", "-effective_from", "-id")
        lines = format_html_join(
            "",
            '<li><a href="{}">{}</a> from {}: {} {}</li>',
            (
                (
                    reverse("admin:metering_price_change", args=[row.pk]),
                    row.service.slug,
                    date_format(timezone.localtime(row.effective_from), "SHORT_DATETIME_FORMAT"),
                    row.get_model_display(),
                    _rates_shown(row),
                )
                for row in rows
            ),
        )
        add = reverse("admin:metering_price_add") + f"?plan={plan.pk}"
        return format_html(
            '<ul class="plan-prices">{}</ul><a class="addlink" href="{}">Add a price for this plan</a>', lines or "", add
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # its prices and subscriptions keep it (and history names it)


def _rates_shown(price: Price) -> str:
    if price.model == PriceModel.PER_UNIT:
        return ", ".join(
            f"{name.replace('_', ' ')} {money_str(value.normalize())}"
            for name, value in prices_listed(price.service.calc_method, price).items()
        )
    if price.model == PriceModel.PACKAGE:
        return f"{money_str(price.unit_price.normalize()) if price.unit_price is not None else '—'} per {tiers_summary(price)}"
    return tiers_summary(price)


class SubscriptionChargeInline(ReadOnlyInline):
    model = SubscriptionCharge
    fields = ["period", "kind", "plan", "amount_shown", "transfer", "created_at"]
    ordering = ["-period", "-id"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("plan", "organization__wallet")

    @admin.display(description="amount")
    def amount_shown(self, charge: SubscriptionCharge) -> str:
        return money_cell(charge.amount, charge.organization.wallet.currency)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    """Subscriptions and their charges, to look at: they change only through the subscription services."""

    list_display = ["id", "organization", "plan", "status", "period", "next_plan", "cancel_at_period_end", "created_at"]
    list_filter = [OrganizationFilter, "status", "plan"]
    list_select_related = ["organization", "plan", "next_plan"]
    search_fields = ["organization__slug", "plan__slug"]
    fields = ["organization", "plan", "status", "period", "next_plan", "cancel_at_period_end", "created_at", "canceled_at"]
    inlines = [SubscriptionChargeInline]


class OrganizationMoney:
    """Amounts of an organization's rows, in its wallet's currency (list_select_related brings the wallet)."""

    @admin.display(description="cost")
    def cost_shown(self, row: UsageRecord | UsageRollup) -> str:
        return money_cell(row.cost, row.organization.wallet.currency, precise=True)

    @admin.display(description="API key")
    def api_key_name(self, row: UsageRecord | Hold) -> str:
        return row.api_key.name if row.api_key is not None else "—"


@admin.register(UsageRecord)
class UsageRecordAdmin(OrganizationMoney, LargeTableAdmin):
    list_display = ["id", "created_at", "organization", "service", "api_key_name", "quantity", "cost_shown", "test"]
    list_filter = [OrganizationFilter, "test", "service"]
    search_fields = ["idempotency_key", "organization__slug"]
    date_hierarchy = "created_at"  # probed through the usage_time index (LargeTableAdmin)
    list_select_related = ["organization__wallet", "service", "api_key"]
    actions = ["export_csv"]

    @admin.action(description="Export selected to CSV")
    def export_csv(self, request, queryset):
        records = queryset.select_related("organization", "service").order_by("id").iterator(chunk_size=EXPORT_CHUNK)
        rows = usage_csv_rows(records, with_organization=True)
        return csv_stream_response(usage_csv_header(with_organization=True), rows, filename="usage.csv")


@admin.register(UsageRollup)
class UsageRollupAdmin(OrganizationMoney, ReadOnlyAdmin):
    list_display = ["day", "organization", "service", "test", "events", "quantity", "cost_shown"]
    list_filter = [OrganizationFilter, "test", "service"]
    date_hierarchy = "day"
    show_full_result_count = False
    list_select_related = ["organization__wallet", "service"]


@admin.register(Hold)
class HoldAdmin(OrganizationMoney, ReadOnlyAdmin):
    list_display = ["id", "organization", "service", "api_key_name", "amount_shown", "status", "test", "expires_at", "created_at"]
    list_filter = [OrganizationFilter, "status", "test"]
    search_fields = ["idempotency_key", "organization__slug"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_select_related = ["organization__wallet", "service", "api_key"]

    @admin.display(description="amount")
    def amount_shown(self, hold: Hold) -> str:
        return money_cell(hold.amount, hold.organization.wallet.currency)
