"""A world for gateway tests: an organization with a funded wallet, a live and a test key, a priced service,
and a model route over the given fake upstreams; plus the exact oracle of what a call must cost."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any, TypeVar

import openai

from accounts import services as account_services
from accounts.models import Organization
from billing_site.money import MONEY_QUANTUM
from gateway import services as gateway_services
from gateway.models import ModelRoute
from gateway.redis import async_redis_close
from metering.models import CalcMethod, Hold, HoldStatus, Service
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.gateway.fake_upstream import FakeUpstream, run_async
from tests.gateway.gateway_server import GatewayServer

MODEL = "gpt-4o-mini"
T = TypeVar("T")


@dataclass
class World:
    organization: Organization
    service: Service
    route: ModelRoute
    live_secret: str
    test_secret: str
    live_key_id: int
    prices: dict[str, Decimal]
    upstream_names: list[str] = field(default_factory=list)

    def client(self, gateway: GatewayServer, *, test: bool = False, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 20)
        return openai.OpenAI(base_url=gateway.base_url, api_key=self.test_secret if test else self.live_secret, **options)

    def async_client(self, gateway: GatewayServer, *, test: bool = False, **options: Any) -> openai.AsyncOpenAI:
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 20)
        return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=self.test_secret if test else self.live_secret, **options)

    def cost(self, *, input_tokens: int, output_tokens: int, cached: int = 0) -> Decimal:
        """The exact oracle: fractions, rounded once half-even to the stored scale."""
        input_price = Fraction(self.prices["input_price"])
        cached_price = Fraction(self.prices.get("cached_input_price", self.prices["input_price"]))
        exact = (
            (input_tokens - cached) * input_price + cached * cached_price + output_tokens * Fraction(self.prices["output_price"])
        ) / 1_000_000
        return _round(exact)


def _round(exact: Fraction) -> Decimal:
    scaled = exact / Fraction(MONEY_QUANTUM)
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and whole % 2 == 1):
        whole += 1
    return (Decimal(whole) * MONEY_QUANTUM).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


_serial = iter(range(1, 1_000_000))


def world_build(
    *,
    upstreams: list[FakeUpstream | tuple[str, str]],
    balance: str = "10.00",
    input_price: str = "2.50",
    output_price: str = "10.00",
    cached_input_price: str | None = None,
    on_disconnect: str = "drain",
    default_max_tokens: int = 64,
    model: str = MODEL,
    calc_method: str = CalcMethod.TOKENS,
    unit_price: str | None = None,
    sandbox: tuple[str, ...] = (),
    upstream_options: dict[str, Any] | None = None,
    **key_limits: Any,
) -> World:
    """`upstreams`: fakes (named fake-N) or (name, base URL) pairs, in the route's order; `sandbox` names the
    ones marked sandbox."""
    n = next(_serial)
    organization = organization_create(name=f"Gateway {n}", owner=UserFactory())
    if calc_method == CalcMethod.TOKENS:
        prices = {"input_price": Decimal(input_price), "output_price": Decimal(output_price)}
        if cached_input_price is not None:
            prices["cached_input_price"] = Decimal(cached_input_price)
    else:
        prices = {"unit_price": Decimal(unit_price or "0.04")}
    service = service_with_price(slug=f"gw-{n}", calc_method=calc_method, **prices)
    names = []
    for index, upstream in enumerate(upstreams):
        name, url = (f"fake-{n}-{index}", upstream.url + "/v1") if isinstance(upstream, FakeUpstream) else upstream
        gateway_services.upstream_create(
            name=name, base_url=url, api_key="sk-upstream-secret", sandbox=name in sandbox, **(upstream_options or {})
        )
        names.append(name)
    route = gateway_services.model_route_create(
        model=model,
        service=service.slug,
        upstreams=[gateway_services.RouteUpstreamSpec(upstream=name, upstream_model=f"{model}-upstream") for name in names],
        on_disconnect=on_disconnect,
        default_max_tokens=default_max_tokens,
    )
    if Decimal(balance):
        wallet_fund(organization, balance)
    live = account_services.api_key_create(organization=organization, name="live", **key_limits)
    test = account_services.api_key_create(organization=organization, name="test", mode="test", **key_limits)
    return World(
        organization=organization,
        service=service,
        route=route,
        live_secret=live.secret,
        test_secret=test.secret,
        live_key_id=live.api_key.pk,
        prices=prices,
        upstream_names=names,
    )


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout}s for {what}")
        time.sleep(0.02)


def wait_hold_finished(world: World, *, timeout: float = 10.0) -> Hold:
    """The charge of a call whose client left (or got an error event) happens after the client stops reading."""
    wait_until(
        lambda: Hold.objects.filter(organization=world.organization).exclude(status=HoldStatus.ACTIVE).exists(),
        what="the call's hold to be captured or released",
        timeout=timeout,
    )
    return Hold.objects.get(organization=world.organization)


def run_on_own_loop(awaitable: Awaitable[T]) -> T:
    """Run on a fresh event loop in a thread of its own (as the ASGI server runs each worker's loop; `run_async`),
    closing that loop's Redis client."""

    async def main() -> T:
        try:
            return await awaitable
        finally:
            await async_redis_close()

    return run_async(main())
