"""Template filters for money, statuses and dates. Money is formatted from Decimals, never floats."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.html import format_html

from billing_site.money import money_format, money_str, plain_amount  # noqa: F401 - plain_amount: used by the dashboard's views

register = template.Library()


@register.filter
def money(amount, currency: str = "USD") -> str:
    return money_format(amount, currency)


@register.filter
def money_html(amount, currency: str = "USD") -> str:
    """Like `money`, with the digits past the cents set in a lighter style: `$12.34<span>56</span>`."""
    text = money_format(amount, currency)
    point = text.rfind(".")
    if point < 0 or text.startswith(("<", "−<")) or len(text) - point - 1 <= 2:
        return text
    cut = point + 3
    digits_end = cut
    while digits_end < len(text) and text[digits_end].isdigit():
        digits_end += 1
    return format_html('{}<span class="money-extra">{}</span>{}', text[:cut], text[cut:digits_end], text[digits_end:])


@register.filter
def money_whole(amount, currency: str = "USD") -> str:
    """A round amount without cents, for buttons: `$25`."""
    text = money_format(amount, currency)
    return text.replace(".00", "", 1)


@register.filter
def money_exact(amount) -> str:
    """Every stored digit, trailing zeros dropped: for titles and exports."""
    if amount is None:
        return ""
    return money_str(Decimal(amount).normalize()) or ""


STATUS_TONES = {
    "succeeded": "success",
    "active": "success",
    "live": "success",
    "pending": "warning",
    "test": "info",
    "partially_refunded": "info",
    "refunded": "info",
    "failed": "danger",
    "revoked": "neutral",
    "expired": "neutral",
    "canceled": "neutral",
    "owner": "accent",
    "admin": "info",
    "member": "neutral",
}


@register.filter
def tone(status: str) -> str:
    return STATUS_TONES.get(str(status), "neutral")


@register.filter
def label(status: str) -> str:
    return str(status).replace("_", " ").capitalize()


@register.filter
def intcomma_plain(value) -> str:
    """1234567 → 1,234,567 (no localization surprises)."""
    if value is None or value == "":
        return "—"
    try:
        return format(int(value), ",")
    except (TypeError, ValueError):
        return str(value)


SECTIONS = {
    "overview": "overview",
    "usage": "usage",
    "keys": "keys",
    "key_revoke": "keys",
    "billing": "billing",
    "payment": "billing",
    "pricing": "pricing",
    "team": "team",
    "member_remove": "team",
    "settings": "settings",
    "password_change": "settings",
}


@register.filter
def section(url_name: str | None) -> str:
    """The navigation entry a page belongs to."""
    return SECTIONS.get(url_name or "", "")
