"""Template filters of the back office: amounts with their currency, the exact figure on hover."""

from decimal import Decimal

from django import template
from django.utils.safestring import SafeString

from billing_site.admin import money_cell
from billing_site.money import money_str

register = template.Library()


@register.filter
def money(amount: Decimal | None, currency: str) -> SafeString | str:
    return money_cell(amount, currency)


@register.filter
def money_precise(amount: Decimal | None, currency: str) -> SafeString | str:
    """Up to 6 decimals: per-event costs."""
    return money_cell(amount, currency, precise=True)


@register.filter
def exact(amount: Decimal | None) -> str:
    """Every stored digit that matters (no exponent, trailing zeros dropped): where a cent is not enough."""
    if amount is None:
        return "—"
    return money_str(amount.normalize()) if amount else "0"
