"""Meter your own AI views: hold the estimated cost before the view runs, capture the actual
usage after it, release the hold if the view fails.

    @metered("gpt-4o", estimate=lambda request: {"input_tokens": 2000, "output_tokens": 1000})
    def chat(request):
        ...
        return JsonResponse({"answer": text, "usage": {"input_tokens": 812, "output_tokens": 95}})

Without `estimate`, the method's quantity fields are read from the JSON request body (e.g.
`{"input_tokens": …, "output_tokens": <max>}`); without `actual`, from the JSON response body,
at the top level or under "usage". Unaffordable → 402 and the view is never called.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.authentication import ApiKeyAuthentication, JwtAuthentication
from accounts.models import ApiKey
from accounts.tenancy import Tenant, tenant_resolve
from billing_site.errors import DomainError, ErrorCode
from billing_site.money import money_str
from metering import selectors, services
from metering.calculators import CALCULATORS
from metering.models import Hold, HoldStatus, Service

Quantities = Mapping[str, Any]


def _json(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _fields_for(service: str, source: Mapping[str, Any]) -> dict[str, Any]:
    """The service method's quantity fields found in `source` (top level, else under "usage")."""
    calc_method = Service.objects.filter(slug=service, active=True).values_list("calc_method", flat=True).first()
    if calc_method is None:
        raise selectors.ServiceNotFound()
    usage = source.get("usage") if isinstance(source.get("usage"), dict) else {}
    found = {name: source.get(name, usage.get(name)) for name in CALCULATORS[calc_method].fields}
    return {name: value for name, value in found.items() if value is not None}


def _error(error: DomainError) -> JsonResponse:
    body = {"error": {"code": str(error.code), "message": error.message, "details": error.details}}
    return JsonResponse(body, status=error.status)


def _authenticated_tenant(request: HttpRequest) -> Tenant:
    tenant = getattr(request, "tenant", None)
    if tenant is not None:
        return tenant
    drf_request = Request(request, authenticators=[ApiKeyAuthentication(), JwtAuthentication()])
    try:
        user, auth = drf_request.user, drf_request.auth  # runs the authenticators
    except AuthenticationFailed as exc:
        raise _Unauthenticated(str(exc.detail)) from exc
    if user is None:
        raise _Unauthenticated()
    api_key = auth if isinstance(auth, ApiKey) else None
    return tenant_resolve(
        user=None if api_key else user, api_key=api_key, organization_slug=request.headers.get("X-Organization")
    )


class _Unauthenticated(DomainError):
    code = ErrorCode.NOT_AUTHENTICATED
    message = "Authentication credentials were not provided."


class MeteredCall:
    """The hold → call → capture / release protocol, shared by the decorator and the DRF mixin."""

    def __init__(
        self, service: str, *, estimate: Callable[[Any], Quantities] | None, actual: Callable[[Any, Any], Quantities] | None
    ):
        self.service, self.estimate, self.actual = service, estimate, actual

    def reserve(self, request, tenant: Tenant) -> Hold:
        body = _json(request.body) if hasattr(request, "body") else {}
        maxima = self.estimate(request) if self.estimate else _fields_for(self.service, body)
        key = request.headers.get("Idempotency-Key") or f"metered:{uuid.uuid4()}"
        return services.hold_create(tenant=tenant, service=self.service, idempotency_key=key, amount=None, maxima=maxima,
                                    expires_in=None).hold  # fmt: skip

    def settle(self, request, response, body: Mapping[str, Any], tenant: Tenant, hold: Hold) -> None:
        """Capture the actual usage (a successful response) or release the hold (an error response)."""
        if response.status_code >= 400:
            services.hold_release(hold=hold)
            return
        actual = self.actual(request, response) if self.actual else _fields_for(self.service, body)
        outcome = services.hold_capture(tenant=tenant, hold=hold, data=actual)
        response["X-Tollgate-Usage-Id"] = str(outcome.record.pk)
        response["X-Tollgate-Cost"] = money_str(outcome.record.cost)


def metered(service: str, *, estimate: Callable[[HttpRequest], Quantities] | None = None,
            actual: Callable[[HttpRequest, HttpResponse], Quantities] | None = None):  # fmt: skip
    """Decorate a Django view that serves an AI call so it is held, metered and charged."""
    call = MeteredCall(service, estimate=estimate, actual=actual)

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                tenant = _authenticated_tenant(request)
                hold = call.reserve(request, tenant)
            except DomainError as error:
                return _error(error)
            try:
                response = view(request, *args, **kwargs)
            except BaseException:
                services.hold_release(hold=hold)
                raise
            try:
                call.settle(request, response, _json(getattr(response, "content", b"")), tenant, hold)
            except DomainError as error:
                if hold.status == HoldStatus.ACTIVE:
                    services.hold_release(hold=hold)
                return _error(error)
            return response

        return wrapper

    return decorator


class MeteredViewMixin:
    """For DRF views: set `metered_service` (and optionally override `metered_estimate` /
    `metered_actual`). Runs after authentication, tenant resolution and permissions."""

    metered_service: str

    def metered_estimate(self, request) -> Quantities | None:
        return None

    def metered_actual(self, request, response) -> Quantities | None:
        return None

    def _metered_call(self) -> MeteredCall:
        overrides = type(self)
        estimate = self.metered_estimate if overrides.metered_estimate is not MeteredViewMixin.metered_estimate else None
        actual = self.metered_actual if overrides.metered_actual is not MeteredViewMixin.metered_actual else None
        return MeteredCall(self.metered_service, estimate=estimate, actual=actual)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self._metered_hold = self._metered_call().reserve(request, request.tenant)

    def finalize_response(self, request, response, *args, **kwargs):
        hold = getattr(self, "_metered_hold", None)
        if hold is not None:
            self._metered_hold = None
            body = response.data if isinstance(getattr(response, "data", None), dict) else {}
            try:
                self._metered_call().settle(request, response, body, request.tenant, hold)
            except DomainError as error:
                if hold.status == HoldStatus.ACTIVE:
                    services.hold_release(hold=hold)
                response = self.handle_exception(error)
        return super().finalize_response(request, response, *args, **kwargs)
