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


# `formfield_overrides` for every admin form with amounts in it.
AMOUNT_INPUTS: dict[type[models.Field], dict[str, Any]] = {models.DecimalField: {"widget": AmountInput}}


def money_cell(amount: Decimal | None, currency: str) -> SafeString | str:
    """An amount as staff read it: the currency's usual decimals (sub-cent digits when they matter),
    with the exact stored figure on hover."""
    if amount is None:
        return "—"
    exact = money_str(amount.normalize()) if amount else "0"
    return format_html('<span class="money" title="{} {}">{}</span>', exact, currency, money_format(amount, currency))
