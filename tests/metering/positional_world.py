"""Shared set-up for the positional-price tests: a service of any method under any price model (a
per-unit price with a plan's included units), random events, and the oracle's bookkeeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.utils import timezone

from metering.models import CalcMethod, Plan, PlanAllowance, Service, Subscription
from metering.services import catalog
from metering.services.positions import period_of, position_grant
from tests.factories import ServiceFactory
from tests.metering import pricing_oracle as oracle

METHODS = [CalcMethod.TOKENS, CalcMethod.CHAR_COUNT, CalcMethod.WORD_COUNT, CalcMethod.IMAGE_RESOLUTION, CalcMethod.REQUEST]
MODELS = ["per_unit", "tiered", "volume", "package"]
# Roughly the units one event takes, so that tiers and packages are crossed by a few dozen events.
EVENT_SCALE = {"TOKENS": 3000, "CHAR_COUNT": 800, "WORD_COUNT": 800, "IMAGE_RESOLUTION": 4, "REQUEST": 1}


def random_rate(rng: random.Random) -> str:
    """A rate with up to 12 decimals (often all 12, so that costs need their one rounding)."""
    places = rng.choice([2, 6, 12])
    return format(Decimal(rng.randrange(1, 5 * 10**places)).scaleb(-places), "f")


def rates_for(method: str, rng: random.Random) -> dict[str, str]:
    if method == "TOKENS":
        rates = {"input_price": random_rate(rng), "output_price": random_rate(rng)}
        if rng.random() < 0.5:
            rates["cached_input_price"] = random_rate(rng)
        return rates
    return {"unit_price": random_rate(rng)}


def random_price(method: str, model: str, rng: random.Random, *, span: int) -> dict[str, Any]:
    """What staff send for a price of `model` whose tiers (or packages) fall inside the first `span` units."""
    if model in ("tiered", "volume"):
        edges = sorted(rng.sample(range(1, max(span, 6)), rng.randint(1, 4)))
        tiers: list[dict[str, Any]] = []
        for up_to in [*edges, None]:
            tier: dict[str, Any] = {"up_to": up_to, **rates_for(method, rng)}
            if rng.random() < 0.4:
                tier["flat_fee"] = random_rate(rng)
            tiers.append(tier)
        return {"model": model, "tiers": tiers}
    if model == "package":
        return {"model": model, "package_size": rng.randint(1, max(1, span // 6)), "unit_price": random_rate(rng)}
    return {"model": model, **rates_for(method, rng)}


def price_add(service: Service, sent: dict[str, Any]):
    return catalog.price_create(
        service=service,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model=sent["model"],
        tiers=sent.get("tiers"),
        package_size=sent.get("package_size"),
        **{k: Decimal(v) for k, v in sent.items() if k in ("input_price", "output_price", "cached_input_price", "unit_price")},
    )


def oracle_price(sent: dict[str, Any]) -> oracle.OraclePrice:
    return oracle.OraclePrice.of(**sent)


def random_event(method: str, rng: random.Random, *, zero: float = 0.1) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the client's quantity fields, the oracle's event); some zero-quantity events where the method has them."""
    scale = EVENT_SCALE[method]
    nothing = rng.random() < zero
    if method == "TOKENS":
        input_tokens = 0 if nothing else rng.randint(0, 2 * scale)
        data = {"input_tokens": input_tokens, "output_tokens": 0 if nothing else rng.randint(0, scale)}
        if rng.random() < 0.5:
            data["cached_input_tokens"] = rng.randint(0, input_tokens)
        return data, dict(data)
    if method == "REQUEST":
        return {}, {"quantity": 1}
    if method == "IMAGE_RESOLUTION":
        width, height, images = rng.randint(1, 1100), rng.randint(1, 600), rng.randint(1, 2)
        tiles = images * -(-width // 512) * -(-height // 512)
        return {"width": width, "height": height, "images": images}, {"quantity": tiles}
    quantity = 0 if nothing else rng.randint(1, 2 * scale)
    return {"characters" if method == "CHAR_COUNT" else "words": quantity}, {"quantity": quantity}


def service_priced(method: str, model: str, rng: random.Random, *, organization, events: int, slug: str | None = None):
    """A service of `method` under a random `model` price spanning about `events` events' units; a
    per-unit price comes with a plan whose included units (granted for this period) end midway. Answers
    (service, what staff sent, free_until of the live position)."""
    service = ServiceFactory(slug=slug or f"pos-{method.lower()}-{model}", calc_method=method)
    span = events * EVENT_SCALE[method]
    sent = random_price(method, model, rng, span=span)
    price_add(service, sent)
    free_until = 0
    if model == "per_unit":
        plan = Plan.objects.create(slug=f"plan-{service.slug}", name="Plan", monthly_fee=Decimal(0))
        free_until = rng.randint(1, max(1, span // 2))
        PlanAllowance.objects.create(plan=plan, service=service, quantity=free_until)
        Subscription.objects.create(organization=organization, plan=plan, period=period_of(timezone.now()))
        position_grant(organization_id=organization.pk, service_id=service.pk, period=period_of(timezone.now()), units=free_until)
    return service, sent, free_until


@dataclass
class Expected:
    """What the oracle says each record is: per (test?) the running position and its records."""

    method: str
    price: oracle.OraclePrice
    free_until: dict[bool, int]
    position: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})
    records: dict[int, tuple[int | None, Decimal, bool]] = field(default_factory=dict)  # id → (position, cost, test)

    def next(self, event: dict[str, Any], *, test: bool) -> tuple[int | None, Decimal]:
        """The position and cost of the next event of this mode, and move on."""
        start = self.position[test]
        units = oracle.total_units(self.method, event)
        cost = oracle.cost(self.method, event, self.price, start=start, free_until=self.free_until[test])
        self.position[test] += units
        return (start if units else None), cost

    def live_total(self) -> Decimal:
        return sum((cost for _, cost, test in self.records.values() if not test), Decimal(0))
