"""Reads of the gateway's configuration: the cached routes the request path uses, and the rows the
staff faces show."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from django.db.models import Prefetch, QuerySet

from billing_site.cache import TwoLevelCache
from billing_site.errors import NotFound
from gateway.crypto import UpstreamKeyUnreadable, upstream_key_decrypt
from gateway.models import ModelRoute, RouteUpstream, Upstream

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream of a route as the request path needs it. `api_key` is the plain key ("" when
    the upstream takes none): it never appears in a repr, so a log line or traceback cannot show it."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float
    timeout: float  # to the first byte
    idle_timeout: float  # between two chunks of a stream
    max_concurrency: int
    sandbox: bool
    upstream_model: str
    simulated: bool = False  # gateway.simulate's in-process upstream for test keys: no socket, no breaker, no cap


@dataclass(frozen=True, slots=True)
class RouteConfig:
    model: str
    service_slug: str
    calc_method: str
    on_disconnect: str
    default_max_tokens: int
    upstreams: tuple[UpstreamConfig, ...]  # active ones only, in the order to try; may be empty
    created: int = 0  # Unix seconds, for GET /v1/models


# Every usable route by public model name, as one entry: a route or upstream change is rare, and an
# unknown model name is then answered without a query. Invalidated by every save and delete of an
# Upstream, a ModelRoute, a RouteUpstream or a Service (gateway/apps.py). The plain upstream keys live
# only in this process's memory; Redis holds the version token alone.
GATEWAY_ROUTES: TwoLevelCache[Mapping[str, RouteConfig]] = TwoLevelCache("gateway_routes", max_entries=1)
_ALL_ROUTES = "all"


def _upstream_key(upstream: Upstream) -> str | None:
    if not upstream.api_key_encrypted:
        return ""
    try:
        return upstream_key_decrypt(upstream.api_key_encrypted)
    except UpstreamKeyUnreadable:
        logger.error(
            "gateway: the API key of upstream %s cannot be decrypted with GATEWAY_ENCRYPTION_KEYS; the upstream is "
            "left out of every route until its key is set again (or the old encryption key is restored)",
            upstream.name,
        )
        return None


def _routes_load() -> tuple[Mapping[str, RouteConfig], None]:
    """Active routes of active services, each with its active upstreams whose key can be read."""
    links = RouteUpstream.objects.filter(upstream__active=True).select_related("upstream").order_by("position", "id")
    routes = ModelRoute.objects.filter(active=True, service__active=True).select_related("service")
    keys: dict[int, str | None] = {}
    loaded = {}
    for route in routes.prefetch_related(Prefetch("upstreams", queryset=links, to_attr="active_links")):
        upstreams = []
        for link in route.active_links:  # set by the Prefetch above
            upstream = link.upstream
            if upstream.pk not in keys:
                keys[upstream.pk] = _upstream_key(upstream)
            api_key = keys[upstream.pk]
            if api_key is None:
                continue
            upstreams.append(
                UpstreamConfig(
                    name=upstream.name,
                    base_url=upstream.base_url,
                    api_key=api_key,
                    connect_timeout=upstream.connect_timeout_seconds,
                    timeout=upstream.timeout_seconds,
                    idle_timeout=upstream.idle_timeout_seconds,
                    max_concurrency=upstream.max_concurrency,
                    sandbox=upstream.sandbox,
                    upstream_model=link.upstream_model,
                )
            )
        loaded[route.model] = RouteConfig(
            model=route.model,
            service_slug=route.service.slug,
            calc_method=route.service.calc_method,
            on_disconnect=route.on_disconnect,
            default_max_tokens=route.default_max_tokens,
            upstreams=tuple(upstreams),
            created=int(route.created_at.timestamp()),
        )
    return MappingProxyType(loaded), None


def _routes() -> Mapping[str, RouteConfig]:
    routes = GATEWAY_ROUTES.get(_ALL_ROUTES, _routes_load)
    assert routes is not None  # _routes_load always answers a mapping, empty or not
    return routes


def route_get(*, model: str) -> RouteConfig | None:
    """The route customers reach as `model`, or None: unknown, inactive, or its service retired. From
    this process's cache while no route, upstream or service changed (billing_site/cache.py)."""
    if not isinstance(model, str):
        return None
    return _routes().get(model)


def route_list_for_key(*, allowed_models: Iterable[str]) -> list[RouteConfig]:
    """The routes a key may use (all when `allowed_models` is empty), by model name: GET /v1/models."""
    allowed = set(allowed_models)
    routes = _routes()
    return [routes[model] for model in sorted(routes) if not allowed or model in allowed]


# --- The staff faces ---------------------------------------------------------------------------------


def upstream_list() -> QuerySet[Upstream]:
    return Upstream.objects.order_by("name")


def upstream_get(*, name: str) -> Upstream:
    """The upstream named `name`; NotFound (404) otherwise."""
    upstream = Upstream.objects.filter(name=name).first()
    if upstream is None:
        raise NotFound("No such upstream.")
    return upstream


def model_route_list() -> QuerySet[ModelRoute]:
    """Every route with its service and its upstreams in order (active or not)."""
    links = RouteUpstream.objects.select_related("upstream").order_by("position", "id")
    return ModelRoute.objects.select_related("service").prefetch_related(Prefetch("upstreams", queryset=links)).order_by("model")


def model_route_get(*, model: str) -> ModelRoute:
    """The route for `model` (active or not); NotFound (404) otherwise."""
    route = model_route_list().filter(model=model).first()
    if route is None:
        raise NotFound("No such model route.")
    return route


def model_names_unknown(*, names: Iterable[str]) -> list[str]:
    """The names among `names` that no route (active or not) answers to, in the order given."""
    names = list(names)
    known = set(ModelRoute.objects.filter(model__in=names).values_list("model", flat=True))
    return [name for name in names if name not in known]
