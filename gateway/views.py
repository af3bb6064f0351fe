"""The OpenAI-compatible endpoints (docs/gateway.md). Async views: a call waiting on its upstream holds a
coroutine, not a worker. Each view admits the call (key, model, limits, hold), starts it, and answers once
its first byte is in: the whole answer, or a stream of the upstream's events."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from billing_site.cache import versions_scope
from gateway import billing, limits, metrics
from gateway.calls import Call, in_thread, release_when_written
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    LimitsUnavailable,
    MethodNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    RateLimited,
)
from gateway.selectors import RouteConfig, route_get, route_list_for_key
from gateway.shaping import CallPlan, Endpoint, call_plan
from gateway.simulate import SIMULATED_UPSTREAM


def _json_body(request: HttpRequest) -> dict[str, Any]:
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > settings.GATEWAY_MAX_BODY_BYTES:
        raise InvalidRequest(f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.")
    raw = request.read(settings.GATEWAY_MAX_BODY_BYTES + 1)
    if len(raw) > settings.GATEWAY_MAX_BODY_BYTES:
        raise InvalidRequest(f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _admit(*, authorization: str | None, body: dict[str, Any], endpoint: Endpoint) -> tuple[Any, RouteConfig, CallPlan]:
    """Who calls, which route, what the call may cost: everything before the limits and the hold."""
    with versions_scope():
        tenant, api_key = billing.caller_authenticate(authorization=authorization)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("`model` is required.", param="model")
        route = route_get(model=model)
    if route is None:
        raise ModelNotFound(f"The model `{model[:120]}` does not exist or is not served here.", param="model")
    allowed = api_key.allowed_models
    if allowed and model not in allowed:
        raise ModelNotAllowed(f"This API key may not use `{model}`.", param="model")
    plan = call_plan(
        endpoint=endpoint,
        body=body,
        model=model,
        calc_method=route.calc_method,
        default_max_tokens=route.default_max_tokens,
    )
    return tenant, route, plan


def _with_headers(response: HttpResponseBase, headers: dict[str, str]) -> HttpResponseBase:
    for name, value in headers.items():
        response[name] = value
    return response


def _refused(error: GatewayError, headers: dict[str, str]) -> HttpResponseBase:
    metrics.REFUSED.labels(error.code).inc()
    return _with_headers(error.response(), headers)


async def _serve(request: HttpRequest, endpoint: Endpoint) -> HttpResponseBase:
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    if request.method != "POST":
        return _refused(MethodNotAllowed(allowed="POST"), headers)
    reserved = 0
    call: Call | None = None
    try:
        body = _json_body(request)
        tenant, route, plan = await in_thread(_admit)(
            authorization=request.headers.get("Authorization"), body=body, endpoint=endpoint
        )
        assert tenant.api_key is not None
        api_key = tenant.api_key
        admission = await limits.key_admit(
            key_id=api_key.pk, rpm_limit=api_key.rpm_limit, tpm_limit=api_key.tpm_limit, tokens=plan.worst_tokens
        )
        headers.update(limits.ratelimit_headers(admission))
        if not admission.allowed and admission.retry_after is None:
            # Waiting would not help: no Retry-After (docs/gateway-resilience.md).
            raise RateLimited(
                f"This request's worst case ({plan.worst_tokens} tokens) exceeds this API key's tokens-per-minute "
                f"limit ({api_key.tpm_limit}); lower `max_tokens` or the prompt.",
                param="max_tokens",
            )
        if not admission.allowed:
            raise RateLimited(headers={"Retry-After": str(admission.retry_after)})
        reserved = plan.worst_tokens
        stream_slot = False
        if plan.stream and api_key.max_concurrent_streams is not None:
            stream_slot = await limits.stream_acquire(
                key_id=api_key.pk,
                limit=api_key.max_concurrent_streams,
                stream_id=request_id,
                lease_seconds=settings.GATEWAY_LEASE_SECONDS,
            )
            if not stream_slot:
                raise RateLimited(
                    f"This API key already has {api_key.max_concurrent_streams} streams open.",
                    headers={"Retry-After": "1"},
                )
        # A live key is served by the route's paid upstreams; its sandbox ones only when it has nothing else (the demo).
        upstreams = tuple(u for u in route.upstreams if not u.sandbox) or route.upstreams
        if tenant.is_test:
            # A test key reaches only the route's sandbox upstreams, or the simulated one: never a paid model.
            upstreams = tuple(u for u in route.upstreams if u.sandbox) or (SIMULATED_UPSTREAM,)
        writing = asyncio.ensure_future(
            in_thread(billing.call_hold)(
                tenant=tenant,
                service=route.service_slug,
                request_id=request_id,
                maxima=plan.maxima,
                param="max_tokens" if plan.worst_output_tokens else None,
            )
        )
        try:
            hold = await asyncio.shield(writing)
        except BaseException as error:
            if stream_slot:
                await limits.stream_release(key_id=api_key.pk, stream_id=request_id)
            if isinstance(error, asyncio.CancelledError):
                # The client left while the hold was being written: its thread writes it all the same.
                release_when_written(writing, api_key=api_key, reserved=reserved)
            raise
        call = Call(
            request_id=request_id,
            tenant=tenant,
            route=route,
            plan=plan,
            hold=hold,
            upstreams=upstreams,
            stream_slot=stream_slot,
        )
    except limits.LimitsUnavailable:
        return _refused(LimitsUnavailable(), headers)
    except GatewayError as error:
        if reserved:
            await limits.key_tokens_settle(key_id=api_key.pk, tpm_limit=api_key.tpm_limit, reserved=reserved, actual=0)
        return _refused(error, headers)
    call.start()
    try:
        failure = await call.ready
    except BaseException:
        call.client_left()  # the client went away before the first byte
        raise
    if failure is not None:
        return _with_headers(failure.response(), headers)
    if not plan.stream:
        assert call.answer is not None
        return _with_headers(HttpResponse(call.answer, content_type="application/json"), headers)
    response = StreamingHttpResponse(call.client_events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold events back
    return _with_headers(response, headers)


async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _serve(request, Endpoint.CHAT)


async def completions(request: HttpRequest) -> HttpResponseBase:
    return await _serve(request, Endpoint.COMPLETIONS)


async def embeddings(request: HttpRequest) -> HttpResponseBase:
    return await _serve(request, Endpoint.EMBEDDINGS)


async def images_generations(request: HttpRequest) -> HttpResponseBase:
    return await _serve(request, Endpoint.IMAGES)


def _model_list(*, authorization: str | None) -> list[dict[str, Any]]:
    with versions_scope():
        _, api_key = billing.caller_authenticate(authorization=authorization)
        routes = route_list_for_key(allowed_models=list(api_key.allowed_models))
    return [{"id": route.model, "object": "model", "created": route.created, "owned_by": "tollgate"} for route in routes]


async def models(request: HttpRequest) -> HttpResponseBase:
    """The models this key may use."""
    headers = {"x-request-id": uuid.uuid4().hex}
    if request.method != "GET":
        return _refused(MethodNotAllowed(allowed="GET"), headers)
    try:
        data = await in_thread(_model_list)(authorization=request.headers.get("Authorization"))
    except GatewayError as error:
        return _refused(error, headers)
    body = json.dumps({"object": "list", "data": data})
    return _with_headers(HttpResponse(body, content_type="application/json"), headers)


async def not_found(request: HttpRequest, path: str = "") -> HttpResponseBase:
    error = ModelNotFound(f"Unknown endpoint /v1/{path[:100]}.", code="unknown_endpoint")
    return _refused(error, {"x-request-id": uuid.uuid4().hex})
