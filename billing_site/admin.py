"""Back-office building blocks every app's admin shares (nothing is registered here)."""

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing_site.money import money_format, money_str, plain_amount


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is never edited: no add, change or delete from the admin (the database refuses too)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent and never edited there: every field read-only, nothing added,
    changed or deleted."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AmountInput(forms.NumberInput):
    """A money input that shows plain digits: a stored zero is Decimal('0E-12'), which Django's
    widget would print as it is."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"step": "any", "class": "amount-input", **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, Decimal) and value.is_finite():
            return plain_amount(value)
        return super().format_value(value)


class LabelledForm(forms.ModelForm):
    """Django's split date/time input has one <label> for two boxes: name each box after its field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field.widget, forms.SplitDateTimeWidget):
                date, time = field.widget.widgets
                date.attrs["aria-label"] = f"{field.label}: date"
                time.attrs["aria-label"] = f"{field.label}: time"


# `formfield_overrides` for every admin form with amounts in it.
AMOUNT_INPUTS: dict[type[models.Field], dict[str, Any]] = {models.DecimalField: {"widget": AmountInput}}


def money_cell(amount: Decimal | None, currency: str, *, precise: bool = False) -> SafeString | str:
    """An amount as staff read it: the currency's usual decimals (`precise`: up to 6, for per-event
    costs), with the exact stored figure on hover."""
    if amount is None:
        return "—"
    exact = money_str(amount.normalize()) if amount else "0"
    return format_html(
        '<span class="money" title="{} {}">{}</span>', exact, currency, money_format(amount, currency, precise=precise)
    )


class OrganizationFilter(admin.ListFilter):
    """Narrow a big table to one organization by its slug: a labelled text box rather than a list of
    every organization (there may be many), resolved through the slug's unique index and then the
    table's own (organization, …) index."""

    title = "organization"
    parameter_name = "organization"
    template = "admin/organization_filter.html"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        given = params.pop(self.parameter_name, "")
        self.slug = str((given[-1] if isinstance(given, list) else given) or "").strip()

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.parameter_name]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        return queryset.filter(organization__slug=self.slug) if self.slug else queryset

    def choices(self, changelist: Any) -> Any:
        kept = {name: value for name, value in changelist.params.items() if name not in (self.parameter_name, "p")}
        yield {
            "slug": self.slug,
            "hidden": [(name, item) for name, value in kept.items() for item in (value if isinstance(value, list) else [value])],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }
