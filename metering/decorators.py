"""Meter your own AI views: hold the worst-case cost before the view runs, capture the actual
usage after it, release the hold if the view fails.

    @metered("gpt-4o", estimate={"input_tokens": 8000, "output_tokens": 4096},
             test_response=lambda request: JsonResponse({"answer": "test", "usage": {...}}))
    def chat(request):
        ...
        return JsonResponse({"answer": text, "usage": {"input_tokens": 812, "output_tokens": 95}})

The rules that keep a caller from getting the view for free:
- `estimate` is the view's own worst case (a mapping, or a function of the request that the view's
  author writes), never maxima the client declares: the hold is what bounds an over-capture
  (docs/contract.md §2.4), so a client that could declare zeros could get the view for almost nothing. An
  estimate must cost something (a zero hold is refused).
- An `Idempotency-Key` header is namespaced by the caller (API key or user) and mode, and a key
  already used answers 409 `idempotency_conflict` naming the first call's hold and usage: the view
  never runs twice for one key.
- Test-mode API keys never run the view (it would be the real, paid service). With `test_response`,
  they get that answer instead, metered and recorded as test usage; without it, 403.

Without `actual`, the actual quantities are read from the view's JSON response, at the top level or
under "usage". Unaffordable → 402 and the view is never called.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from functools import wraps
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import ApiKeyAuthentication, JwtAuthentication
from accounts.models import ApiKey, User
from accounts.tenancy import Tenant, request_tenant, tenant_resolve
from billing_site.api.exceptions import json_error_response
from billing_site.api.limits import IDEMPOTENCY_HEADER
from billing_site.errors import DomainError, ErrorCode, IdempotencyConflict, PermissionRefused
from billing_site.money import money_str
from metering import selectors, services
from metering.calculators import CALCULATORS
from metering.models import Hold, HoldStatus

Quantities = Mapping[str, Any]
Estimate = Quantities | Callable[[Any], Quantities]
View = Callable[..., HttpResponseBase]

if TYPE_CHECKING:
    from rest_framework.views import APIView as _MixinBase
else:
    _MixinBase = object


def _json(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _actual_fields(calc_method: str, source: Mapping[str, Any]) -> dict[str, Any]:
    """The method's quantity fields found in the view's response (top level, else under "usage")."""
    usage = source.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    found = {name: source.get(name, usage.get(name)) for name in CALCULATORS[calc_method].fields}
    return {name: value for name, value in found.items() if value is not None}


def _authenticated_tenant(request: HttpRequest) -> Tenant:
    tenant: Tenant | None = getattr(request, "tenant", None)
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
        user=user if isinstance(user, User) else None,  # an API key's user is its ApiKeyPrincipal
        api_key=api_key,
        organization_slug=request.headers.get("X-Organization"),
    )


class _Unauthenticated(DomainError):
    code = ErrorCode.NOT_AUTHENTICATED
    message = "Authentication credentials were not provided."


class TestModeRefused(PermissionRefused):
    message = "This endpoint serves live API keys only: a test key would get the real (paid) service."


def _hold_key(request: HttpRequest, tenant: Tenant) -> str:
    """The hold's idempotency key: the client's `Idempotency-Key` namespaced by who calls (the mode
    rides on the hold's own `test` column), under the reserved prefix clients cannot use; a fresh
    key when the client sends none."""
    client_key = request.headers.get(IDEMPOTENCY_HEADER)
    if client_key is None:
        return f"{services.RESERVED_KEY_PREFIX}metered:{uuid.uuid4()}"
    digest = hashlib.sha256(services.validate_idempotency_key(client_key).encode()).hexdigest()
    if tenant.api_key is not None:
        principal = f"key:{tenant.api_key.pk}"
    else:
        assert tenant.user is not None  # a tenant without a key is a signed-in person's
        principal = f"user:{tenant.user.pk}"
    return f"{services.RESERVED_KEY_PREFIX}metered:{principal}:{digest}"


def _replay_refused(hold: Hold) -> IdempotencyConflict:
    details: dict[str, Any] = {"hold": hold.pk, "status": hold.status}
    record = selectors.usage_of_hold(hold_id=hold.pk) if hold.status == HoldStatus.CAPTURED else None
    if record is not None:
        details.update(usage_id=record.pk, cost=money_str(record.cost))
    return IdempotencyConflict(
        "This Idempotency-Key was already used for this call; a metered call never runs twice for one key.", details=details
    )


class MeteredCall:
    """The hold → call → capture / release protocol, shared by the decorator and the DRF mixin."""

    def __init__(
        self,
        service: str,
        *,
        estimate: Estimate,
        actual: Callable[[Any, Any], Quantities | None] | None,
        hold_seconds: int | None = None,
    ) -> None:
        if estimate is None:
            raise ImproperlyConfigured(
                f"metered({service!r}) needs an `estimate`: the view's worst case, never the client's own maxima."
            )
        self.service, self.estimate, self.actual, self.hold_seconds = service, estimate, actual, hold_seconds

    def reserve(self, request: HttpRequest, tenant: Tenant, *, serves_test_mode: bool) -> Hold:
        """Hold the worst case. Raises TestModeRefused, InsufficientBalance, or IdempotencyConflict
        for a key already used (the view must then not run)."""
        if tenant.is_test and not serves_test_mode:
            raise TestModeRefused()
        maxima = self.estimate(request) if callable(self.estimate) else self.estimate
        outcome = services.hold_create(
            tenant=tenant,
            service=self.service,
            idempotency_key=_hold_key(request, tenant),
            amount=None,
            maxima=maxima,
            expires_in=self.hold_seconds,
        )
        if outcome.replayed:
            raise _replay_refused(outcome.hold)
        return outcome.hold

    def settle(
        self, request: HttpRequest, response: HttpResponseBase, body: Mapping[str, Any], tenant: Tenant, hold: Hold
    ) -> None:
        """Capture the actual usage (a successful response) or release the hold (an error response).
        Whatever goes wrong on the way (a bad usage report, a bug in an `actual` hook) releases the
        hold before the error goes on, so no reservation outlives the request."""
        try:
            if response.status_code >= 400:
                services.hold_release(hold=hold)
                return
            actual = self.actual(request, response) if self.actual else None
            if actual is None:  # no hook, or a hook that defers to the response
                actual = _actual_fields(hold.service.calc_method, body)  # hold.service: the capture needs it too
            outcome = services.hold_capture(tenant=tenant, hold=hold, data=actual)
        except BaseException:
            self.release_unless_done(hold)
            raise
        assert outcome.record is not None  # a capture always answers its usage record
        response["X-Tollgate-Usage-Id"] = str(outcome.record.pk)
        response["X-Tollgate-Cost"] = money_str(outcome.record.cost)

    def release_unless_done(self, hold: Hold) -> None:
        if hold.status == HoldStatus.ACTIVE:
            services.hold_release(hold=hold)


def metered(
    service: str,
    *,
    estimate: Estimate,
    actual: Callable[[HttpRequest, HttpResponse], Quantities] | None = None,
    test_response: Callable[[HttpRequest], HttpResponse] | None = None,
    hold_seconds: int | None = None,
) -> Callable[[View], View]:
    """Decorate a Django view that serves an AI call so it is held, metered and charged. `estimate`
    is the view's worst case; `test_response` is what test-mode keys get instead of the view;
    `hold_seconds` must outlast the view's longest run (default HOLD_DEFAULT_TTL_SECONDS): a hold
    that expires before its capture leaves the call unbilled."""
    call = MeteredCall(service, estimate=estimate, actual=actual, hold_seconds=hold_seconds)

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                tenant = _authenticated_tenant(request)
                hold = call.reserve(request, tenant, serves_test_mode=test_response is not None)
            except DomainError as error:
                return json_error_response(error)
            serve = test_response if tenant.is_test else None
            try:
                response = serve(request) if serve is not None else view(request, *args, **kwargs)
            except BaseException:
                services.hold_release(hold=hold)
                raise
            try:
                call.settle(request, response, _json(getattr(response, "content", b"")), tenant, hold)
            except DomainError as error:
                call.release_unless_done(hold)
                return json_error_response(error)
            return response

        return wrapper

    return decorator


class _TestModeAnswer(Exception):
    """Carries the test response past the view's handler (DRF has no hook between initial and handler)."""

    def __init__(self, response: Response) -> None:
        self.response = response


class MeteredViewMixin(_MixinBase):
    """For DRF views: set `metered_service` and either `metered_max_quantities` (the worst case) or
    override `metered_estimate`; optionally `metered_actual`, and `metered_test_response` to serve
    test-mode keys (without it they get 403). Runs after authentication, tenant resolution and permissions."""

    metered_service: str
    metered_max_quantities: Quantities | None = None
    metered_hold_seconds: int | None = None  # must outlast the view's longest run
    _metered_hold: Hold | None  # between initial and finalize_response

    def metered_estimate(self, request: Request) -> Quantities:
        if self.metered_max_quantities is None:
            raise ImproperlyConfigured(f"{type(self).__name__} sets no metered_max_quantities and no metered_estimate.")
        return self.metered_max_quantities

    def metered_actual(self, request: Request, response: Response) -> Quantities | None:
        return None

    def metered_test_response(self, request: Request) -> Response | None:
        """What a test-mode key gets instead of the view (a Response), or None to refuse test keys."""
        return None

    def _metered_call(self) -> MeteredCall:
        overrides = type(self)
        actual = self.metered_actual if overrides.metered_actual is not MeteredViewMixin.metered_actual else None
        return MeteredCall(
            self.metered_service, estimate=self.metered_estimate, actual=actual, hold_seconds=self.metered_hold_seconds
        )

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        tenant = request_tenant(request)
        test_response = self.metered_test_response(request) if tenant.is_test else None
        self._metered_hold = self._metered_call().reserve(request, tenant, serves_test_mode=test_response is not None)
        if test_response is not None:
            raise _TestModeAnswer(test_response)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _TestModeAnswer):
            return exc.response
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        hold = getattr(self, "_metered_hold", None)
        if hold is not None:
            self._metered_hold = None
            body = response.data if isinstance(getattr(response, "data", None), dict) else {}
            call = self._metered_call()
            try:
                call.settle(request, response, body, request_tenant(request), hold)
            except DomainError as error:
                call.release_unless_done(hold)
                response = self.handle_exception(error)
        return super().finalize_response(request, response, *args, **kwargs)
