"""Metering one usage event: price it before the lock, then one debit (the hot path: one statement)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from billing_site import metrics
from billing_site.errors import DomainError, IdempotencyConflict
from billing_site.money import ZERO
from metering import selectors
from metering.models import Service, UsageRecord
from metering.services.events import PricedEvent, SpendCapExceeded, UsageEvent, event_price
from metering.services.positions import (
    Position,
    PositionKey,
    period_of,
    position_ensure,
    position_take,
    positions_seen,
)
from metering.services.usage_sql import (
    AlreadyRecorded,
    spend_cap_applies,
    usage_debit_in_one_statement,
    usage_debit_positional_in_one_statement,
    usage_insert,
)
from payments import ledger


@dataclass(frozen=True, slots=True)
class UsageOutcome:
    record: UsageRecord
    replayed: bool


def _replay(*, organization_id: int, test: bool, idempotency_key: str, request_hash: str) -> UsageOutcome | None:
    record = UsageRecord.objects.filter(organization_id=organization_id, test=test, idempotency_key=idempotency_key).first()
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise IdempotencyConflict()
    return UsageOutcome(record=record, replayed=True)


def usage_record(*, tenant: Tenant, event: UsageEvent) -> UsageOutcome:
    """Meter one event and debit its cost; see `_usage_record`. Counts outcomes and latency."""
    started = time.perf_counter()
    try:
        outcome = _usage_record(tenant=tenant, event=event)
    except DomainError as error:
        service = "unknown" if isinstance(error, selectors.ServiceNotFound) else event.service
        metrics.USAGE_EVENTS.labels(service, str(error.code)).inc()
        raise
    metrics.USAGE_EVENTS.labels(event.service, "replayed" if outcome.replayed else "created").inc()
    metrics.DEBIT_SECONDS.observe(time.perf_counter() - started)
    if not outcome.replayed and not outcome.record.test:
        metrics.amount_observed(metrics.REVENUE, currency=settings.CURRENCY, amount=outcome.record.cost)
    return outcome


def _usage_record(*, tenant: Tenant, event: UsageEvent) -> UsageOutcome:
    """Meter one event and debit its cost (docs/contract.md §2): exactly once per idempotency key and mode; a
    replay answers the first record; a different body under the same key is refused (409). Test keys
    record but move no money. Raises ServiceNotFound, PriceNotSet, InvalidRequest,
    InsufficientBalance, BudgetExceeded, SpendCapExceeded, IdempotencyConflict."""
    organization_id = tenant.organization.pk
    priced = event_price(event, organization_id=organization_id)
    try:
        if priced.positional and priced.units:
            record = _usage_record_positional(priced, tenant=tenant)
        elif not tenant.is_test and not spend_cap_applies(tenant) and priced.cost > ZERO:
            record = usage_debit_in_one_statement(priced, tenant=tenant, now=timezone.now())
        else:
            # Capped keys check their cap after the posting; test keys and free events move no money
            # (a free event still passes the overdraft rule: nothing starts past the limit).
            with transaction.atomic(durable=True):
                posting = None
                if not tenant.is_test:
                    posting = ledger.usage_charge(
                        organization_id=organization_id,
                        cost=priced.cost,
                        reference=f"usage:{event.idempotency_key}",
                        api_key_id=tenant.api_key_id,
                    )
                record = usage_insert(priced, tenant=tenant, now=timezone.now(), posting=posting)
    except (AlreadyRecorded, ledger.InsufficientBalance, ledger.BudgetExceeded, SpendCapExceeded):
        # A key that was already used answers its first result even if the wallet is now empty.
        replay = _replay(
            organization_id=organization_id,
            test=tenant.is_test,
            idempotency_key=event.idempotency_key,
            request_hash=priced.request_hash,
        )
        if replay is not None:
            return replay
        raise
    record.service = Service(pk=priced.service_id, slug=event.service, calc_method=priced.calc_method)
    return UsageOutcome(record=record, replayed=False)


# How often the hot path prices again at the position it saw before it settles for the locked path.
POSITION_GUESSES = 3


def _usage_record_positional(priced: PricedEvent, *, tenant: Tenant) -> UsageRecord:
    """A positional event (docs/pricing.md): on the hot path, priced at the position this process last
    saw and debited in one statement that checks it; when the position moved out of the range the cost
    holds for, priced again at the one the statement saw. Capped and test keys, and an event whose
    guesses keep missing or whose wallet refuses, take the locked path: lock the position, price,
    charge, advance."""
    now = timezone.now()
    key = PositionKey(tenant.organization.pk, priced.service_id, period_of(now), tenant.is_test)
    if not tenant.is_test and not spend_cap_applies(tenant):
        seen = positions_seen.get(key) or position_ensure(key)
        for guess in range(POSITION_GUESSES):
            priced = priced.at(position=seen.used, free_until=seen.free_until)
            try:
                outcome = usage_debit_positional_in_one_statement(priced, tenant=tenant, now=now, key=key)
            except ledger.GuardRefused:
                break
            if isinstance(outcome, UsageRecord):
                assert outcome.position is not None
                positions_seen.set(key, Position(outcome.position + priced.units, priced.free_until))
                metrics.POSITION_SETTLED.labels("retry" if guess else "first").inc()
                return outcome
            seen = outcome or position_ensure(key)
            positions_seen.set(key, seen)
    with transaction.atomic(durable=True):
        priced = position_take(priced, organization_id=key.organization_id, now=now, test=key.test)
        posting = None
        if not tenant.is_test:
            posting = ledger.usage_charge(
                organization_id=key.organization_id,
                cost=priced.cost,
                reference=f"usage:{priced.event.idempotency_key}",
                api_key_id=tenant.api_key_id,
            )
        record = usage_insert(priced, tenant=tenant, now=now, posting=posting)
    assert record.position is not None
    positions_seen.set(key, Position(record.position + priced.units, priced.free_until))
    metrics.POSITION_SETTLED.labels("locked").inc()
    return record
