"""Writes for metering: usage events (single and batch), holds, services and prices.

The hot path (`usage_record`) does everything it can before the wallet lock: authentication has
run, the service and price are read, the quantities measured and the cost computed. Then one
short transaction: the ledger posting (which takes the wallet's row lock) and one statement that
writes the usage record, its daily rollup and the key's spend; commit.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from billing_site import metrics
from billing_site.api.limits import idempotency_key_validate, json_depth
from billing_site.errors import DomainError, ErrorCode, IdempotencyConflict, InvalidRequest, NotFound
from billing_site.money import ZERO, money_round
from metering import selectors
from metering.calculators import Quantities, measure
from metering.models import Hold, HoldStatus, Price, Service, UsageRecord
from metering.pricing import price_fields, strategy_for
from payments import ledger

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 8
RESERVED_KEY_PREFIX = "tollgate:"  # usage Tollgate records itself (hold captures) lives under it


def hold_capture_key(hold_id: int) -> str:
    return f"{RESERVED_KEY_PREFIX}hold:{hold_id}"


class SpendCapExceeded(DomainError):
    code = ErrorCode.SPEND_CAP_EXCEEDED
    message = "This API key has reached its spend cap."


class HoldNotActive(DomainError):
    code = ErrorCode.HOLD_NOT_ACTIVE
    message = "This hold is no longer active."


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One metering request as the client sent it."""

    service: str
    idempotency_key: str
    data: Mapping[str, Any]  # the method's quantity fields, as sent
    metadata: dict[str, Any] = field(default_factory=dict)

    def request_hash(self) -> str:
        canonical = {"service": self.service, "metadata": self.metadata, **{k: v for k, v in self.data.items() if v is not None}}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class UsageOutcome:
    record: UsageRecord
    replayed: bool


@dataclass(frozen=True, slots=True)
class _PricedEvent:
    event: UsageEvent
    service_id: int
    calc_method: str
    quantities: Quantities
    prices: dict[str, Decimal | None]
    cost: Decimal
    request_hash: str


def validate_idempotency_key(key: Any) -> str:
    """A client's key for a usage event or hold (see `idempotency_key_validate`), outside the prefix
    Tollgate keeps for the usage it records itself."""
    key = idempotency_key_validate(key)
    if key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidRequest(f"Idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved.",
                             details={"idempotency_key": ["Reserved prefix."]})  # fmt: skip
    return key


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def validate_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("`metadata` must be an object.", details={"metadata": ["Must be an object."]})
    if json_depth(metadata) > MAX_METADATA_DEPTH:
        raise InvalidRequest("`metadata` is nested too deeply.", details={"metadata": [f"At most {MAX_METADATA_DEPTH} levels."]})
    if _has_nul(metadata):  # PostgreSQL's jsonb cannot store NUL characters
        raise InvalidRequest("`metadata` contains a NUL character.", details={"metadata": ["NUL characters are not allowed."]})
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest("`metadata` is too large.", details={"metadata": [f"At most {MAX_METADATA_BYTES} bytes of JSON."]})
    return metadata


def _price(
    event: UsageEvent, *, organization_id: int, services: dict | None = None, include_inactive: bool = False
) -> _PricedEvent:
    """Everything that can happen before the lock: service, price in force, quantities, cost.
    `services` memoizes the service lookups of a batch (slug → PricedService or its error)."""
    services = {} if services is None else services
    priced = services.get(event.service)
    if priced is None:
        try:
            priced = selectors.priced_service_get(
                slug=event.service, organization_id=organization_id, include_inactive=include_inactive
            )
        except DomainError as error:
            priced = error
        services[event.service] = priced
    if isinstance(priced, DomainError):
        raise priced
    quantities = measure(priced.calc_method, event.data)
    cost = strategy_for(priced.calc_method).cost(priced.calc_method, quantities, priced.prices)
    prices = {name: getattr(priced.prices, name) for name in price_fields(priced.calc_method)}
    return _PricedEvent(event, priced.service_id, priced.calc_method, quantities, prices, cost, event.request_hash())


_USAGE_COLUMNS = """organization_id, service_id, api_key_id, user_id, quantity, input_tokens, output_tokens,
        input_price, output_price, unit_price, cost, test, idempotency_key, request_hash, metadata,
        transfer_id, balance_after, hold_id, created_at"""
_USAGE_VALUES = """%(org)s, %(service)s, %(key)s, %(user)s, %(quantity)s, %(input_tokens)s, %(output_tokens)s,
            %(input_price)s, %(output_price)s, %(unit_price)s, %(cost)s, %(test)s, %(idem)s, %(hash)s, %(metadata)s"""
# The record's daily rollup and the key's spend, after a CTE `rec` that inserted the record.
_ROLLUP_AND_SPEND = """roll AS (
    INSERT INTO metering_usagerollup AS r
           (organization_id, service_id, day, test, events, quantity, input_tokens, output_tokens, cost)
    SELECT %(org)s, %(service)s, %(day)s, %(test)s, 1, %(quantity)s, %(input_tokens_sum)s, %(output_tokens_sum)s, %(cost)s
      FROM rec
    ON CONFLICT (organization_id, day, service_id, test) DO UPDATE
       SET events = r.events + 1, quantity = r.quantity + EXCLUDED.quantity,
           input_tokens = r.input_tokens + EXCLUDED.input_tokens,
           output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost
), spend AS (
    UPDATE accounts_apikey SET spent = spent + %(cost)s
     WHERE id = %(key)s AND NOT %(test)s AND EXISTS (SELECT 1 FROM rec)
    RETURNING spent, spend_cap
)"""

# In a transaction after a separate posting (holds, capped keys, test keys, zero costs): the
# record unless its idempotency key exists, its rollup and the key's spend.
_INSERT_USAGE_SQL = f"""
WITH rec AS (
    INSERT INTO metering_usagerecord ({_USAGE_COLUMNS})
    VALUES ({_USAGE_VALUES}, %(transfer)s, %(balance_after)s, %(hold)s, %(now)s)
    ON CONFLICT (organization_id, test, idempotency_key) DO NOTHING
    RETURNING id
), {_ROLLUP_AND_SPEND}
SELECT rec.id, spend.spent, spend.spend_cap FROM rec LEFT JOIN spend ON true
"""

# The hot path: the ledger's posting and the record, rollup and spend as ONE autocommit statement.
# A reused idempotency key violates the unique index and rolls the money back with it.
_DEBIT_SQL = ledger.post_statement(f"""rec AS (
    INSERT INTO metering_usagerecord ({_USAGE_COLUMNS})
    SELECT {_USAGE_VALUES}, t.id, w.balance, NULL, %(now)s FROM t, w
    RETURNING id
), {_ROLLUP_AND_SPEND}, companion AS (SELECT id FROM rec)""")
IDEMPOTENCY_CONSTRAINT = "usage_idempotency_key_per_org_mode"


class _AlreadyRecorded(Exception):
    """The idempotency key exists: roll back whatever this attempt moved, then replay."""


def _usage_params(priced: _PricedEvent, *, tenant: Tenant, now: datetime) -> dict[str, Any]:
    quantities = priced.quantities
    return {
        "org": tenant.organization.pk,
        "service": priced.service_id,
        "key": tenant.api_key.pk if tenant.api_key else None,
        "user": tenant.user.pk if tenant.user else None,
        "quantity": quantities.quantity,
        "input_tokens": quantities.input_tokens,
        "output_tokens": quantities.output_tokens,
        "input_tokens_sum": quantities.input_tokens or 0,
        "output_tokens_sum": quantities.output_tokens or 0,
        "input_price": priced.prices.get("input_price"),
        "output_price": priced.prices.get("output_price"),
        "unit_price": priced.prices.get("unit_price"),
        "cost": priced.cost,
        "test": tenant.is_test,
        "idem": priced.event.idempotency_key,
        "hash": priced.request_hash,
        "metadata": json.dumps(priced.event.metadata),
        "now": now,
        "day": now.date(),
    }


def _record(priced: _PricedEvent, params: dict[str, Any], *, record_id: int, posting: ledger.Posting | None,
            hold_id: int | None = None) -> UsageRecord:  # fmt: skip
    """The record as written, built from what we sent rather than read back."""
    quantities = priced.quantities
    return UsageRecord(
        pk=record_id,
        organization_id=params["org"],
        service_id=priced.service_id,
        api_key_id=params["key"],
        user_id=params["user"],
        quantity=quantities.quantity,
        input_tokens=quantities.input_tokens,
        output_tokens=quantities.output_tokens,
        input_price=params["input_price"],
        output_price=params["output_price"],
        unit_price=params["unit_price"],
        cost=priced.cost,
        test=params["test"],
        idempotency_key=priced.event.idempotency_key,
        request_hash=priced.request_hash,
        metadata=priced.event.metadata,
        transfer_id=posting.transfer_id if posting else None,
        balance_after=posting.balance_after if posting else None,
        hold_id=hold_id,
        created_at=params["now"],
    )


def _insert_usage(priced: _PricedEvent, *, tenant: Tenant, now: datetime, posting: ledger.Posting | None,
                  hold_id: int | None = None) -> UsageRecord:  # fmt: skip
    """Write the record after its posting, inside the caller's transaction."""
    params = _usage_params(priced, tenant=tenant, now=now)
    params.update(transfer=posting.transfer_id if posting else None, balance_after=posting.balance_after if posting else None,
                  hold=hold_id)  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_USAGE_SQL, params)
        row = cursor.fetchone()
    if row is None:
        raise _AlreadyRecorded()
    record_id, spent, spend_cap = row
    if spend_cap is not None and spent > spend_cap:
        raise SpendCapExceeded(details={"spend_cap": str(spend_cap)})
    return _record(priced, params, record_id=record_id, posting=posting, hold_id=hold_id)


def _debit_in_one_statement(priced: _PricedEvent, *, tenant: Tenant) -> UsageRecord:
    """The hot path: one round trip that debits, records, rolls up and commits."""
    params = _usage_params(priced, tenant=tenant, now=timezone.now())
    try:
        posting, (record_id,) = ledger.usage_charge_in_one_statement(
            statement=_DEBIT_SQL, organization_id=params["org"], cost=priced.cost,
            reference=f"usage:{priced.event.idempotency_key}", params=params,
        )  # fmt: skip
    except IntegrityError as error:
        if getattr(getattr(error.__cause__, "diag", None), "constraint_name", None) == IDEMPOTENCY_CONSTRAINT:
            raise _AlreadyRecorded() from error
        raise
    return _record(priced, params, record_id=record_id, posting=posting)


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
    """Meter one event and debit its cost (SPEC §2): exactly once per idempotency key; a replay
    answers the first record; a different body under the same key is refused (409). Test keys
    record but move no money. Raises ServiceNotFound, PriceNotSet, InvalidRequest,
    InsufficientBalance, SpendCapExceeded, IdempotencyConflict."""
    organization_id = tenant.organization.pk
    priced = _price(event, organization_id=organization_id)
    capped = tenant.api_key is not None and tenant.api_key.spend_cap is not None
    try:
        if not tenant.is_test and not capped and priced.cost > ZERO:
            record = _debit_in_one_statement(priced, tenant=tenant)
        else:
            # Capped keys check their cap after the posting; test keys and free events move no money.
            with transaction.atomic(durable=True):
                posting = None
                if not tenant.is_test:
                    posting = ledger.usage_charge(organization_id=organization_id, cost=priced.cost,
                                                  reference=f"usage:{event.idempotency_key}")  # fmt: skip
                record = _insert_usage(priced, tenant=tenant, now=timezone.now(), posting=posting)
    except (_AlreadyRecorded, ledger.InsufficientBalance, SpendCapExceeded):
        # A key that was already used answers its first result even if the wallet is now empty.
        replay = _replay(organization_id=organization_id, test=tenant.is_test, idempotency_key=event.idempotency_key,
                         request_hash=priced.request_hash)  # fmt: skip
        if replay is not None:
            return replay
        raise
    record.service = Service(pk=priced.service_id, slug=event.service, calc_method=priced.calc_method)
    return UsageOutcome(record=record, replayed=False)


# --- Batches ------------------------------------------------------------------------------------


@dataclass(slots=True)
class BatchRecord:
    """A usage record a batch wrote, as rendered: built from what was sent, not read back, and much
    lighter than a model instance (a batch renders a thousand)."""

    pk: int
    service: Service
    quantity: int
    input_tokens: int | None
    output_tokens: int | None
    input_price: Decimal | None
    output_price: Decimal | None
    unit_price: Decimal | None
    cost: Decimal
    balance_after: Decimal | None
    test: bool
    idempotency_key: str
    request_hash: str
    metadata: dict
    created_at: datetime


@dataclass(slots=True)
class BatchResult:
    status: int
    record: UsageRecord | BatchRecord | None = None
    error: DomainError | None = None


_BATCH_COLUMNS = ("service", "quantity", "input_tokens", "output_tokens", "input_price", "output_price", "unit_price", "cost",
                  "idem", "hash", "metadata")  # fmt: skip


def _batch_row(priced: _PricedEvent) -> tuple:
    q, prices = priced.quantities, priced.prices
    return (priced.service_id, q.quantity, q.input_tokens, q.output_tokens, prices.get("input_price"), prices.get("output_price"),
            prices.get("unit_price"), priced.cost, priced.event.idempotency_key, priced.request_hash,
            json.dumps(priced.event.metadata))  # fmt: skip


def usage_record_batch(*, tenant: Tenant, events: Sequence[UsageEvent | DomainError]) -> list[BatchResult]:
    """Apply up to USAGE_BATCH_MAX_EVENTS events in order under one wallet lock, each with its own
    idempotency key and outcome (201 new, 200 replay, 4xx refused) — as if sent one by one.
    Everything per event (pricing, replay detection, the rows to insert) is prepared before the
    lock; under it run four ledger statements and three of ours, whatever the batch size."""
    organization_id = tenant.organization.pk
    is_test = tenant.is_test
    results: list[BatchResult | None] = [None] * len(events)
    priced_events: list[tuple[int, _PricedEvent]] = []
    services: dict[str, selectors.PricedService | DomainError] = {}
    for index, event in enumerate(events):
        if isinstance(event, DomainError):
            results[index] = BatchResult(status=event.status, error=event)
            continue
        try:
            priced_events.append((index, _price(event, organization_id=organization_id, services=services)))
        except DomainError as error:
            results[index] = BatchResult(status=error.status, error=error)

    existing = {
        record.idempotency_key: record
        for record in UsageRecord.objects.filter(
            organization_id=organization_id, test=is_test, idempotency_key__in=[p.event.idempotency_key for _, p in priced_events]
        ).select_related("service")
    }
    fresh: list[tuple[int, _PricedEvent]] = []
    duplicates: list[tuple[int, _PricedEvent]] = []  # a key seen earlier in this same batch
    seen: dict[str, _PricedEvent] = {}
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
    rows = [_batch_row(priced) for _, priced in fresh]
    charges = [(ZERO if is_test else p.cost, f"usage:{p.event.idempotency_key}") for _, p in fresh]

    now = timezone.now()
    with transaction.atomic(durable=True):
        postings = ledger.usage_charge_batch(
            organization_id=organization_id, charges=charges, budget=_spend_cap_remaining(tenant, organization_id=organization_id)
        )
        accepted = [(row, None if is_test else posting) for row, posting in zip(rows, postings, strict=True)
                    if not isinstance(posting, ledger.Refusal)]  # fmt: skip
        ids = _insert_usage_batch(accepted, tenant=tenant, now=now)

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
        else:
            q, prices, key = priced.quantities, priced.prices, priced.event.idempotency_key
            written[key] = BatchRecord(
                pk=ids[key], service=service_of[priced.service_id], quantity=q.quantity, input_tokens=q.input_tokens,
                output_tokens=q.output_tokens, input_price=prices.get("input_price"), output_price=prices.get("output_price"),
                unit_price=prices.get("unit_price"), cost=priced.cost, balance_after=None if is_test else posting.balance_after,
                test=is_test, idempotency_key=key, request_hash=priced.request_hash, metadata=priced.event.metadata, created_at=now,
            )  # fmt: skip
            results[index] = BatchResult(status=201, record=written[key])
    for index, priced in duplicates:
        # Replays what its first occurrence in this batch wrote (or was refused).
        first = written.get(priced.event.idempotency_key)
        results[index] = (
            BatchResult(status=200, record=first) if first else BatchResult(status=402, error=ledger.InsufficientBalance())
        )
    _count_batch(results, tenant=tenant)
    return results  # type: ignore[return-value]


def _spend_cap_remaining(tenant: Tenant, *, organization_id: int) -> Decimal | None:
    """What a capped live key may still spend, read under the wallet's lock: every debit of the
    organization (so of its keys) serializes on that lock, so `spent` cannot move meanwhile."""
    api_key = tenant.api_key
    if api_key is None or tenant.is_test or api_key.spend_cap is None:
        return None
    ledger.wallet_lock(organization_id=organization_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT spend_cap - spent FROM accounts_apikey WHERE id = %s", [api_key.pk])
        (remaining,) = cursor.fetchone()
    return remaining


def _count_batch(results: Sequence[BatchResult], *, tenant: Tenant) -> None:
    outcomes: dict[tuple[str, str], int] = {}
    revenue = ZERO
    for result in results:
        if result.record is not None:
            key = (result.record.service.slug, "created" if result.status == 201 else "replayed")
            if result.status == 201 and not tenant.is_test:
                revenue += result.record.cost
        else:
            key = ("unknown" if isinstance(result.error, selectors.ServiceNotFound) else "batch", str(result.error.code))
        outcomes[key] = outcomes.get(key, 0) + 1
    for (service, outcome), count in outcomes.items():
        metrics.USAGE_EVENTS.labels(service, outcome).inc(count)
    if revenue:
        metrics.amount_observed(metrics.REVENUE, currency=settings.CURRENCY, amount=revenue)


_INSERT_USAGE_BATCH_SQL = """
INSERT INTO metering_usagerecord (
    organization_id, service_id, api_key_id, user_id, quantity, input_tokens, output_tokens,
    input_price, output_price, unit_price, cost, test, idempotency_key, request_hash, metadata,
    transfer_id, balance_after, created_at)
SELECT %(org)s, u.service, %(key)s, %(user)s, u.quantity, u.input_tokens, u.output_tokens,
       u.input_price, u.output_price, u.unit_price, u.cost, %(test)s, u.idem, u.hash, u.metadata::jsonb,
       u.transfer, u.balance_after, %(now)s
  FROM unnest(%(service)s::bigint[], %(quantity)s::bigint[], %(input_tokens)s::bigint[], %(output_tokens)s::bigint[],
              %(input_price)s::numeric[], %(output_price)s::numeric[], %(unit_price)s::numeric[], %(cost)s::numeric[],
              %(idem)s::text[], %(hash)s::text[], %(metadata)s::text[], %(transfer)s::bigint[], %(balance_after)s::numeric[])
       AS u(service, quantity, input_tokens, output_tokens, input_price, output_price, unit_price, cost,
            idem, hash, metadata, transfer, balance_after)
ON CONFLICT (organization_id, test, idempotency_key) DO NOTHING
RETURNING id, idempotency_key
"""

_ROLLUP_BATCH_SQL = """
INSERT INTO metering_usagerollup AS r (organization_id, service_id, day, test, events, quantity, input_tokens, output_tokens, cost)
SELECT %(org)s, u.service, %(day)s, %(test)s, u.events, u.quantity, u.input_tokens, u.output_tokens, u.cost
  FROM unnest(%(service)s::bigint[], %(events)s::bigint[], %(quantity)s::numeric[], %(input_tokens)s::numeric[],
              %(output_tokens)s::numeric[], %(cost)s::numeric[]) AS u(service, events, quantity, input_tokens, output_tokens, cost)
ON CONFLICT (organization_id, day, service_id, test) DO UPDATE
   SET events = r.events + EXCLUDED.events, quantity = r.quantity + EXCLUDED.quantity,
       input_tokens = r.input_tokens + EXCLUDED.input_tokens,
       output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost
"""


def _insert_usage_batch(accepted: list[tuple[tuple, ledger.Posting | None]], *, tenant: Tenant, now: datetime) -> dict[str, int]:
    """Insert the accepted rows, their rollups and the key's spend; answer idempotency key → id."""
    if not accepted:
        return {}
    columns = dict(zip(_BATCH_COLUMNS, (list(column) for column in zip(*(row for row, _ in accepted), strict=True)), strict=True))
    columns["transfer"] = [posting.transfer_id if posting else None for _, posting in accepted]
    columns["balance_after"] = [posting.balance_after if posting else None for _, posting in accepted]
    rollup: dict[int, list] = {}
    for service, quantity, input_tokens, output_tokens, *_, cost, _idem, _hash, _metadata in (row for row, _ in accepted):
        totals = rollup.setdefault(service, [0, 0, 0, 0, ZERO])
        totals[0] += 1
        totals[1] += quantity
        totals[2] += input_tokens or 0
        totals[3] += output_tokens or 0
        totals[4] += cost
    organization_id = tenant.organization.pk
    common = {
        "org": organization_id,
        "key": tenant.api_key.pk if tenant.api_key else None,
        "user": tenant.user.pk if tenant.user else None,
        "test": tenant.is_test,
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_USAGE_BATCH_SQL, {**common, **columns})
        ids = {key: record_id for record_id, key in cursor.fetchall()}
        if len(ids) != len(accepted):
            # Another request wrote one of these keys after our pre-check: the unique index saw it.
            raise IdempotencyConflict(
                "An idempotency key in this batch was used concurrently by another request; retry the batch."
            )
        service_ids = list(rollup)
        cursor.execute(_ROLLUP_BATCH_SQL, {
            "org": organization_id, "day": now.date(), "test": tenant.is_test, "service": service_ids,
            "events": [rollup[s][0] for s in service_ids], "quantity": [rollup[s][1] for s in service_ids],
            "input_tokens": [rollup[s][2] for s in service_ids], "output_tokens": [rollup[s][3] for s in service_ids],
            "cost": [rollup[s][4] for s in service_ids],
        })  # fmt: skip
        total_cost = sum((rollup[s][4] for s in service_ids), ZERO)
        if tenant.api_key is not None and not tenant.is_test and total_cost:
            cursor.execute(
                "UPDATE accounts_apikey SET spent = spent + %s WHERE id = %s RETURNING spent, spend_cap",
                [total_cost, tenant.api_key.pk],
            )
            spent, spend_cap = cursor.fetchone()
            if spend_cap is not None and spent > spend_cap:
                raise SpendCapExceeded(details={"spend_cap": str(spend_cap)})
    return ids


# --- Holds --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    hold: Hold
    replayed: bool
    record: UsageRecord | None = None


def hold_create(*, tenant: Tenant, service: str, idempotency_key: str, amount: Decimal | None, maxima: Mapping[str, Any],
                expires_in: int | None) -> HoldOutcome:  # fmt: skip
    """Reserve `amount`, or the cost of `maxima` at the price in force, until it expires. Moves no
    money; `available` shrinks. InsufficientBalance when it does not fit."""
    organization_id = tenant.organization.pk
    priced = selectors.priced_service_get(slug=service, organization_id=organization_id)
    maxima_quantities = None
    if amount is None:
        maxima_quantities = measure(priced.calc_method, maxima)
        amount = strategy_for(priced.calc_method).cost(priced.calc_method, maxima_quantities, priced.prices)
    elif maxima:
        raise InvalidRequest("Send `amount` or the method's maximum quantities, not both.")
    else:
        amount = money_round(amount)
    if amount <= ZERO:
        # The hold is what bounds an over-capture (SPEC §2.4): a zero hold would let a wallet far below
        # its limit keep getting service.
        raise InvalidRequest(
            "A hold reserves a positive amount; these maxima cost nothing.",
            details={"amount": ["Must be greater than zero (give `amount`, or maxima that cost something)."]},
        )
    ttl = timedelta(seconds=expires_in) if expires_in is not None else settings.HOLD_DEFAULT_TTL
    if not timedelta(seconds=1) <= ttl <= settings.HOLD_MAX_TTL:
        raise InvalidRequest(
            "`expires_in` is out of range.", details={"expires_in": [f"1..{int(settings.HOLD_MAX_TTL.total_seconds())} seconds."]}
        )
    request_hash = UsageEvent(service=service, idempotency_key=idempotency_key, data={"amount": str(amount), "expires_in": expires_in,
                              **dict(maxima)}).request_hash()  # fmt: skip
    now = timezone.now()
    hold = Hold(
        organization_id=organization_id, service_id=priced.service_id, api_key=tenant.api_key, user=tenant.user, amount=amount,
        maxima=maxima_quantities.as_dict() if maxima_quantities else {}, test=tenant.is_test, status=HoldStatus.ACTIVE,
        idempotency_key=idempotency_key, request_hash=request_hash, expires_at=now + ttl, created_at=now,
    )  # fmt: skip
    same_key = Hold.objects.filter(organization_id=organization_id, test=tenant.is_test, idempotency_key=idempotency_key)
    existing = same_key.first()
    if existing is None:
        try:
            with transaction.atomic(durable=True):
                if not tenant.is_test:
                    ledger.wallet_hold(organization_id=organization_id, amount=amount)
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
    Hold.objects.filter(pk=hold.pk).update(status=status, finished_at=timezone.now())
    hold.status = status


def hold_capture(*, tenant: Tenant, hold: Hold, data: Mapping[str, Any]) -> HoldOutcome:
    """Write the usage of the actual quantities at the price in force and free the hold, in one
    transaction. The actual cost may exceed the hold (SPEC §2.4: the service was delivered).
    Capturing again answers the same outcome; capturing a released or expired hold is refused."""
    organization_id = tenant.organization.pk
    if hold.organization_id != organization_id or hold.test != tenant.is_test:
        raise NotFound("No such hold.")  # a test key never captures a live hold, nor the other way round
    event = UsageEvent(service=hold.service.slug, idempotency_key=hold_capture_key(hold.pk), data=data)
    if hold.status == HoldStatus.CAPTURED:
        return _capture_replay(hold, event)
    if hold.status != HoldStatus.ACTIVE:
        raise HoldNotActive()
    priced = _price(event, organization_id=organization_id, include_inactive=True)  # delivered before any retirement
    try:
        with transaction.atomic(durable=True):
            # Lock order: the wallet, then the hold; the hold is checked before its amount is freed, so a
            # racing capture, release or expiry of the same hold cannot free it twice.
            if not hold.test:
                ledger.wallet_lock(organization_id=organization_id)
            locked = Hold.objects.select_for_update().get(pk=hold.pk)
            if locked.status != HoldStatus.ACTIVE:
                raise _AlreadyRecorded()
            posting = None
            if not hold.test:
                posting = ledger.usage_charge(organization_id=organization_id, cost=priced.cost, reference=f"hold:{hold.pk}",
                                              release_held=hold.amount, may_overdraw=True)  # fmt: skip
            capture_tenant = Tenant(organization=tenant.organization, user=hold.user, api_key=hold.api_key, role=None)
            record = _insert_usage(priced, tenant=capture_tenant, now=timezone.now(), posting=posting, hold_id=hold.pk)
            _hold_finish(hold=hold, status=HoldStatus.CAPTURED)
    except _AlreadyRecorded:
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
        # Lock order: the wallet, then the hold (see hold_capture).
        if not hold.test:
            ledger.wallet_lock(organization_id=hold.organization_id)
        locked = Hold.objects.select_for_update().get(pk=hold.pk)
        if locked.status != HoldStatus.ACTIVE:
            if locked.status == status:  # a concurrent twin released it first
                hold.status = locked.status
                return HoldOutcome(hold=hold, replayed=True)
            raise HoldNotActive()
        if not hold.test:
            ledger.wallet_release(organization_id=hold.organization_id, amount=hold.amount)
        _hold_finish(hold=hold, status=status)
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


# --- Services and prices (staff) --------------------------------------------------------------------


def service_create(*, slug: str, name: str, calc_method: str, active: bool = True) -> Service:
    service = Service(slug=slug, name=name, calc_method=calc_method, active=active)
    service.full_clean()
    service.save()
    return service


def price_create(*, service: Service, organization_id: int | None, effective_from: datetime | None, created_by_id: int | None,
                 input_price: Decimal | None = None, output_price: Decimal | None = None,
                 unit_price: Decimal | None = None) -> Price:  # fmt: skip
    """A new price row (rates are never edited in place). The fields must be exactly the ones the
    service's method uses (SPEC §3)."""
    given = {"input_price": input_price, "output_price": output_price, "unit_price": unit_price}
    needed = set(price_fields(service.calc_method))
    missing = sorted(name for name in needed if given[name] is None)
    foreign = sorted(name for name, value in given.items() if value is not None and name not in needed)
    if missing or foreign:
        raise InvalidRequest(
            f"A {service.calc_method} price takes {', '.join(sorted(needed))}.",
            details={
                **{n: ["This field is required."] for n in missing},
                **{n: ["Does not apply to this method."] for n in foreign},
            },
        )
    price = Price(service=service, organization_id=organization_id, effective_from=effective_from or timezone.now(),
                  created_by_id=created_by_id, **given)  # fmt: skip
    price.full_clean()
    price.save()
    return price
