"""Pricing strategies: quantities × the price in force → an exact cost, rounded once.

Only the per-unit strategy exists today; a tiered or hybrid plan is another PricingStrategy
chosen per service without touching callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from billing_site.money import EXACT, ZERO, money_round
from metering.calculators import Quantities
from metering.models import CalcMethod

# (quantity field, price field, units the price is quoted per), per docs/contract.md §3.
PRICE_COMPONENTS: dict[str, tuple[tuple[str, str, int], ...]] = {
    CalcMethod.TOKENS: (("input_tokens", "input_price", 1_000_000), ("output_tokens", "output_price", 1_000_000)),
    CalcMethod.CHAR_COUNT: (("quantity", "unit_price", 1_000),),
    CalcMethod.WORD_COUNT: (("quantity", "unit_price", 1_000),),
    CalcMethod.IMAGE_RESOLUTION: (("quantity", "unit_price", 1),),
    CalcMethod.REQUEST: (("quantity", "unit_price", 1),),
}


def price_fields(method: str) -> tuple[str, ...]:
    return tuple(price_field for _, price_field, _ in PRICE_COMPONENTS[method])


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The prices in force for one (organization, service, moment); a price id for traceability."""

    price_id: int
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    unit_price: Decimal | None = None


class PricingStrategy(Protocol):
    def cost(self, method: str, quantities: Quantities, prices: UnitPrices) -> Decimal: ...


class PerUnitPricing:
    def cost(self, method: str, quantities: Quantities, prices: UnitPrices) -> Decimal:
        """Σ quantity × price / units, computed exactly, then rounded once (half-even)."""
        total = ZERO
        for quantity_field, price_field, per in PRICE_COMPONENTS[method]:
            quantity = getattr(quantities, quantity_field)
            price = getattr(prices, price_field)
            total = EXACT.add(total, EXACT.divide(EXACT.multiply(Decimal(quantity), price), Decimal(per)))
        return money_round(total)


PER_UNIT = PerUnitPricing()


def strategy_for(method: str) -> PricingStrategy:
    return PER_UNIT
