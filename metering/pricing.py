"""Pricing: quantities × the price in force → an exact cost, rounded once (docs/pricing.md).

The one formula for every price model — `per_unit`, `tiered` (graduated), `volume` and `package` —
and for a plan's included quantity (units at positions below `free_until` are free). Every path that
charges (the hot path, holds, batches, test keys, the gateway) prices through `cost_at`, and the
periodic volume true-up through `volume_target`.

An event's units take consecutive positions in the organization's usage of the service this period,
starting at `start`: for TOKENS the uncached input tokens, then the cached input tokens, then the
output tokens. `cost_at` also answers the range of starts over which the cost is the same, so the hot
path can charge without locking the position first: its statement advances the position only if it
is still inside that range (metering/services/positions.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from billing_site.money import EXACT, MONEY_DIGITS, MONEY_PLACES, ZERO, money_round
from metering.calculators import MAX_COUNT, Quantities
from metering.models import CalcMethod, PriceModel

PER_MILLION = 1_000_000
MAX_TIERS = 20

# (quantity field, price field, units the price is quoted per), in position order, per docs/contract.md §3.
# A component whose quantity the event did not report (cached input tokens) adds nothing.
PRICE_COMPONENTS: dict[str, tuple[tuple[str, str, int], ...]] = {
    CalcMethod.TOKENS: (
        ("uncached_input_tokens", "input_price", PER_MILLION),
        ("cached_input_tokens", "cached_input_price", PER_MILLION),
        ("output_tokens", "output_price", PER_MILLION),
    ),
    CalcMethod.CHAR_COUNT: (("quantity", "unit_price", 1_000),),
    CalcMethod.WORD_COUNT: (("quantity", "unit_price", 1_000),),
    CalcMethod.IMAGE_RESOLUTION: (("quantity", "unit_price", 1),),
    CalcMethod.REQUEST: (("quantity", "unit_price", 1),),
}

# The price fields a price (or a tier) of the method must give, and those it may give.
REQUIRED_PRICE_FIELDS: dict[str, tuple[str, ...]] = {
    CalcMethod.TOKENS: ("input_price", "output_price"),
    CalcMethod.CHAR_COUNT: ("unit_price",),
    CalcMethod.WORD_COUNT: ("unit_price",),
    CalcMethod.IMAGE_RESOLUTION: ("unit_price",),
    CalcMethod.REQUEST: ("unit_price",),
}
OPTIONAL_PRICE_FIELDS: dict[str, tuple[str, ...]] = {CalcMethod.TOKENS: ("cached_input_price",)}
ALL_PRICE_FIELDS = ("input_price", "output_price", "cached_input_price", "unit_price")
POSITIONAL_MODELS = (PriceModel.TIERED, PriceModel.VOLUME, PriceModel.PACKAGE)


def price_fields(method: str) -> tuple[str, ...]:
    """The price fields every per-unit price (and every tier) of `method` gives."""
    return REQUIRED_PRICE_FIELDS[method]


def optional_price_fields(method: str) -> tuple[str, ...]:
    return OPTIONAL_PRICE_FIELDS.get(method, ())


@dataclass(frozen=True, slots=True)
class Tier:
    """Positions [`low`, `up_to`) of the period's usage (`up_to` None: no end) at these prices."""

    low: int
    up_to: int | None
    prices: dict[str, Decimal]
    flat_fee: Decimal = ZERO

    def price(self, name: str) -> Decimal:
        """The tier's rate for `name`; cached input tokens cost the input rate when the tier sets none."""
        if name == "cached_input_price" and name not in self.prices:
            return self.prices["input_price"]
        return self.prices[name]


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The price in force for one (organization, service, moment): its model and rates, and the id of
    its row for traceability."""

    price_id: int
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    unit_price: Decimal | None = None
    cached_input_price: Decimal | None = None
    model: str = PriceModel.PER_UNIT
    tiers: tuple[Tier, ...] = ()
    package_size: int | None = None
    stored_tiers: list[dict[str, Any]] | None = field(default=None, compare=False)  # as the row keeps them

    def complete(self, method: str) -> bool:
        """Whether the row gives everything its model needs (else the service is unpriced)."""
        if self.model == PriceModel.PER_UNIT:
            return all(getattr(self, name) is not None for name in price_fields(method))
        if self.model == PriceModel.PACKAGE:
            return self.unit_price is not None and bool(self.package_size)
        return bool(self.tiers)


def prices_listed(method: str, price: Any) -> dict[str, Decimal]:
    """A per-unit price's rates as shown to people and the API: the method's fields, then the optional
    ones the row sets (a TOKENS row's `cached_input_price`). A package's price per package; empty for tiered and volume prices (their rates are in their tiers)."""
    if getattr(price, "model", PriceModel.PER_UNIT) == PriceModel.PACKAGE:
        return {"unit_price": price.unit_price}
    if getattr(price, "model", PriceModel.PER_UNIT) != PriceModel.PER_UNIT:
        return {}
    listed = {name: getattr(price, name) for name in price_fields(method)}
    listed.update((name, getattr(price, name)) for name in optional_price_fields(method) if getattr(price, name) is not None)
    return listed


def charged_prices(method: str, quantities: Quantities, prices: UnitPrices) -> dict[str, Decimal | None]:
    """price field → the unit price an event is charged at, as its usage record keeps it (a per-unit
    price; the other models keep their tiers in the record's `pricing` instead). Cached input tokens,
    when reported, cost `cached_input_price`, or the input price when the row sets none."""
    if prices.model != PriceModel.PER_UNIT:
        return {}
    charged = {name: getattr(prices, name) for name in price_fields(method)}
    if quantities.cached_input_tokens is not None:
        cached = prices.cached_input_price
        charged["cached_input_price"] = prices.input_price if cached is None else cached
    return charged


# --- Parsing and validating what staff enter -----------------------------------------------------------


class PriceInvalid(ValueError):
    """A price that cannot be stored; `errors` maps a field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{name}: {' '.join(messages)}" for name, messages in errors.items()))
        self.errors = errors


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("must be a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError("must be a decimal string") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a finite amount ≥ 0")
    if amount != money_round(amount) or amount.adjusted() >= MONEY_DIGITS - MONEY_PLACES:
        raise ValueError(f"has more than {MONEY_PLACES} decimal places or is too large")
    return amount


def tiers_parse(method: str, raw: Any) -> tuple[tuple[Tier, ...], list[dict[str, Any]]]:
    """Validate tiers as sent (a list of {up_to, <the method's price fields>, flat_fee?}) and answer
    them parsed and in their stored form (amounts as strings). PriceInvalid on any fault."""
    if not isinstance(raw, list) or not raw:
        raise PriceInvalid({"tiers": ["A non-empty list of tiers is required for this model."]})
    if len(raw) > MAX_TIERS:
        raise PriceInvalid({"tiers": [f"At most {MAX_TIERS} tiers."]})
    allowed = {"up_to", "flat_fee", *price_fields(method), *optional_price_fields(method)}
    tiers: list[Tier] = []
    stored: list[dict[str, Any]] = []
    low = 0
    for index, item in enumerate(raw):
        where = f"tiers[{index}]"
        if not isinstance(item, dict):
            raise PriceInvalid({where: ["Each tier is an object."]})
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise PriceInvalid({where: [f"Unknown fields for this method: {', '.join(unknown)}."]})
        up_to = item.get("up_to")
        last = index == len(raw) - 1
        if last and up_to is not None:
            raise PriceInvalid({where: ["The last tier has no end: its up_to is null."]})
        if not last:
            if isinstance(up_to, bool) or not isinstance(up_to, int):
                raise PriceInvalid({where: ["up_to is an integer (quantity units); only the last tier's is null."]})
            if not low < up_to <= MAX_COUNT * 1000:
                raise PriceInvalid({where: ["Each up_to is greater than the previous one."]})
        prices: dict[str, Decimal] = {}
        for name in (*price_fields(method), *optional_price_fields(method)):
            if name not in item:
                if name in price_fields(method):
                    raise PriceInvalid({where: [f"{name} is required."]})
                continue
            try:
                prices[name] = _amount(item[name])
            except ValueError as error:
                raise PriceInvalid({where: [f"{name} {error}."]}) from None
        try:
            flat_fee = _amount(item.get("flat_fee", "0"))
        except ValueError as error:
            raise PriceInvalid({where: [f"flat_fee {error}."]}) from None
        tiers.append(Tier(low=low, up_to=up_to, prices=prices, flat_fee=flat_fee))
        entry: dict[str, Any] = {"up_to": up_to, **{name: format(value, "f") for name, value in prices.items()}}
        if flat_fee:
            entry["flat_fee"] = format(flat_fee, "f")
        stored.append(entry)
        low = up_to if up_to is not None else low
    return tuple(tiers), stored


def price_validate(
    *, method: str, model: str, fields: dict[str, Any], tiers: Any = None, package_size: Any = None
) -> tuple[dict[str, Decimal | None], list[dict[str, Any]] | None, int | None]:
    """Check a new price for `method` under `model` (docs/pricing.md) and answer what the row stores:
    its price fields, its tiers (stored form) and its package size. PriceInvalid on any fault."""
    if model not in PriceModel.values:
        raise PriceInvalid({"model": [f"One of {', '.join(PriceModel.values)}."]})
    given = {name: value for name, value in fields.items() if value is not None}
    out: dict[str, Decimal | None] = dict.fromkeys(ALL_PRICE_FIELDS)
    if model in (PriceModel.TIERED, PriceModel.VOLUME):
        if given:
            raise PriceInvalid({name: ["Set the rates inside the tiers for this model."] for name in given})
        if package_size is not None:
            raise PriceInvalid({"package_size": ["Only for the package model."]})
        _, stored = tiers_parse(method, tiers)
        return out, stored, None
    if tiers is not None:
        raise PriceInvalid({"tiers": ["Only for the tiered and volume models."]})
    if model == PriceModel.PACKAGE:
        extra = sorted(set(given) - {"unit_price"})
        if extra:
            raise PriceInvalid({name: ["A package price sets only unit_price (the price of one package)."] for name in extra})
        if isinstance(package_size, bool) or not isinstance(package_size, int) or not 1 <= package_size <= MAX_COUNT:
            raise PriceInvalid({"package_size": [f"An integer from 1 to {MAX_COUNT} (quantity units per package)."]})
        if "unit_price" not in given:
            raise PriceInvalid({"unit_price": ["The price of one package is required."]})
        try:
            out["unit_price"] = _amount(given["unit_price"])
        except ValueError as error:
            raise PriceInvalid({"unit_price": [f"Unit price {error}."]}) from None
        return out, None, package_size
    if package_size is not None:
        raise PriceInvalid({"package_size": ["Only for the package model."]})
    allowed = (*price_fields(method), *optional_price_fields(method))
    errors: dict[str, list[str]] = {}
    for name in ALL_PRICE_FIELDS:
        if name in given and name not in allowed:
            errors[name] = [f"Not a price field of {method}."]
        elif name not in given and name in price_fields(method):
            errors[name] = ["This field is required for this service's method."]
        elif name in given:
            try:
                out[name] = _amount(given[name])
            except ValueError as error:
                errors[name] = [f"Must be {error}." if not str(error).startswith("has") else f"It {error}."]
    if errors:
        raise PriceInvalid(errors)
    return out, None, None


def unit_prices_from_row(row: Any, method: str) -> UnitPrices:
    """A Price row (or anything with its fields) as UnitPrices, tiers parsed."""
    model = getattr(row, "model", PriceModel.PER_UNIT) or PriceModel.PER_UNIT
    stored = getattr(row, "tiers", None)
    tiers: tuple[Tier, ...] = ()
    if model in (PriceModel.TIERED, PriceModel.VOLUME) and stored:
        # jsonb read by a raw cursor comes as its text (Django leaves decoding to the field)
        tiers, stored = _tiers_parsed(method, stored if isinstance(stored, str) else json.dumps(stored))
    return UnitPrices(
        price_id=row.pk if hasattr(row, "pk") else row.price_id,
        input_price=row.input_price,
        output_price=row.output_price,
        unit_price=row.unit_price,
        cached_input_price=row.cached_input_price,
        model=model,
        tiers=tiers,
        package_size=getattr(row, "package_size", None),
        stored_tiers=stored,
    )


@functools.lru_cache(maxsize=4096)
def _tiers_parsed(method: str, text: str) -> tuple[tuple[Tier, ...], list[dict[str, Any]]]:
    """`tiers_parse` of stored tiers, once per distinct text: the price in force is read on every event,
    and its tiers were checked when the row was written."""
    return tiers_parse(method, json.loads(text))


# --- The formula ----------------------------------------------------------------------------------------


def _components(method: str, quantities: Quantities) -> list[tuple[int, str, int]]:
    """(units, price field, per) in position order, the unreported ones left out."""
    out = []
    for quantity_field, price_field, per in PRICE_COMPONENTS[method]:
        units = getattr(quantities, quantity_field)
        if units is not None:
            out.append((units, price_field, per))
    return out


def _overlap(low: int, high: int | None, start: int, end: int) -> int:
    """How many of positions [start, end) lie in [low, high)."""
    top = end if high is None else min(end, high)
    return max(0, top - max(start, low))


def _ceil_div(value: int, size: int) -> int:
    return -(-value // size)


def _unit_price(prices: UnitPrices, name: str) -> Decimal:
    if name == "cached_input_price" and prices.cached_input_price is None:
        name = "input_price"
    value: Decimal | None = getattr(prices, name)
    if value is None:  # selectors.priced_service_get refuses such a price (PriceNotSet) before this
        raise TypeError(f"a price without its {name}")
    return value


def _rated(total: Decimal, count: int, rate: Decimal, per: int) -> Decimal:
    """`total` plus `count` units at `rate` per `per` units, exactly."""
    return EXACT.add(total, EXACT.divide(EXACT.multiply(Decimal(count), rate), Decimal(per)))


def _volume_tier(tiers: tuple[Tier, ...], total: int) -> Tier:
    """The tier a running total of `total` units reaches."""
    for tier in tiers:
        if tier.up_to is None or total <= tier.up_to:
            return tier
    return tiers[-1]


def exact_cost(method: str, quantities: Quantities, prices: UnitPrices, *, start: int, free_until: int) -> Decimal:
    """The event's cost before its one rounding, for an event whose units start at position `start`
    (units below `free_until` are free)."""
    components = _components(method, quantities)
    units = sum(count for count, _, _ in components)
    if prices.model == PriceModel.PACKAGE:
        size = prices.package_size or 1
        opened = _ceil_div(max(0, start + units - free_until), size) - _ceil_div(max(0, start - free_until), size)
        return EXACT.multiply(Decimal(opened), _unit_price(prices, "unit_price"))
    total = ZERO
    reached = _volume_tier(prices.tiers, start + units) if prices.model == PriceModel.VOLUME else None
    position = start
    for count, name, per in components:
        first, end = max(position, free_until), position + count
        position = end
        if prices.model == PriceModel.TIERED:
            for tier in prices.tiers:
                charged = _overlap(tier.low, tier.up_to, first, end)
                if charged:
                    total = _rated(total, charged, tier.price(name), per)
            continue
        charged = max(0, end - first)
        if charged:
            rate = reached.price(name) if reached is not None else _unit_price(prices, name)
            total = _rated(total, charged, rate, per)
    # A tier's flat fee is paid once a period, by the event that holds the tier's first position.
    for tier in prices.tiers:
        if tier.flat_fee and start <= tier.low < start + units:
            total = EXACT.add(total, tier.flat_fee)
    return total


@dataclass(frozen=True, slots=True)
class PositionedCost:
    """The cost of an event at a position, and the starts [`low`, `high`] (`high` None: no end) that
    give the very same cost."""

    cost: Decimal
    low: int
    high: int | None


def _boundaries(method: str, quantities: Quantities, prices: UnitPrices, *, start: int, free_until: int) -> set[int]:
    """Starts at which the cost may change its form: where a component's edge meets a tier edge, the
    end of the free units, or (package) a package edge."""
    offsets = [0]
    for count, _, _ in _components(method, quantities):
        offsets.append(offsets[-1] + count)
    edges = {free_until}
    for tier in prices.tiers:
        edges.add(tier.low)
        if tier.up_to is not None:
            edges.add(tier.up_to)
    if prices.model == PriceModel.PACKAGE:
        size = prices.package_size or 1
        for offset in (0, offsets[-1]):
            nearest = (start + offset - free_until) // size
            edges.update(free_until + (nearest + step) * size for step in (-1, 0, 1, 2))
    return {edge - offset + shift for edge in edges for offset in offsets for shift in (0, 1)}


def cost_at(method: str, quantities: Quantities, prices: UnitPrices, *, start: int, free_until: int) -> PositionedCost:
    """The event's cost at `start`, rounded once (half-even), with the range of starts that cost the
    same. Between two boundaries every part of the formula is affine in the start, so the cost is the
    same over the whole range when it is the same at both ends; otherwise the range is `start` alone."""

    def exact(at: int) -> Decimal:
        return exact_cost(method, quantities, prices, start=at, free_until=free_until)

    here = exact(start)
    cost = money_round(here)
    if prices.model == PriceModel.PER_UNIT and free_until == 0:
        return PositionedCost(cost, 0, None)
    boundaries = _boundaries(method, quantities, prices, start=start, free_until=free_until)
    low = max((point for point in boundaries if point <= start), default=0)
    low = max(low, 0)
    above = [point for point in boundaries if point > start]
    high = min(above) - 1 if above else None
    probe = high if high is not None else low + 1
    if exact(low) == here and exact(probe) == here:
        return PositionedCost(cost, low, high)
    return PositionedCost(cost, start, start)


def cost_bound(method: str, quantities: Quantities, prices: UnitPrices) -> Decimal:
    """The most the event can cost at any position, rounded once: what a hold reserves for it (plan
    allowances are not counted on)."""
    if prices.model == PriceModel.PACKAGE:
        units = sum(count for count, _, _ in _components(method, quantities))
        opened = _ceil_div(units, prices.package_size or 1) + (1 if units else 0)
        return money_round(EXACT.multiply(Decimal(opened), _unit_price(prices, "unit_price")))
    if prices.model == PriceModel.PER_UNIT:
        return money_round(exact_cost(method, quantities, prices, start=0, free_until=0))
    total = sum((tier.flat_fee for tier in prices.tiers), ZERO)
    for count, name, per in _components(method, quantities):
        total = _rated(total, count, max(tier.price(name) for tier in prices.tiers), per)
    return money_round(total)


def positional(prices: UnitPrices, *, allowance: bool) -> bool:
    """Whether an event's cost depends on its position: a tiered, volume or package price, or a plan
    that includes the service."""
    return allowance or prices.model in POSITIONAL_MODELS


def pricing_kept(prices: UnitPrices, *, free_until: int) -> dict[str, Any]:
    """What a usage record keeps of a positional price, enough to derive its cost again."""
    kept: dict[str, Any] = {"model": prices.model, "price_id": prices.price_id, "free_until": free_until}
    if prices.model in (PriceModel.TIERED, PriceModel.VOLUME):
        kept["tiers"] = prices.stored_tiers
    elif prices.model == PriceModel.PACKAGE:
        kept["package_size"] = prices.package_size
        kept["unit_price"] = format(_unit_price(prices, "unit_price"), "f")
    return kept


def volume_target(method: str, period_units: dict[str, int], prices: UnitPrices, *, total: int, flat_fee: bool = True) -> Decimal:
    """What a closed period's chargeable units cost at the volume price of the period's `total`
    quantity (its reached tier's rates, and its flat fee unless not `flat_fee`), exactly, before
    rounding. `period_units` maps each price field to the chargeable units of the period's events
    priced with `prices`."""
    tier = _volume_tier(prices.tiers, total)
    amount = tier.flat_fee if total > 0 and flat_fee else ZERO
    for _, name, per in PRICE_COMPONENTS[method]:
        count = period_units.get(name, 0)
        if count:
            amount = _rated(amount, count, tier.price(name), per)
    return amount


def chargeable_units(method: str, quantities: Quantities, *, start: int, free_until: int) -> dict[str, int]:
    """price field → how many of the event's units were charged (not free)."""
    units: dict[str, int] = {}
    position = start
    for count, name, _ in _components(method, quantities):
        first, end = max(position, free_until), position + count
        position = end
        units[name] = units.get(name, 0) + max(0, end - first)
    return units
