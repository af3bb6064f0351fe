"""Exact money: Decimal in Python, numeric(28, 12) in PostgreSQL, rounded once, half-even."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias, overload

from django.db import models
from django.db.models.expressions import Combinable

MONEY_DIGITS = 28
MONEY_PLACES = 12
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
# Wide enough that no product of a quantity and a price loses a digit before the one rounding.
EXACT = Context(prec=60)
ZERO = Decimal(0)


def money_round(amount: Decimal) -> Decimal:
    """The single rounding a cost ever gets: half-even to the stored scale."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN, context=EXACT)


_MoneyIn: TypeAlias = str | float | Decimal | Combinable


# Typed by `null` as Django's own field classes are (the plugin only sees through direct field calls).
@overload
def MoneyField(*, null: Literal[False] = ..., **kwargs: Any) -> models.DecimalField[_MoneyIn, Decimal]: ...
@overload
def MoneyField(*, null: Literal[True], **kwargs: Any) -> models.DecimalField[_MoneyIn | None, Decimal | None]: ...


def MoneyField(**kwargs: Any) -> models.DecimalField[Any, Any]:  # noqa: N802 - reads like a field class at call sites
    return models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, **kwargs)


@overload
def money_str(amount: Decimal) -> str: ...
@overload
def money_str(amount: None) -> None: ...
@overload
def money_str(amount: Decimal | None) -> str | None: ...


def money_str(amount: Decimal | None) -> str | None:
    """An amount as the API's JSON string: plain notation, never an exponent."""
    return None if amount is None else format(amount, "f")


# --- Display (the dashboard and the back office) ------------------------------------------------

CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$"}
MIN_PLACES, MAX_PLACES = 2, 6


def money_format(amount: Decimal | int | str | None, currency: str = "USD", *, max_places: int = MAX_PLACES) -> str:
    """`$1,234.50`, `$0.000150`, `−$2.00`: the fewest decimals from 2 to `max_places` that show
    the amount exactly, else rounded half-even to `max_places`; `<$0.000001` for a tiny amount."""
    if amount is None or amount == "":
        return "—"
    try:
        amount = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        return str(amount)
    magnitude = abs(amount)
    for places in range(MIN_PLACES, max_places + 1):
        shown = magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
        if shown == magnitude:
            break
    symbol = CURRENCY_SYMBOLS.get(currency.upper(), "") if currency else ""
    sign = "−" if amount < 0 and shown != 0 else ""
    if magnitude and not shown:
        text = f"<{symbol}{Decimal(1).scaleb(-max_places):f}"
        return f"{sign}{text}" if symbol else f"{sign}{text} {currency}"
    number = format(shown, f",.{places}f")
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}".rstrip()


def plain_amount(amount: Decimal) -> str:
    """An amount for a form field: plain digits, at least 2 decimals, no exponent (150 → 150.00)."""
    magnitude = abs(amount)
    places = 2
    while places < 12 and magnitude != magnitude.quantize(Decimal(1).scaleb(-places)):
        places += 1
    return format(amount.quantize(Decimal(1).scaleb(-places)), "f")
