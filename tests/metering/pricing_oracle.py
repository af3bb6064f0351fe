"""An exact oracle for positional prices (docs/contract.md "Positional prices"), in fractions, written
from the stated rules and sharing nothing with metering/pricing.py.

A price is given as the staff would send it: a model, and either the per-unit fields, tiers
(`[{"up_to", <price fields>, "flat_fee"?}]`), or a package's `unit_price` and `package_size`. An event is
its quantity fields (`input_tokens`, `output_tokens`, `cached_input_tokens`, or `quantity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

SCALE = 10**12
PER = {"TOKENS": 1_000_000, "CHAR_COUNT": 1_000, "WORD_COUNT": 1_000, "IMAGE_RESOLUTION": 1, "REQUEST": 1}


def round_half_even(value: Fraction) -> Decimal:
    """`value` rounded once, half to even, to 12 decimal places."""
    scaled = value * SCALE
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return Decimal(whole).scaleb(-12)


@dataclass(frozen=True)
class OraclePrice:
    model: str
    rates: dict[str, Fraction] = field(default_factory=dict)  # per_unit
    tiers: tuple[tuple[int | None, dict[str, Fraction], Fraction], ...] = ()  # (up_to, rates, flat fee)
    package_size: int | None = None
    package_price: Fraction | None = None

    @classmethod
    def of(cls, model: str, *, tiers: list[dict[str, Any]] | None = None, package_size: int | None = None, **rates: Any):
        if model in ("tiered", "volume"):
            assert tiers is not None
            parsed = tuple(
                (
                    tier["up_to"],
                    {k: Fraction(str(v)) for k, v in tier.items() if k not in ("up_to", "flat_fee")},
                    Fraction(str(tier.get("flat_fee", "0"))),
                )
                for tier in tiers
            )
            return cls(model=model, tiers=parsed)
        if model == "package":
            return cls(model=model, package_size=package_size, package_price=Fraction(str(rates["unit_price"])))
        return cls(model=model, rates={k: Fraction(str(v)) for k, v in rates.items() if v is not None})


def units_of(method: str, event: dict[str, Any]) -> list[tuple[int, str]]:
    """The event's units in position order, as (count, rate name): uncached input, cached input,
    output for TOKENS; the quantity otherwise."""
    if method == "TOKENS":
        cached = event.get("cached_input_tokens") or 0
        return [
            (event["input_tokens"] - cached, "input_price"),
            (cached, "cached_input_price"),
            (event["output_tokens"], "output_price"),
        ]
    return [(event["quantity"], "unit_price")]


def total_units(method: str, event: dict[str, Any]) -> int:
    return sum(count for count, _ in units_of(method, event))


def _rate(rates: dict[str, Fraction], name: str) -> Fraction:
    if name == "cached_input_price" and name not in rates:
        return rates["input_price"]
    return rates[name]


def _tier_bounds(price: OraclePrice) -> list[tuple[int, int | None, dict[str, Fraction], Fraction]]:
    bounds, low = [], 0
    for up_to, rates, fee in price.tiers:
        bounds.append((low, up_to, rates, fee))
        if up_to is not None:
            low = up_to
    return bounds


def exact(method: str, event: dict[str, Any], price: OraclePrice, *, start: int, free_until: int = 0) -> Fraction:
    """The event's exact cost (before rounding) with its first unit at position `start`."""
    n = total_units(method, event)
    per = PER[method]
    if price.model == "package":
        size = price.package_size
        assert size

        def ceil(a: int) -> int:
            return -((-a) // size)

        opened = ceil(max(0, start + n - free_until)) - ceil(max(0, start - free_until))
        return opened * price.package_price
    cost = Fraction(0)
    bounds = _tier_bounds(price)
    if price.model == "volume":
        total = start + n
        reached = next(rates for low, up_to, rates, _ in bounds if up_to is None or up_to >= total)
    position = start
    for count, name in units_of(method, event):
        begin, end = max(position, free_until), position + count  # the chargeable positions [begin, end)
        position += count
        if end <= begin:
            continue
        if price.model == "per_unit":
            cost += (end - begin) * _rate(price.rates, name) / per
        elif price.model == "volume":
            cost += (end - begin) * _rate(reached, name) / per
        else:  # tiered: each position at the rate of its own tier
            for low, up_to, rates, _ in bounds:
                top = end if up_to is None else min(end, up_to)
                inside = top - max(begin, low)
                if inside > 0:
                    cost += inside * _rate(rates, name) / per
    for low, _, _, fee in bounds:
        if start <= low < start + n:
            cost += fee
    return cost


def cost(method: str, event: dict[str, Any], price: OraclePrice, *, start: int, free_until: int = 0) -> Decimal:
    """The event's cost, rounded once half-even to 12 places."""
    return round_half_even(exact(method, event, price, start=start, free_until=free_until))


def sequence(method: str, events: list[dict[str, Any]], price: OraclePrice, *, start: int = 0, free_until: int = 0):
    """Each event's (position or None for a zero-quantity one, cost), one after another from `start`."""
    out = []
    position = start
    for event in events:
        n = total_units(method, event)
        out.append((position if n else None, cost(method, event, price, start=position, free_until=free_until)))
        position += n
    return out


def price_of_record(method: str, record: Any) -> OraclePrice:
    """The price a usage record says it was charged at: its `pricing` (tiers or package), or, for a
    per-unit price with an allowance, its own rate columns."""
    pricing = record.pricing
    if pricing["model"] in ("tiered", "volume"):
        return OraclePrice.of(pricing["model"], tiers=pricing["tiers"])
    if pricing["model"] == "package":
        return OraclePrice.of("package", package_size=pricing["package_size"], unit_price=pricing["unit_price"])
    rates = {
        name: getattr(record, name)
        for name in ("input_price", "output_price", "cached_input_price", "unit_price")
        if getattr(record, name) is not None
    }
    return OraclePrice.of("per_unit", **rates)


def event_of_record(method: str, record: Any) -> dict[str, Any]:
    if method == "TOKENS":
        return {
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cached_input_tokens": record.cached_input_tokens,
        }
    return {"quantity": record.quantity}


def rederive(method: str, record: Any) -> Decimal:
    """A positional record's cost from the record alone: its position, its pricing, its quantities."""
    assert record.pricing is not None, record
    price = price_of_record(method, record)
    return cost(
        method, event_of_record(method, record), price, start=record.position or 0, free_until=record.pricing["free_until"]
    )
