"""Metering many usage events in one request: each priced and checked for replay before the
lock, then all applied in order under one wallet lock, as if they came one by one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from billing_site import locks, metrics
from billing_site.errors import DomainError, IdempotencyConflict
from billing_site.money import ZERO
from metering import selectors
from metering.models import Service, UsageRecord
from metering.services.events import PricedEvent, SpendCapExceeded, UsageEvent, event_price
from metering.services.positions import Position, PositionKey, period_of, position_advance, position_lock
from metering.services.usage_sql import BatchRecord, spend_cap_applies, spend_cap_remaining, usage_insert_batch
from payments import ledger


@dataclass(slots=True)
class BatchResult:
    status: int
    record: UsageRecord | BatchRecord | None = None
    error: DomainError | None = None


def usage_record_batch(*, tenant: Tenant, events: Sequence[UsageEvent | DomainError]) -> list[BatchResult]:
    """Apply up to USAGE_BATCH_MAX_EVENTS events in order under one wallet lock, each with its own
    idempotency key and outcome (201 new, 200 replay, 4xx refused) — as if sent one by one.
    Everything per event (pricing, replay detection, the rows to insert) is prepared before the
    lock; under it run two ledger statements (the lock, and one usage transfer for everything charged)
    and three of ours, whatever the batch size. Test keys take no lock and move no money."""
    organization_id = tenant.organization.pk
    is_test = tenant.is_test
    results: list[BatchResult | None] = [None] * len(events)
    priced_events: list[tuple[int, PricedEvent]] = []
    services: dict[str, selectors.PricedService | DomainError] = {}
    for index, event in enumerate(events):
        if isinstance(event, DomainError):
            results[index] = BatchResult(status=event.status, error=event)
            continue
        try:
            priced_events.append((index, event_price(event, organization_id=organization_id, services=services)))
        except DomainError as error:
            results[index] = BatchResult(status=error.status, error=error)

    existing = {
        record.idempotency_key: record
        for record in UsageRecord.objects.filter(
            organization_id=organization_id, test=is_test, idempotency_key__in=[p.event.idempotency_key for _, p in priced_events]
        ).select_related("service")
    }
    fresh: list[tuple[int, PricedEvent]] = []
    duplicates: list[tuple[int, PricedEvent]] = []  # a key seen earlier in this same batch
    seen: dict[str, PricedEvent] = {}
    for index, priced in priced_events:
        key = priced.event.idempotency_key
        first = existing.get(key) or seen.get(key)
        if first is None:
            seen[key] = priced
            fresh.append((index, priced))
        elif first.request_hash != priced.request_hash:
            results[index] = BatchResult(status=409, error=IdempotencyConflict())
        elif isinstance(first, UsageRecord):
            results[index] = BatchResult(status=200, record=first)
        else:
            duplicates.append((index, priced))

    now = timezone.now()
    postings: list[ledger.Posting | ledger.Refusal | None]
    with transaction.atomic(durable=True):
        # Positions before the wallet (billing_site/locks.py); positional events are priced in order under them.
        pricer = _PositionalPricer.lock([priced for _, priced in fresh], organization_id=organization_id, now=now, test=is_test)
        if is_test:
            pricer.begin()
            for index in range(len(fresh)):
                pricer.cost(index)
                pricer.charged(index)
            postings = [None] * len(fresh)
        else:
            # The budgets' spends before the wallet (billing_site/locks.py); a capped key's remaining cap
            # is read under the wallet's lock, so that lock is taken first then.
            spends = ledger.budget_spends_take(organization_id=organization_id, api_key_id=tenant.api_key_id, now=now)
            locked = locks.wallet_lock(organization_id=organization_id, now=now) if spend_cap_applies(tenant) else None
            budget = spend_cap_remaining(tenant=tenant) if locked else None
            postings = list(
                ledger.usage_charge_batch(
                    organization_id=organization_id,
                    costs=[p.cost for _, p in fresh],
                    reference=f"usage:batch:{fresh[0][1].event.idempotency_key}" if fresh else "usage:batch",
                    budget=budget,
                    locked=locked,
                    pricer=pricer if pricer.positional else None,
                    period_budget=spends.headroom,
                    now=now,
                )
            )
            moved = sum((p.amount for p in postings if isinstance(p, ledger.Posting)), ZERO)  # negative: debits
            ledger.budget_spends_settle(spend_ids=spends.spend_ids, delta=-moved)
        fresh = [(index, pricer.priced[n]) for n, (index, _) in enumerate(fresh)]
        pricer.advance()
        accepted = [
            (priced, posting)
            for (_, priced), posting in zip(fresh, postings, strict=True)
            if not isinstance(posting, ledger.Refusal)
        ]
        ids = usage_insert_batch(accepted, tenant=tenant, now=now)

    service_of: dict[int, Service] = {}
    for _, p in fresh:
        if p.service_id not in service_of:
            service_of[p.service_id] = Service(pk=p.service_id, slug=p.event.service, calc_method=p.calc_method)
    written: dict[str, BatchRecord] = {}
    for (index, priced), posting in zip(fresh, postings, strict=True):
        if posting == ledger.Refusal.BALANCE:
            results[index] = BatchResult(status=402, error=ledger.InsufficientBalance())
        elif posting == ledger.Refusal.BUDGET:
            results[index] = BatchResult(status=402, error=SpendCapExceeded())
        elif posting == ledger.Refusal.PERIOD_BUDGET:
            results[index] = BatchResult(status=402, error=ledger.BudgetExceeded())
        else:
            q, prices, key = priced.quantities, priced.prices, priced.event.idempotency_key
            written[key] = BatchRecord(
                pk=ids[key],
                service=service_of[priced.service_id],
                quantity=q.quantity,
                input_tokens=q.input_tokens,
                output_tokens=q.output_tokens,
                cached_input_tokens=q.cached_input_tokens,
                input_price=prices.get("input_price"),
                output_price=prices.get("output_price"),
                cached_input_price=prices.get("cached_input_price"),
                unit_price=prices.get("unit_price"),
                cost=priced.cost,
                balance_after=posting.balance_after if isinstance(posting, ledger.Posting) else None,
                test=is_test,
                idempotency_key=key,
                request_hash=priced.request_hash,
                metadata=priced.event.metadata,
                created_at=now,
                position=priced.position if priced.positional and priced.units else None,
                pricing=priced.pricing,
            )
            results[index] = BatchResult(status=201, record=written[key])
    for index, priced in duplicates:
        # Replays what its first occurrence in this batch wrote (or was refused).
        earlier = written.get(priced.event.idempotency_key)
        results[index] = (
            BatchResult(status=200, record=earlier) if earlier else BatchResult(status=402, error=ledger.InsufficientBalance())
        )
    _count_batch(results, tenant=tenant)
    return results  # type: ignore[return-value]


class _PositionalPricer:
    """The batch's events priced in order: a positional one at its service's running position, which
    moves on only for the events charged (ledger.BatchPricer). `priced` holds each event as last priced."""

    def __init__(self, events: list[PricedEvent], start: dict[PositionKey, Position], keys: list[PositionKey | None]) -> None:
        self.events = events
        self.priced = list(events)
        self.start = start
        self.keys = keys
        self.running: dict[PositionKey, int] = {}
        self.positional = bool(start)

    @classmethod
    def lock(cls, events: list[PricedEvent], *, organization_id: int, now: datetime, test: bool) -> _PositionalPricer:
        period = period_of(now)
        keys: list[PositionKey | None] = [
            PositionKey(organization_id, priced.service_id, period, test) if priced.positional and priced.units else None
            for priced in events
        ]
        # Ascending service id, so two batches lock their positions in the same order.
        start = {key: position_lock(key) for key in sorted({k for k in keys if k}, key=lambda k: k.service_id)}
        return cls(events, start, keys)

    def begin(self) -> None:
        self.running = {key: position.used for key, position in self.start.items()}

    def cost(self, index: int) -> Decimal:
        key = self.keys[index]
        if key is not None:
            self.priced[index] = self.events[index].at(position=self.running[key], free_until=self.start[key].free_until)
        return self.priced[index].cost

    def charged(self, index: int) -> None:
        key = self.keys[index]
        if key is not None:
            self.running[key] += self.events[index].units

    def advance(self) -> None:
        """Move each locked position on by the units charged at it."""
        for key, position in self.start.items():
            position_advance(key, units=self.running[key] - position.used)


def _count_batch(results: Sequence[BatchResult | None], *, tenant: Tenant) -> None:
    outcomes: dict[tuple[str, str], int] = {}
    revenue = ZERO
    for result in results:
        assert result is not None
        if result.record is not None:
            key = (result.record.service.slug, "created" if result.status == 201 else "replayed")
            if result.status == 201 and not tenant.is_test:
                revenue += result.record.cost
        else:
            assert result.error is not None
            key = ("unknown" if isinstance(result.error, selectors.ServiceNotFound) else "batch", str(result.error.code))
        outcomes[key] = outcomes.get(key, 0) + 1
    for (service, outcome), count in outcomes.items():
        metrics.USAGE_EVENTS.labels(service, outcome).inc(count)
    if revenue:
        metrics.amount_observed(metrics.REVENUE, currency=settings.CURRENCY, amount=revenue)
