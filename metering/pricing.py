"""Pricing strategies: quantities × the price in force → an exact cost, rounded once.

Only the per-unit strategy exists today; a tiered or hybrid plan is another PricingStrategy
chosen per service without touching callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from billing_site.money import EXACT, ZERO, money_round
from metering.calculators import Quantities
from metering.models import CalcMethod

PER_MILLION = 1_000_000

# (quantity field, price field, units the price is quoted per), per docs/contract.md §3. A component
# whose quantity the event did not report (cached input tokens) adds nothing.
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

# The price fields a price row of the method must give, and those it may give.
REQUIRED_PRICE_FIELDS: dict[str, tuple[str, ...]] = {
    CalcMethod.TOKENS: ("input_price", "output_price"),
    CalcMethod.CHAR_COUNT: ("unit_price",),
    CalcMethod.WORD_COUNT: ("unit_price",),
    CalcMethod.IMAGE_RESOLUTION: ("unit_price",),
    CalcMethod.REQUEST: ("unit_price",),
}
OPTIONAL_PRICE_FIELDS: dict[str, tuple[str, ...]] = {CalcMethod.TOKENS: ("cached_input_price",)}
ALL_PRICE_FIELDS = ("input_price", "output_price", "cached_input_price", "unit_price")


def price_fields(method: str) -> tuple[str, ...]:
    """The price fields every price row of `method` gives (a service is unpriced without them)."""
    return REQUIRED_PRICE_FIELDS[method]


def optional_price_fields(method: str) -> tuple[str, ...]:
    return OPTIONAL_PRICE_FIELDS.get(method, ())


def prices_listed(method: str, price: Any) -> dict[str, Decimal]:
    """A price row's rates as shown to people and the API: the method's fields, then the optional
    ones the row sets (a TOKENS row's `cached_input_price`)."""
    listed = {name: getattr(price, name) for name in price_fields(method)}
    listed.update((name, getattr(price, name)) for name in optional_price_fields(method) if getattr(price, name) is not None)
    return listed


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The prices in force for one (organization, service, moment); a price id for traceability."""

    price_id: int
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    unit_price: Decimal | None = None
    cached_input_price: Decimal | None = None


def charged_prices(method: str, quantities: Quantities, prices: UnitPrices) -> dict[str, Decimal | None]:
    """price field → the unit price an event is charged at, as its usage record keeps it. Cached input
    tokens, when reported, cost `cached_input_price`, or the input price when the row sets none (docs/contract.md §1)."""
    charged = {name: getattr(prices, name) for name in price_fields(method)}
    if quantities.cached_input_tokens is not None:
        cached = prices.cached_input_price
        charged["cached_input_price"] = prices.input_price if cached is None else cached
    return charged


class PricingStrategy(Protocol):
    def cost(self, method: str, quantities: Quantities, prices: UnitPrices) -> Decimal: ...


class PerUnitPricing:
    def cost(self, method: str, quantities: Quantities, prices: UnitPrices) -> Decimal:
        """Σ quantity × price / units, computed exactly, then rounded once (half-even)."""
        charged = charged_prices(method, quantities, prices)
        total = ZERO
        for quantity_field, price_field, per in PRICE_COMPONENTS[method]:
            quantity = getattr(quantities, quantity_field)
            if quantity is None:
                continue
            price = charged[price_field]
            if price is None:  # selectors.priced_service_get refuses such a price (PriceNotSet) before this
                raise TypeError(f"a {method} event priced without its {price_field}")
            total = EXACT.add(total, EXACT.divide(EXACT.multiply(Decimal(quantity), price), Decimal(per)))
        return money_round(total)


PER_UNIT = PerUnitPricing()


def strategy_for(method: str) -> PricingStrategy:
    return PER_UNIT
