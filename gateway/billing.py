"""The gateway's money: who is calling, the worst-case hold before the upstream call, and the one capture
or release after it (docs/gateway.md, "Money"). Synchronous, run in a worker thread by the async views;
every rule is the metering app's (holds, prices, spend caps, test mode): nothing here moves money itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from accounts.authentication import ApiKeyRefused, api_key_for_secret
from accounts.models import ApiKey
from accounts.tenancy import Tenant
from billing_site.errors import DomainError, ErrorCode, NotFound
from billing_site.errors import InvalidRequest as MeteringInvalidRequest
from gateway import errors
from metering.models import Hold, UsageRecord
from metering.services import holds
from metering.services.events import RESERVED_KEY_PREFIX

_BEARER = "bearer "


def caller_authenticate(*, authorization: str | None) -> tuple[Tenant, ApiKey]:
    """The tenant and key of `Authorization: Bearer tg_…`; InvalidApiKey otherwise."""
    close_old_connections()  # this thread's connection may have outlived CONN_MAX_AGE or a database restart
    if not authorization or not authorization[: len(_BEARER)].lower() == _BEARER:
        raise errors.InvalidApiKey("Send your Tollgate API key as `Authorization: Bearer tg_…`.")
    try:
        api_key: ApiKey = api_key_for_secret(authorization[len(_BEARER) :].strip())
    except ApiKeyRefused as refused:
        raise errors.InvalidApiKey(str(refused)) from None
    return Tenant(organization=api_key.organization, user=None, api_key=api_key, role=None), api_key


def _domain_error(error: DomainError, *, param: str | None) -> errors.GatewayError:
    if error.code in (ErrorCode.INSUFFICIENT_BALANCE, ErrorCode.SPEND_CAP_EXCEEDED, ErrorCode.BUDGET_EXCEEDED):
        return errors.InsufficientBalance(error.message, code=str(error.code))
    if isinstance(error, NotFound):
        return errors.ModelNotFound("This model's service is not available.")
    if isinstance(error, MeteringInvalidRequest):
        return errors.InvalidRequest(error.message, param=param)
    return errors.GatewayError(error.message)


def call_hold(*, tenant: Tenant, service: str, request_id: str, maxima: Mapping[str, int], param: str | None) -> Hold:
    """Reserve the call's worst case at the price in force; 402 when the wallet (or the key's spend cap)
    cannot take it. A test key's hold moves nothing."""
    close_old_connections()
    try:
        outcome = holds.hold_create(
            tenant=tenant,
            service=service,
            idempotency_key=f"{RESERVED_KEY_PREFIX}gateway:{request_id}",
            amount=None,
            maxima=maxima,
            expires_in=int(settings.GATEWAY_HOLD_SECONDS),
        )
    except DomainError as error:
        raise _domain_error(error, param=param) from None
    return outcome.hold


def call_capture(*, tenant: Tenant, hold: Hold, quantities: Mapping[str, Any], metadata: dict[str, Any]) -> UsageRecord:
    """Charge what the call used (it may exceed the hold: the service was delivered) and free the hold."""
    close_old_connections()
    outcome = holds.hold_capture(tenant=tenant, hold=hold, data=quantities, metadata=metadata)
    assert outcome.record is not None
    return outcome.record


def call_release(*, hold: Hold) -> None:
    """Charge nothing and free the hold (the upstream failed before anything reached the client)."""
    close_old_connections()
    holds.hold_release(hold=hold)
