"""Back office for services, prices, usage and holds. Prices are history: new rows only."""

from typing import Any

from django.contrib import admin
from django.utils import timezone

from billing_site.admin import AMOUNT_INPUTS, LabelledForm, LargeTableAdmin, OrganizationFilter, ReadOnlyAdmin, money_cell
from billing_site.csv_stream import csv_stream_response
from billing_site.errors import InvalidRequest
from metering.exports import EXPORT_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import Hold, Price, Service, UsageRecord, UsageRollup
from metering.pricing import ALL_PRICE_FIELDS
from metering.services import price_fields_check


class PriceForm(LabelledForm):
    """A new price row must give the fields its service's method uses, and no others: the staff API's rule
    (metering.services.price_fields_check), so a row can never leave a service unpriced."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        service = cleaned.get("service")  # on a service's page, the inline's parent
        if isinstance(service, Service) and service.calc_method:
            try:
                price_fields_check(calc_method=service.calc_method, given={name: cleaned.get(name) for name in ALL_PRICE_FIELDS})
            except InvalidRequest as refused:
                for name, messages in refused.details.items():
                    self.add_error(name, messages)
        return cleaned


class PriceInline(admin.TabularInline):
    """The whole price history of a service. Existing rows are read-only (the database refuses
    UPDATE too); a rate change is a new row with its effective date."""

    model = Price
    form = PriceForm
    formfield_overrides = AMOUNT_INPUTS
    extra = 1
    fields = [
        "organization",
        "effective_from",
        "input_price",
        "output_price",
        "cached_input_price",
        "unit_price",
        "created_by",
        "created_at",
    ]
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
    list_display = [
        "service",
        "organization",
        "effective_from",
        "input_price",
        "output_price",
        "cached_input_price",
        "unit_price",
        "created_by",
    ]
    list_filter = ["service"]
    search_fields = ["service__slug", "organization__slug"]
    date_hierarchy = "effective_from"
    raw_id_fields = ["organization"]  # a labelled id box (with a lookup), not an unlabelled widget
    readonly_fields = ["created_by", "created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        # A scheduled price may be withdrawn before it takes effect; history may not.
        return obj is not None and obj.effective_from > timezone.now() and super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)


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
