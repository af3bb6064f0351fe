"""Template filters for money, statuses and dates. Money is formatted from Decimals, never floats."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.html import format_html

from billing_site.money import decimal_or_none as _decimal
from billing_site.money import money_format, money_str, plain_amount  # noqa: F401 - plain_amount: used by the dashboard's views
from gateway.models import Outcome

register = template.Library()


@register.filter
def money(amount, currency: str = "USD") -> str:
    """Rounded half-even to the currency's decimals (balances, totals, charts)."""
    return money_format(amount, currency)


@register.filter
def money_precise(amount, currency: str = "USD") -> str:
    """Up to 6 decimals (per-event costs, unit prices)."""
    return money_format(amount, currency, precise=True)


def _money_span(amount, currency: str, *, precise: bool) -> str:
    text = money_format(amount, currency, precise=precise)
    value = _decimal(amount)
    if value is None:
        return text
    exact = f"{money_exact(value)} {currency}".strip()
    return format_html('<span class="money" title="{}" data-exact="{}">{}</span>', exact, money_exact(value), text)


@register.filter
def money_html(amount, currency: str = "USD") -> str:
    """Rounded like `money`, in a span whose title (the hover text) is the exact stored amount."""
    return _money_span(amount, currency, precise=False)


@register.filter
def money_precise_html(amount, currency: str = "USD") -> str:
    """Like `money_precise`, with the exact stored amount on hover."""
    return _money_span(amount, currency, precise=True)


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
    "past_due": "danger",
    "test": "info",
    "partially_refunded": "info",
    "refunded": "info",
    "failed": "danger",
    "revoked": "neutral",
    "expired": "neutral",
    "canceled": "neutral",
    "promotional": "accent",
    "paid": "info",
    "hard": "danger",
    "soft": "warning",
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
def outcome_label(outcome: str) -> str:
    """A gateway call's outcome as a person reads it."""
    try:
        return str(Outcome(outcome).label)
    except ValueError:
        return outcome


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
    "plan": "plan",
    "credits": "credits",
    "statements": "statements",
    "budgets": "budgets",
    "budget_edit": "budgets",
    "budget_delete": "budgets",
    "team": "team",
    "member_remove": "team",
    "settings": "settings",
    "password_change": "settings",
}


@register.filter
def section(url_name: str | None) -> str:
    """The navigation entry a page belongs to."""
    return SECTIONS.get(url_name or "", "")


@register.filter
def reference_id(reference: str, prefix: str) -> int | None:
    """The id in a transfer's reference `<prefix>:<id>` (`payment:45` → 45), else None."""
    head, _, tail = str(reference).partition(":")
    return int(tail) if head == prefix and tail.isdigit() else None


@register.filter
def unit_of(calc_method: str) -> str:
    """What a quantity of a service with this method counts."""
    from dashboard.reports import UNITS

    return UNITS.get(calc_method, "")
