"""Back office for services, prices, usage and holds. Prices are history: new rows only."""

from django.contrib import admin
from django.utils import timezone

from billing_site.admin import LargeTableAdmin, ReadOnlyAdmin
from billing_site.csv_stream import csv_stream_response
from metering.exports import EXPORT_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import Hold, Price, Service, UsageRecord, UsageRollup


class PriceInline(admin.TabularInline):
    """The whole price history of a service. Existing rows are read-only (the database refuses
    UPDATE too); a rate change is a new row with its effective date."""

    model = Price
    extra = 1
    fields = ["organization", "effective_from", "input_price", "output_price", "unit_price", "created_by", "created_at"]
    readonly_fields = ["created_by", "created_at"]
    autocomplete_fields = ["organization"]
    ordering = ["-effective_from", "-id"]
    can_delete = False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
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
    list_display = ["service", "organization", "effective_from", "input_price", "output_price", "unit_price", "created_by"]
    list_filter = ["service"]
    search_fields = ["service__slug", "organization__slug"]
    date_hierarchy = "effective_from"
    autocomplete_fields = ["organization"]
    readonly_fields = ["created_by", "created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        # A scheduled price may be withdrawn before it takes effect; history may not.
        return obj is not None and obj.effective_from > timezone.now() and super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(UsageRecord)
class UsageRecordAdmin(LargeTableAdmin):
    list_display = ["id", "created_at", "organization", "service", "quantity", "cost", "test", "api_key_id"]
    list_filter = ["test", "service"]
    search_fields = ["idempotency_key", "organization__slug"]
    date_hierarchy = "created_at"  # probed through the usage_time index (LargeTableAdmin)
    list_select_related = ["organization", "service"]
    actions = ["export_csv"]

    @admin.action(description="Export selected to CSV")
    def export_csv(self, request, queryset):
        records = queryset.select_related("organization", "service").order_by("id").iterator(chunk_size=EXPORT_CHUNK)
        rows = usage_csv_rows(records, with_organization=True)
        return csv_stream_response(usage_csv_header(with_organization=True), rows, filename="usage.csv")


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = ["day", "organization", "service", "test", "events", "quantity", "cost"]
    list_filter = ["test", "service"]
    date_hierarchy = "day"
    list_select_related = ["organization", "service"]


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "service", "amount", "status", "test", "expires_at", "created_at"]
    list_filter = ["status", "test"]
    search_fields = ["idempotency_key", "organization__slug"]
    date_hierarchy = "created_at"
    list_select_related = ["organization", "service"]
