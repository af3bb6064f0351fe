"""Exact money: Decimal in Python, numeric(28, 12) in PostgreSQL, rounded once, half-even."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
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
