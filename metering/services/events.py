"""A usage event as the client sent it, its validation, and its pricing: everything that happens
before the wallet lock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from billing_site.api.limits import idempotency_key_validate, json_depth
from billing_site.errors import DomainError, ErrorCode, InvalidRequest
from billing_site.money import ZERO
from metering import selectors
from metering.calculators import Quantities, measure
from metering.pricing import PositionedCost, UnitPrices, charged_prices, cost_at, pricing_kept

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 8
RESERVED_KEY_PREFIX = "tollgate:"  # usage Tollgate records itself (hold captures, metered views) lives under it


class SpendCapExceeded(DomainError):
    code = ErrorCode.SPEND_CAP_EXCEEDED
    message = "This API key has reached its spend cap."


def spend_cap_check(*, spent: Decimal, spend_cap: Decimal | None) -> None:
    """The spend-cap rule, after the key's spend was raised in the same transaction: raising rolls it back."""
    if spend_cap is not None and spent > spend_cap:
        raise SpendCapExceeded(details={"spend_cap": str(spend_cap)})


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One metering request as the client sent it."""

    service: str
    idempotency_key: str
    data: Mapping[str, Any]  # the method's quantity fields, as sent
    metadata: dict[str, Any] = field(default_factory=dict)

    def request_hash(self) -> str:
        canonical = {"service": self.service, "metadata": self.metadata, **{k: v for k, v in self.data.items() if v is not None}}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PricedEvent:
    """An event with its service, quantities, unit prices and cost, ready to be written. A positional
    event (docs/pricing.md) is priced at `position` (None: priced as if first), and its cost holds for
    any start in [`low`, `high`] with the same `free_until`; `at` prices it at another position."""

    event: UsageEvent
    service_id: int
    calc_method: str
    quantities: Quantities
    prices: dict[str, Decimal | None]
    cost: Decimal
    request_hash: str
    unit_prices: UnitPrices | None = None
    positional: bool = False
    position: int | None = None
    free_until: int = 0
    low: int = 0
    high: int | None = None

    @property
    def units(self) -> int:
        """How many positions the event takes: its quantity (for TOKENS, input + output tokens)."""
        return self.quantities.quantity

    @property
    def pricing(self) -> dict[str, Any] | None:
        """What its usage record keeps of a positional price."""
        if not self.positional or self.unit_prices is None:
            return None
        return pricing_kept(self.unit_prices, free_until=self.free_until)

    def at(self, *, position: int, free_until: int) -> PricedEvent:
        """The same event priced at `position` with the free units ending at `free_until`."""
        assert self.unit_prices is not None
        priced = cost_at(self.calc_method, self.quantities, self.unit_prices, start=position, free_until=free_until)
        return replace(self, cost=priced.cost, position=position, free_until=free_until, low=priced.low, high=priced.high)


def validate_idempotency_key(key: Any) -> str:
    """A client's key for a usage event or hold (see `idempotency_key_validate`), outside the prefix
    Tollgate keeps for the usage it records itself."""
    validated = idempotency_key_validate(key)
    if validated.startswith(RESERVED_KEY_PREFIX):
        raise InvalidRequest(
            f"Idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved.",
            details={"idempotency_key": ["Reserved prefix."]},
        )
    return validated


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def validate_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("`metadata` must be an object.", details={"metadata": ["Must be an object."]})
    if json_depth(metadata) > MAX_METADATA_DEPTH:
        raise InvalidRequest("`metadata` is nested too deeply.", details={"metadata": [f"At most {MAX_METADATA_DEPTH} levels."]})
    if _has_nul(metadata):  # PostgreSQL's jsonb cannot store NUL characters
        raise InvalidRequest("`metadata` contains a NUL character.", details={"metadata": ["NUL characters are not allowed."]})
    try:
        # 1e999 parses to infinity, which JSON (and PostgreSQL's jsonb) has no way to store.
        encoded = json.dumps(metadata, allow_nan=False)
    except ValueError:
        raise InvalidRequest(
            "`metadata` holds a number out of range.", details={"metadata": ["Numbers must be finite."]}
        ) from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidRequest("`metadata` is too large.", details={"metadata": [f"At most {MAX_METADATA_BYTES} bytes of JSON."]})
    return metadata


def event_price(
    event: UsageEvent,
    *,
    organization_id: int,
    services: dict[str, selectors.PricedService | DomainError] | None = None,
    include_inactive: bool = False,
) -> PricedEvent:
    """Everything that can happen before the lock: service, price in force, quantities, cost.
    `services` memoizes the service lookups of a batch (slug → PricedService or its error)."""
    services = {} if services is None else services
    priced = services.get(event.service)
    if priced is None:
        try:
            priced = selectors.priced_service_get(
                slug=event.service, organization_id=organization_id, include_inactive=include_inactive
            )
        except DomainError as error:
            priced = error
        services[event.service] = priced
    if isinstance(priced, DomainError):
        raise priced
    quantities = measure(priced.calc_method, event.data)
    prices = charged_prices(priced.calc_method, quantities, priced.prices)
    # A positional event is priced where it lands (`PricedEvent.at`); until then its cost is a placeholder
    # nothing may write (usage_sql.record_params refuses it). A zero-unit event costs nothing anywhere.
    first = (
        PositionedCost(ZERO, 0, None)
        if priced.positional
        else cost_at(priced.calc_method, quantities, priced.prices, start=0, free_until=0)
    )
    return PricedEvent(
        event,
        priced.service_id,
        priced.calc_method,
        quantities,
        prices,
        first.cost,
        event.request_hash(),
        unit_prices=priced.prices,
        positional=priced.positional,
        low=first.low,
        high=first.high,
    )
