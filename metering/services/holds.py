"""Holds: reserve the worst case before a long or streamed call, then capture the actual usage or
release it (docs/contract.md §1 Hold, §2.4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from billing_site import locks
from billing_site.errors import DomainError, ErrorCode, IdempotencyConflict, InvalidRequest, NotFound
from billing_site.money import ZERO, money_round
from metering import selectors
from metering.calculators import measure
from metering.models import Hold, HoldStatus, UsageRecord
from metering.pricing import cost_bound
from metering.services.events import RESERVED_KEY_PREFIX, SpendCapExceeded, UsageEvent, event_price
from metering.services.positions import position_take
from metering.services.usage_sql import AlreadyRecorded, spend_cap_remaining, usage_insert
from payments import ledger


def hold_capture_key(hold_id: int) -> str:
    return f"{RESERVED_KEY_PREFIX}hold:{hold_id}"


class HoldNotActive(DomainError):
    code = ErrorCode.HOLD_NOT_ACTIVE
    message = "This hold is no longer active."


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    hold: Hold
    replayed: bool
    record: UsageRecord | None = None


def hold_create(
    *,
    tenant: Tenant,
    service: str,
    idempotency_key: str,
    amount: Decimal | None,
    maxima: Mapping[str, Any],
    expires_in: int | None,
) -> HoldOutcome:
    """Reserve `amount`, or the cost of `maxima` at the price in force, until it expires. Moves no
    money; `available` shrinks. InsufficientBalance when it does not fit."""
    organization_id = tenant.organization.pk
    priced = selectors.priced_service_get(slug=service, organization_id=organization_id)
    maxima_quantities = None
    if amount is None:
        maxima_quantities = measure(priced.calc_method, maxima)
        # The most the maxima can cost at any position this period (a tiered price's dearest tier).
        amount = cost_bound(priced.calc_method, maxima_quantities, priced.prices)
    elif maxima:
        raise InvalidRequest("Send `amount` or the method's maximum quantities, not both.")
    else:
        amount = money_round(amount)
    if amount <= ZERO:
        # The hold is what bounds an over-capture (docs/contract.md §2.4): a zero hold would let a wallet far below
        # its limit keep getting service.
        if maxima_quantities is None:
            raise InvalidRequest("A hold reserves a positive amount.", details={"amount": ["Must be greater than zero."]})
        raise InvalidRequest(
            "These maxima cost nothing at the price in force, and a hold reserves a positive amount.",
            details={field: ["The maxima must cost something."] for field in maxima},
        )
    ttl = timedelta(seconds=expires_in) if expires_in is not None else settings.HOLD_DEFAULT_TTL
    if not timedelta(seconds=1) <= ttl <= settings.HOLD_MAX_TTL:
        raise InvalidRequest(
            "`expires_in` is out of range.", details={"expires_in": [f"1..{int(settings.HOLD_MAX_TTL.total_seconds())} seconds."]}
        )
    request_hash = UsageEvent(
        service=service, idempotency_key=idempotency_key, data={"amount": str(amount), "expires_in": expires_in, **dict(maxima)}
    ).request_hash()
    now = timezone.now()
    hold = Hold(
        organization_id=organization_id,
        service_id=priced.service_id,
        api_key=tenant.api_key,
        user=tenant.user,
        amount=amount,
        maxima=maxima_quantities.as_dict() if maxima_quantities else {},
        test=tenant.is_test,
        status=HoldStatus.ACTIVE,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        expires_at=now + ttl,
        created_at=now,
    )
    same_key = Hold.objects.filter(organization_id=organization_id, test=tenant.is_test, idempotency_key=idempotency_key)
    existing = same_key.first()
    if existing is None:
        try:
            with transaction.atomic(durable=True):
                if not tenant.is_test:
                    # takes the budget spends' locks, then the wallet's
                    held = ledger.wallet_hold(
                        organization_id=organization_id, amount=amount, usage=True, api_key_id=tenant.api_key_id
                    )
                    hold.budget_spends = held.budget_spends
                    remaining = spend_cap_remaining(tenant=tenant)
                    if remaining is not None and amount > remaining:
                        # Refused before the call it guards runs: a capture past the cap is recorded in full.
                        raise SpendCapExceeded(details={"remaining": str(remaining)})
                hold.save()  # the unique (organization, idempotency key) refuses a concurrent twin
            return HoldOutcome(hold=hold, replayed=False)
        except IntegrityError:
            existing = same_key.first()
            if existing is None:
                raise
    if existing.request_hash != request_hash:
        raise IdempotencyConflict()
    return HoldOutcome(hold=existing, replayed=True)


def _hold_finish(*, hold: Hold, status: HoldStatus) -> None:
    """Mark the hold finished in the database; the caller sets `hold.status` once that commits."""
    Hold.objects.filter(pk=hold.pk).update(status=status, finished_at=timezone.now())


def hold_capture(*, tenant: Tenant, hold: Hold, data: Mapping[str, Any], metadata: dict[str, Any] | None = None) -> HoldOutcome:
    """Write the usage of the actual quantities at the price in force and free the hold, in one
    transaction. The actual cost may exceed the hold (docs/contract.md §2.4: the service was delivered).
    Capturing again answers the same outcome; capturing a released or expired hold is refused."""
    organization_id = tenant.organization.pk
    if hold.organization_id != organization_id or hold.test != tenant.is_test:
        raise NotFound("No such hold.")  # a test key never captures a live hold, nor the other way round
    event = UsageEvent(service=hold.service.slug, idempotency_key=hold_capture_key(hold.pk), data=data, metadata=metadata or {})
    if hold.status == HoldStatus.CAPTURED:
        return _capture_replay(hold, event)
    if hold.status != HoldStatus.ACTIVE:
        raise HoldNotActive()
    priced = event_price(event, organization_id=organization_id, include_inactive=True)  # delivered before any retirement
    try:
        with transaction.atomic(durable=True):
            # Lock order (billing_site/locks.py): the position (a positional price), the wallet, then the
            # hold; the hold is checked before its amount is freed, so a racing capture, release or
            # expiry of the same hold cannot free it twice.
            now = timezone.now()
            if priced.positional and priced.units:
                priced = position_take(priced, organization_id=organization_id, now=now, test=hold.test)
            if not hold.test:
                ledger.budget_spends_lock(spend_ids=hold.budget_spends)
                locks.wallet_lock(organization_id=organization_id)
            locked: Hold = locks.hold_lock(hold_id=hold.pk)
            if locked.status != HoldStatus.ACTIVE:
                raise AlreadyRecorded()
            posting = None
            if not hold.test:
                posting = ledger.usage_charge(
                    organization_id=organization_id,
                    cost=priced.cost,
                    reference=f"hold:{hold.pk}",
                    release_held=hold.amount,
                    may_overdraw=True,
                    budgeted=False,  # the hold counted against the budgets; this settles the difference
                )
                ledger.budget_spends_settle(spend_ids=hold.budget_spends, delta=priced.cost - hold.amount)
            capture_tenant = Tenant(organization=tenant.organization, user=hold.user, api_key=hold.api_key, role=None)
            record = usage_insert(priced, tenant=capture_tenant, now=now, posting=posting, hold_id=hold.pk, cap_enforced=False)
            _hold_finish(hold=hold, status=HoldStatus.CAPTURED)
        hold.status = HoldStatus.CAPTURED
    except AlreadyRecorded:
        hold.refresh_from_db()
        if hold.status == HoldStatus.CAPTURED:
            return _capture_replay(hold, event)
        raise HoldNotActive() from None
    record.service = hold.service
    return HoldOutcome(hold=hold, replayed=False, record=record)


def _capture_replay(hold: Hold, event: UsageEvent) -> HoldOutcome:
    record = UsageRecord.objects.select_related("service").get(
        organization_id=hold.organization_id, test=hold.test, idempotency_key=event.idempotency_key
    )
    if record.request_hash != event.request_hash():
        raise IdempotencyConflict("This hold was already captured with other quantities.")
    return HoldOutcome(hold=hold, replayed=True, record=record)


def hold_release(*, hold: Hold, status: HoldStatus = HoldStatus.RELEASED) -> HoldOutcome:
    """Free the hold (idempotent: releasing a released hold answers it again). A captured hold
    cannot be released."""
    if hold.status == status:
        return HoldOutcome(hold=hold, replayed=True)
    if hold.status != HoldStatus.ACTIVE:
        raise HoldNotActive()
    with transaction.atomic(durable=True):
        # Lock order: the budget spends, the wallet, then the hold (see hold_capture).
        if not hold.test:
            ledger.budget_spends_lock(spend_ids=hold.budget_spends)
            locks.wallet_lock(organization_id=hold.organization_id)
        locked: Hold = locks.hold_lock(hold_id=hold.pk)
        if locked.status != HoldStatus.ACTIVE:
            if locked.status == status:  # a concurrent twin released it first
                hold.status = locked.status
                return HoldOutcome(hold=hold, replayed=True)
            raise HoldNotActive()
        if not hold.test:
            ledger.wallet_release(organization_id=hold.organization_id, amount=hold.amount)
            ledger.budget_spends_settle(spend_ids=hold.budget_spends, delta=-hold.amount)
        _hold_finish(hold=hold, status=status)
    hold.status = status
    return HoldOutcome(hold=hold, replayed=False)


def holds_expire(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire active holds past their time (the beat task); answers how many were expired."""
    now = now or timezone.now()
    expired = 0
    for hold in Hold.objects.filter(status=HoldStatus.ACTIVE, expires_at__lte=now).order_by("expires_at")[:limit]:
        try:
            hold_release(hold=hold, status=HoldStatus.EXPIRED)
            expired += 1
        except HoldNotActive:
            continue  # captured or released meanwhile
    return expired
