"""Template filters of the back office: amounts with their currency, the exact figure on hover."""

from decimal import Decimal

from django import template
from django.utils.safestring import SafeString

from billing_site.admin import money_cell

register = template.Library()


@register.filter
def money(amount: Decimal | None, currency: str) -> SafeString | str:
    return money_cell(amount, currency)
