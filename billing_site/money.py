"""Exact money: Decimal in Python, numeric(28, 12) in PostgreSQL, rounded once, half-even."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal, TypeAlias, overload

from django.db import models
from django.db.models.expressions import Combinable

MONEY_DIGITS = 28
MONEY_PLACES = 12
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
# Wide enough that no product of a quantity and a price loses a digit before the one rounding.
EXACT = Context(prec=60)
ZERO = Decimal(0)
# The largest amount one grant, budget or top-up may name: far above any real one, far below overflow.
AMOUNT_MAX = Decimal(10) ** 9


def money_amount_error(amount: object, *, positive: bool = True) -> str | None:
    """Why `amount` is not a money amount a person may set (a finite Decimal within MONEY_PLACES
    decimals, positive, at most AMOUNT_MAX), or None when it is."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        return "A decimal amount, as a string."
    if amount != amount.quantize(MONEY_QUANTUM, context=EXACT):
        return f"At most {MONEY_PLACES} decimal places."
    if positive and amount <= ZERO:
        return "A positive amount."
    if abs(amount) > AMOUNT_MAX:
        return f"At most {AMOUNT_MAX:,}."
    return None


def money_round(amount: Decimal) -> Decimal:
    """The single rounding a cost ever gets: half-even to the stored scale."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN, context=EXACT)


def money_round_fraction(amount: Fraction) -> Decimal:
    """`money_round` of an exact fraction (a proration: seconds left / seconds in the month), with no
    rounded intermediate: a quotient that does not terminate is never cut before its one rounding."""
    scaled = amount * 10**MONEY_PLACES
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and whole % 2):
        whole += 1
    return Decimal(whole).scaleb(-MONEY_PLACES, context=EXACT).quantize(MONEY_QUANTUM, context=EXACT)


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


# --- Display: what people read. Rounding here is for the eye only; stored and exported amounts keep every digit.

# Minor units per currency (ISO 4217 exponents); the default is 2.
CURRENCY_EXPONENTS = {
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "CLP": 0,
    "ISK": 0,
    "HUF": 2,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
}
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$"}
PRECISE_MAX_PLACES = 6


def currency_exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS.get(currency.upper(), 2)


def money_display(amount: Decimal, currency: str, *, precise: bool = False) -> str:
    """`$1,234.50`, `−$2.00`, `1,200 JPY`-style text for people. By default rounded half-even to the
    currency's usual decimals. `precise` (per-event costs, unit prices) keeps up to 6 decimals: the
    fewest from the currency's that show the amount exactly, else rounded half-even to 6; an amount
    too small for that reads `<$0.000001`."""
    minimum = currency_exponent(currency) if currency else 2
    maximum = max(minimum, PRECISE_MAX_PLACES) if precise else minimum
    magnitude = abs(amount)
    places = minimum
    shown = magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=EXACT)
    while shown != magnitude and places < maximum:
        places += 1
        shown = magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=EXACT)
    symbol = CURRENCY_SYMBOLS.get(currency.upper(), "") if currency else ""
    sign = "−" if amount < 0 and shown != 0 else ""
    if precise and magnitude and not shown:
        text = f"<{symbol}{Decimal(1).scaleb(-maximum):f}"
        return f"{sign}{text}" if symbol else f"{sign}{text} {currency}"
    number = format(shown, f",.{places}f")
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}".rstrip()


def decimal_or_none(amount: Any) -> Decimal | None:
    """An amount a page was handed, as a Decimal; None for no amount or anything unreadable."""
    if amount is None or amount == "":
        return None
    try:
        return Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        return None


def money_format(amount: Decimal | int | str | None, currency: str = "USD", *, precise: bool = False) -> str:
    """`money_display` for pages: `—` for no amount, anything unreadable as it is."""
    value = decimal_or_none(amount)
    if value is None:
        return "—" if amount is None or amount == "" else str(amount)
    return money_display(value, currency, precise=precise)


def plain_amount(amount: Decimal) -> str:
    """An amount for a form field: plain digits, at least 2 decimals, no exponent (150 → 150.00)."""
    magnitude = abs(amount)
    places = 2
    while places < 12 and magnitude != magnitude.quantize(Decimal(1).scaleb(-places)):
        places += 1
    return format(amount.quantize(Decimal(1).scaleb(-places)), "f")
