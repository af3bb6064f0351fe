"""Exact money: Decimal in Python, numeric(28, 12) in PostgreSQL, rounded once, half-even."""

from decimal import ROUND_HALF_EVEN, Context, Decimal

from django.db import models

MONEY_DIGITS = 28
MONEY_PLACES = 12
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
# Wide enough that no product of a quantity and a price loses a digit before the one rounding.
EXACT = Context(prec=60)
ZERO = Decimal(0)


def money_round(amount: Decimal) -> Decimal:
    """The single rounding a cost ever gets: half-even to the stored scale."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN, context=EXACT)


def MoneyField(**kwargs) -> models.DecimalField:  # noqa: N802 - reads like a field class at call sites
    return models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, **kwargs)


def money_str(amount: Decimal | None) -> str | None:
    """An amount as the API's JSON string: plain notation, never an exponent."""
    return None if amount is None else format(amount, "f")
