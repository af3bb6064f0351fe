"""Writes of the gateway's configuration: upstreams (with their encrypted API keys) and model routes.
The staff API and the back office apply the same checks (the `*_clean` functions below). Every write
is seen by every process's next request (the `gateway_routes` cache, gateway/selectors.py), and a
write by a named staff member is recorded in the back office's history (Django admin's LogEntry), as
the admin records its own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack
from urllib.parse import urlsplit

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils.text import capfirst

from billing_site.errors import InvalidRequest
from gateway.crypto import upstream_key_encrypt
from gateway.models import ModelRoute, OnDisconnect, RouteUpstream, Upstream
from gateway.selectors import GATEWAY_ROUTES, model_names_unknown
from metering.models import CalcMethod, Service

# What the gateway can meter: tokens (chat, completions, embeddings), image tiles or whole requests
# (images). A characters or words service could never be given its quantities by an OpenAI answer.
GATEWAY_CALC_METHODS = (CalcMethod.TOKENS, CalcMethod.IMAGE_RESOLUTION, CalcMethod.REQUEST)
API_KEY_MAX_LENGTH = 1000
BASE_URL_MAX_LENGTH = 500  # Upstream.base_url
NAME_MAX_LENGTH = 120  # ModelRoute.model and RouteUpstream.upstream_model

_LABELS = {"api_key": "API key", "base_url": "Base URL", "service": "Service", "upstreams": "Upstreams"}


# --- Checks shared by the staff API and the back office ------------------------------------------------


def base_url_clean(base_url: Any) -> str:
    """An http(s) URL with a host and no credentials, query or fragment, without its trailing slash.
    Host names without a dot (a container's `vllm`) are allowed: upstreams often live on a private network."""

    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest(f"`base_url`: {message}", details={"base_url": [message]})

    if not isinstance(base_url, str) or not base_url.strip():
        raise refuse("An http:// or https:// URL is required, e.g. https://api.openai.com/v1.")
    url = base_url.strip()
    if len(url) > BASE_URL_MAX_LENGTH or any(c.isspace() or not c.isprintable() for c in url):
        raise refuse("Not a valid URL.")
    parts = urlsplit(url)
    try:
        port_valid = parts.port is None or parts.port > 0
    except ValueError:
        port_valid = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_valid:
        raise refuse("Only http:// and https:// URLs with a host are allowed, e.g. https://api.openai.com/v1.")
    if parts.username is not None or parts.password is not None:
        raise refuse("No credentials in the URL: staff see it. Give the key as `api_key`, which is stored encrypted.")
    if parts.query or parts.fragment:
        raise refuse("No query or fragment: paths such as /chat/completions are appended to it.")
    return url.rstrip("/")


def upstream_key_clean(api_key: Any) -> str:
    """The key without surrounding white space ("" for an upstream that takes none); printable ASCII only,
    since it travels in an HTTP header. The refusal never quotes the key."""
    if not isinstance(api_key, str):
        raise InvalidRequest("`api_key` must be a string.", details={"api_key": ["Not a valid string."]})
    key = api_key.strip()
    if len(key) > API_KEY_MAX_LENGTH or any(not ("!" <= c <= "~") for c in key):
        message = f"At most {API_KEY_MAX_LENGTH} printable ASCII characters without spaces."
        raise InvalidRequest(f"`api_key`: {message}", details={"api_key": [message]})
    return key


def model_name_clean(name: Any, *, field: str) -> str:
    """A model name as customers or upstreams spell it (`gpt-4o-mini`, `meta-llama/Llama-3-70b`): 1 to 120
    printable characters, no white space."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > NAME_MAX_LENGTH
        or any(c.isspace() or not c.isprintable() for c in name)
    ):
        message = f"1 to {NAME_MAX_LENGTH} printable characters without spaces."
        raise InvalidRequest(f"`{field}`: {message}", details={field: [message]})
    return name


def route_service_check(service: Service) -> None:
    """A route's service must price what the gateway can measure."""
    if service.calc_method not in GATEWAY_CALC_METHODS:
        message = (
            f"A {service.calc_method} service cannot price gateway calls: choose a "
            f"{', '.join(GATEWAY_CALC_METHODS[:-1])} or {GATEWAY_CALC_METHODS[-1]} service."
        )
        raise InvalidRequest(message, details={"service": [message]})


def _full_clean(instance: models.Model, *, exclude: Sequence[str] = ()) -> None:
    """The model's own validation (ranges, choices, uniqueness) as InvalidRequest with per-field details."""
    try:
        instance.full_clean(exclude=list(exclude))
    except ValidationError as error:
        details = error.message_dict
        raise InvalidRequest("The request is invalid; see details.", details=details) from error


def _finite_check(values: dict[str, Any]) -> None:
    """Range validators let NaN through (every comparison with it is false): refuse it first."""
    bad = {
        name: ["A finite number is required."]
        for name, value in values.items()
        if isinstance(value, float) and not math.isfinite(value)
    }
    if bad:
        raise InvalidRequest("The request is invalid; see details.", details=bad)


def _audit(*, staff_id: int | None, instance: models.Model, action: int, fields: Sequence[str] = ()) -> None:
    """One back-office history line (Django admin's LogEntry) naming what changed, never a value."""
    if staff_id is None:
        return
    if action == ADDITION:
        message: list[dict[str, Any]] = [{"added": {}}]
    else:
        labels = [
            _LABELS.get(name) or capfirst(str(getattr(instance._meta.get_field(name), "verbose_name", name))) for name in fields
        ]
        message = [{"changed": {"fields": labels}}]
    LogEntry.objects.log_actions(staff_id, [instance], action, message, single_object=True)


def _name_taken(*, field: str, what: str) -> InvalidRequest:
    """A unique name taken by a concurrent write between the check and the insert."""
    message = f"{what} with this {field.replace('_', ' ')} already exists."
    return InvalidRequest(message, details={field: [message]})


# --- Upstreams -------------------------------------------------------------------------------------------


class UpstreamChanges(TypedDict, total=False):
    name: str
    base_url: str
    api_key: str
    connect_timeout_seconds: float
    timeout_seconds: float
    idle_timeout_seconds: float
    max_concurrency: int
    sandbox: bool
    active: bool


_UPSTREAM_SETTINGS = (
    "connect_timeout_seconds",
    "timeout_seconds",
    "idle_timeout_seconds",
    "max_concurrency",
    "sandbox",
    "active",
)


def _upstream_save(upstream: Upstream) -> None:
    _full_clean(upstream, exclude=["base_url"])  # base_url_clean is the URL's check (URLField's wants a dotted host)
    try:
        with transaction.atomic():
            upstream.save()
    except IntegrityError as error:
        raise _name_taken(field="name", what="An upstream") from error


def upstream_create(
    *,
    name: str,
    base_url: str,
    api_key: str = "",
    connect_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
    idle_timeout_seconds: float | None = None,
    max_concurrency: int | None = None,
    sandbox: bool = False,
    active: bool = True,
    staff_id: int | None = None,
) -> Upstream:
    """A new upstream; its key (if any) is stored encrypted. InvalidRequest names each bad field, and
    nothing is written."""
    given = {
        "connect_timeout_seconds": connect_timeout_seconds,
        "timeout_seconds": timeout_seconds,
        "idle_timeout_seconds": idle_timeout_seconds,
        "max_concurrency": max_concurrency,
    }
    _finite_check(given)
    upstream = Upstream(name=name, base_url=base_url_clean(base_url), sandbox=sandbox, active=active)
    for field, value in given.items():
        if value is not None:
            setattr(upstream, field, value)
    key = upstream_key_clean(api_key)
    upstream.api_key_encrypted = upstream_key_encrypt(key) if key else ""
    with transaction.atomic():
        _upstream_save(upstream)
        _audit(staff_id=staff_id, instance=upstream, action=ADDITION)
    return upstream


def upstream_update(*, upstream: Upstream, staff_id: int | None = None, **changes: Unpack[UpstreamChanges]) -> Upstream:
    """Change the fields given (a PATCH); `api_key` replaces the stored key ("" removes it). Nothing is
    written when any field is refused."""
    _finite_check(dict(changes))
    changed: list[str] = []
    if "name" in changes and changes["name"] != upstream.name:
        upstream.name = changes["name"]
        changed.append("name")
    if "base_url" in changes:
        base_url = base_url_clean(changes["base_url"])
        if base_url != upstream.base_url:
            upstream.base_url = base_url
            changed.append("base_url")
    for field in _UPSTREAM_SETTINGS:
        if field in changes and changes[field] != getattr(upstream, field):  # type: ignore[literal-required]
            setattr(upstream, field, changes[field])  # type: ignore[literal-required]
            changed.append(field)
    if "api_key" in changes:
        key = upstream_key_clean(changes["api_key"])
        upstream.api_key_encrypted = upstream_key_encrypt(key) if key else ""
        changed.append("api_key")
    if changed:
        with transaction.atomic():
            _upstream_save(upstream)
            _audit(staff_id=staff_id, instance=upstream, action=CHANGE, fields=changed)
    return upstream


def upstream_key_set(*, upstream: Upstream, api_key: str, staff_id: int | None = None) -> Upstream:
    """Replace the upstream's key ("" removes it); stored encrypted, never shown again."""
    return upstream_update(upstream=upstream, staff_id=staff_id, api_key=api_key)


# --- Model routes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteUpstreamSpec:
    """One entry of a route's upstream list: the upstream's name and the model name it expects."""

    upstream: str
    upstream_model: str


class ModelRouteChanges(TypedDict, total=False):
    model: str
    service: str  # the service's slug
    upstreams: Sequence[RouteUpstreamSpec]
    on_disconnect: str
    default_max_tokens: int
    active: bool


def _service_for_route(slug: Any) -> Service:
    service = Service.objects.filter(slug=slug).first() if isinstance(slug, str) else None
    if service is None:
        raise InvalidRequest("`service`: no such service.", details={"service": ["No service with this slug."]})
    route_service_check(service)
    return service


def _route_links(upstreams: Sequence[RouteUpstreamSpec]) -> list[RouteUpstream]:
    """The route's upstream rows, positions in list order (not yet tied to a route). InvalidRequest,
    on `upstreams`, for an empty list, a name listed twice or an unknown upstream."""

    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest(f"`upstreams`: {message}", details={"upstreams": [message]})

    if not upstreams:
        raise refuse("List at least one upstream.")
    names = [spec.upstream for spec in upstreams]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise refuse(f"Each upstream may be listed once; listed twice: {', '.join(repeated)}.")
    found = {upstream.name: upstream for upstream in Upstream.objects.filter(name__in=names)}
    unknown = [name for name in names if name not in found]
    if unknown:
        raise refuse(f"No upstream named {', '.join(unknown)}.")
    return [
        RouteUpstream(
            upstream=found[spec.upstream],
            upstream_model=model_name_clean(spec.upstream_model, field="upstreams"),
            position=position,
        )
        for position, spec in enumerate(upstreams)
    ]


def _route_save(route: ModelRoute, links: list[RouteUpstream] | None) -> None:
    """Save the route and, when given, replace its upstream list, as one change every process sees."""
    _full_clean(route)
    try:
        with transaction.atomic(), GATEWAY_ROUTES.invalidating():
            route.save()
            if links is not None:
                RouteUpstream.objects.filter(route=route).delete()
                for link in links:
                    link.route = route
                RouteUpstream.objects.bulk_create(links)
    except IntegrityError as error:
        raise _name_taken(field="model", what="A model route") from error


def model_route_create(
    *,
    model: str,
    service: str,
    upstreams: Sequence[RouteUpstreamSpec],
    on_disconnect: str = OnDisconnect.DRAIN,
    default_max_tokens: int | None = None,
    active: bool = True,
    staff_id: int | None = None,
) -> ModelRoute:
    """A new public model name, priced by `service` (a slug), served by `upstreams` in that order."""
    route = ModelRoute(
        model=model_name_clean(model, field="model"),
        service=_service_for_route(service),
        on_disconnect=on_disconnect,
        active=active,
    )
    if default_max_tokens is not None:
        route.default_max_tokens = default_max_tokens
    links = _route_links(upstreams)
    with transaction.atomic():
        _route_save(route, links)
        _audit(staff_id=staff_id, instance=route, action=ADDITION)
    return route


def model_route_update(*, route: ModelRoute, staff_id: int | None = None, **changes: Unpack[ModelRouteChanges]) -> ModelRoute:
    """Change the fields given (a PATCH); `upstreams` replaces the whole list. Nothing is written when any
    field is refused."""
    changed: list[str] = []
    if "model" in changes and changes["model"] != route.model:
        route.model = model_name_clean(changes["model"], field="model")
        changed.append("model")
    if "service" in changes:
        service = _service_for_route(changes["service"])
        if service.pk != route.service_id:
            route.service = service
            changed.append("service")
    for field in ("on_disconnect", "default_max_tokens", "active"):
        if field in changes and changes[field] != getattr(route, field):
            setattr(route, field, changes[field])
            changed.append(field)
    links = None
    if "upstreams" in changes:
        links = _route_links(changes["upstreams"])
        current = [(link.upstream_id, link.upstream_model) for link in route.upstreams.order_by("position", "id")]
        if current != [(link.upstream.pk, link.upstream_model) for link in links]:
            changed.append("upstreams")
        else:
            links = None
    if changed:
        with transaction.atomic():
            _route_save(route, links)
            _audit(staff_id=staff_id, instance=route, action=CHANGE, fields=changed)
        if links is not None and hasattr(route, "_prefetched_objects_cache"):
            route._prefetched_objects_cache.pop("upstreams", None)  # the caller reads the new list
    return route


# --- API keys' allowed models ------------------------------------------------------------------------


def api_key_models_check(*, models: Sequence[str], **kwargs: Any) -> None:
    """Receiver of accounts' `api_key_models_check`: a key may name only models some route answers to
    (active or not, so a route paused for maintenance keeps its keys). InvalidRequest names the others."""
    unknown = model_names_unknown(names=models)
    if unknown:
        message = f"No model named {', '.join(unknown)}."
        raise InvalidRequest(f"`allowed_models`: {message}", details={"allowed_models": [message]})
