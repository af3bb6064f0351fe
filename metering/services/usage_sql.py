"""The SQL that writes usage records, their daily rollups and the API key's spend — every statement
built from one list of the record's columns, one rollup upsert and one spend update, so the single
event path, the one-statement hot path and the batch path cannot drift apart.

Parameters are all named `usage_*`; the ledger's are `ledger_*`, so the hot path's fused statement
carries both without collisions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection

from accounts.tenancy import Tenant
from billing_site.db import server_bound_cursor
from billing_site.errors import IdempotencyConflict
from billing_site.money import ZERO
from metering.models import Service, UsageRecord
from metering.services.events import PricedEvent, spend_cap_check
from metering.services.positions import Position, PositionKey
from payments import ledger

# The usage record's columns: (column, parameter, PostgreSQL type).
RECORD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("organization_id", "org", "bigint"),
    ("service_id", "service", "bigint"),
    ("api_key_id", "key", "bigint"),
    ("user_id", "user", "bigint"),
    ("quantity", "quantity", "bigint"),
    ("input_tokens", "input_tokens", "bigint"),
    ("output_tokens", "output_tokens", "bigint"),
    ("cached_input_tokens", "cached_input_tokens", "bigint"),
    ("input_price", "input_price", "numeric"),
    ("output_price", "output_price", "numeric"),
    ("cached_input_price", "cached_input_price", "numeric"),
    ("unit_price", "unit_price", "numeric"),
    ("cost", "cost", "numeric"),
    ("test", "test", "boolean"),
    ("idempotency_key", "idem", "text"),
    ("request_hash", "hash", "text"),
    ("metadata", "metadata", "jsonb"),
    ("transfer_id", "transfer", "bigint"),
    ("balance_after", "balance_after", "numeric"),
    ("hold_id", "hold", "bigint"),
    ("position", "position", "bigint"),
    ("pricing", "pricing", "jsonb"),
    ("created_at", "now", "timestamptz"),
)
IDEMPOTENCY_CONSTRAINT = "usage_idempotency_key_per_org_mode"
_ON_KEY_CONFLICT = "ON CONFLICT (organization_id, test, idempotency_key) DO NOTHING"
_COLUMN_LIST = ", ".join(column for column, _, _ in RECORD_COLUMNS)


def _values(**expressions: str) -> str:
    """The record's values as parameters, or the given SQL expression for a parameter."""
    return ", ".join(expressions.get(param, f"%(usage_{param})s") for _, param, _ in RECORD_COLUMNS)


def _rollup_upsert(source: str) -> str:
    """Add rows (organization, service, day, test, events, quantity, input tokens, output tokens, cost,
    stripe) from `source` to the daily rollups."""
    return f"""INSERT INTO metering_usagerollup AS r
           (organization_id, service_id, day, test, events, quantity, input_tokens, output_tokens, cost, stripe)
    {source}
    ON CONFLICT (organization_id, day, service_id, test, stripe) DO UPDATE
       SET events = r.events + EXCLUDED.events, quantity = r.quantity + EXCLUDED.quantity,
           input_tokens = r.input_tokens + EXCLUDED.input_tokens,
           output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost"""


# What a key spent through a high-volume wallet's stripes, beside its own `spent` (ApiKey.lifetime_spent).
def _spent_on_stripes(key_id: str) -> str:
    return f"(SELECT COALESCE(sum(s.spent), 0) FROM accounts_apikeystripespend s WHERE s.api_key_id = {key_id})"


def _spend_update(amount: str, condition: str = "") -> str:
    """Raise the API key's lifetime spend (its row lock comes after the wallet's); answers the new
    lifetime spend (stripes' included) and the cap, for `spend_cap_check`."""
    return (
        f"UPDATE accounts_apikey SET spent = spent + {amount} WHERE id = %(usage_key)s{condition}"
        f" RETURNING spent + {_spent_on_stripes('accounts_apikey.id')} AS spent, spend_cap"
    )


def _rollup_and_spend(stripe: str) -> str:
    """The record's daily rollup and the key's spend on the `stripe` row (0: the wallet's), after a CTE
    `rec` that inserted the record. On a stripe the spend goes to the key's row for that stripe, so one
    key's striped debits do not queue on the key's own row."""
    rollup = _rollup_upsert(
        "SELECT %(usage_org)s, %(usage_service)s, %(usage_day)s, %(usage_test)s, 1, %(usage_quantity)s,"
        f" %(usage_input_tokens_sum)s, %(usage_output_tokens_sum)s, %(usage_cost)s, {stripe} FROM rec"
    )
    charged = " AND NOT %(usage_test)s AND EXISTS (SELECT 1 FROM rec)"
    spend = _spend_update("%(usage_cost)s", charged + f" AND {stripe} = 0")
    ctes = f"roll AS (\n    {rollup}\n), spend AS (\n    {spend}\n)"
    if stripe == "0":
        return ctes
    return f"""{ctes}, stripe_spend AS (
    INSERT INTO accounts_apikeystripespend AS k (api_key_id, stripe, spent)
    SELECT %(usage_key)s::bigint, {stripe}, %(usage_cost)s FROM rec
     WHERE %(usage_key)s::bigint IS NOT NULL AND NOT %(usage_test)s AND {stripe} <> 0
    ON CONFLICT (api_key_id, stripe) DO UPDATE SET spent = k.spent + EXCLUDED.spent
)"""


# In a transaction after a separate posting (holds, capped keys, test keys, zero costs): the record
# unless its idempotency key exists in this mode, its rollup and the key's spend.
INSERT_USAGE_SQL = f"""
WITH rec AS (
    INSERT INTO metering_usagerecord ({_COLUMN_LIST}) VALUES ({_values()})
    {_ON_KEY_CONFLICT}
    RETURNING id
), {_rollup_and_spend("0")}
SELECT rec.id, spend.spent, spend.spend_cap FROM rec LEFT JOIN spend ON true
"""

# The hot path: the ledger's posting and the record, rollup and spend as ONE autocommit statement
# (on the wallet row, or on one stripe of a high-volume wallet). A reused idempotency key violates the
# unique index and rolls the money back with it.
DEBIT_SQL = ledger.post_statement(f"""rec AS (
    INSERT INTO metering_usagerecord ({_COLUMN_LIST})
    SELECT {_values(transfer="t.id", balance_after="w.total", hold="NULL")} FROM t, w
    RETURNING id
), {_rollup_and_spend("(SELECT stripe FROM w)")}, companion AS (SELECT id FROM rec)""")

# The hot path for a positional price (docs/pricing.md): the same statement, guarded by the event's
# position. `guard` advances the organization's position for the service only while it still lies in
# the range the cost was computed for (its row lock comes first: billing_site/locks.py), so no two
# events take the same position and none is charged at a position it does not have; the record keeps
# the position it got. `seen` is the position as the statement saw it, for the next guess.
_POSITION_ROW = "organization_id = %(usage_org)s AND service_id = %(usage_service)s AND period = %(usage_period)s AND NOT test"
_POSITION_GUARD = f"""seen AS (
    SELECT used, free_until FROM metering_usageposition WHERE {_POSITION_ROW}
), guard AS (
    UPDATE metering_usageposition SET used = used + %(usage_quantity)s
     WHERE {_POSITION_ROW} AND free_until = %(usage_free_until)s
       AND used BETWEEN %(usage_position_low)s AND COALESCE(%(usage_position_high)s::bigint, 9223372036854775807)
 RETURNING used - %(usage_quantity)s AS start
)"""


def _positional_record(stripe: str, *, transfer: str) -> str:
    return f"""rec AS (
    INSERT INTO metering_usagerecord ({_COLUMN_LIST})
    SELECT {_values(transfer=transfer, balance_after="w.total", hold="NULL", position="(SELECT start FROM guard)")} FROM w
    RETURNING id
), {_rollup_and_spend(stripe)}, companion AS (SELECT id, (SELECT start FROM guard) FROM rec)"""


POSITIONAL_DEBIT_SQL = ledger.post_statement(
    _positional_record("(SELECT stripe FROM w)", transfer="(SELECT id FROM t)"), guard_ctes=_POSITION_GUARD
)
# The same for an event its position makes free (a plan's included units): no money moves.
POSITIONAL_FREE_SQL = ledger.free_statement(_positional_record("0", transfer="NULL"), guard_ctes=_POSITION_GUARD)

# A batch's records go in by binary COPY (no SQL text to build or parse), with ids drawn first so the
# answer can name them. A key already taken makes the COPY fail on the unique index.
_BATCH_IDS_SQL = "SELECT nextval(pg_get_serial_sequence('metering_usagerecord', 'id')) FROM generate_series(1, %s)"
COPY_USAGE_SQL = f"COPY metering_usagerecord (id, {_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", *(kind.replace("bigint", "int8").replace("boolean", "bool") for _, _, kind in RECORD_COLUMNS)]
ROLLUP_BATCH_SQL = _rollup_upsert(
    "SELECT %(usage_org)s, u.service, %(usage_day)s, %(usage_test)s, u.events, u.quantity, u.input_tokens, u.output_tokens, u.cost, 0"
    "  FROM unnest(%(usage_rollup_service)s::bigint[], %(usage_rollup_events)s::bigint[], %(usage_rollup_quantity)s::numeric[],"
    " %(usage_rollup_input_tokens)s::numeric[], %(usage_rollup_output_tokens)s::numeric[], %(usage_rollup_cost)s::numeric[])"
    " AS u(service, events, quantity, input_tokens, output_tokens, cost)"
)
SPEND_BATCH_SQL = _spend_update("%(usage_total)s")


class AlreadyRecorded(Exception):
    """The idempotency key exists: roll back whatever this attempt moved, then replay."""


def record_params(
    priced: PricedEvent, *, tenant: Tenant, now: datetime, posting: ledger.Posting | None = None, hold_id: int | None = None
) -> dict[str, Any]:
    """The `usage_*` parameters of one record (and its rollup and spend)."""
    if priced.positional and priced.units and priced.position is None:
        raise ValueError("a positional event is written only once priced at its position")
    quantities = priced.quantities
    return {
        "usage_org": tenant.organization.pk,
        "usage_service": priced.service_id,
        "usage_key": tenant.api_key.pk if tenant.api_key else None,
        "usage_user": tenant.user.pk if tenant.user else None,
        "usage_quantity": quantities.quantity,
        "usage_input_tokens": quantities.input_tokens,
        "usage_output_tokens": quantities.output_tokens,
        "usage_cached_input_tokens": quantities.cached_input_tokens,
        "usage_input_tokens_sum": quantities.input_tokens or 0,
        "usage_output_tokens_sum": quantities.output_tokens or 0,
        "usage_input_price": priced.prices.get("input_price"),
        "usage_output_price": priced.prices.get("output_price"),
        "usage_cached_input_price": priced.prices.get("cached_input_price"),
        "usage_unit_price": priced.prices.get("unit_price"),
        "usage_cost": priced.cost,
        "usage_test": tenant.is_test,
        "usage_idem": priced.event.idempotency_key,
        "usage_hash": priced.request_hash,
        "usage_metadata": json.dumps(priced.event.metadata),
        "usage_transfer": posting.transfer_id if posting else None,
        "usage_balance_after": posting.balance_after if posting else None,
        "usage_hold": hold_id,
        "usage_position": priced.position if priced.positional and priced.units else None,
        "usage_pricing": None if priced.pricing is None else json.dumps(priced.pricing),
        "usage_now": now,
        "usage_day": now.date(),
    }


def _record(priced: PricedEvent, params: dict[str, Any], *, record_id: int, posting: ledger.Posting | None) -> UsageRecord:
    """The record as written, built from what we sent rather than read back."""
    quantities = priced.quantities
    return UsageRecord(
        pk=record_id,
        organization_id=params["usage_org"],
        service_id=priced.service_id,
        api_key_id=params["usage_key"],
        user_id=params["usage_user"],
        quantity=quantities.quantity,
        input_tokens=quantities.input_tokens,
        output_tokens=quantities.output_tokens,
        cached_input_tokens=quantities.cached_input_tokens,
        input_price=params["usage_input_price"],
        output_price=params["usage_output_price"],
        cached_input_price=params["usage_cached_input_price"],
        unit_price=params["usage_unit_price"],
        cost=priced.cost,
        test=params["usage_test"],
        idempotency_key=priced.event.idempotency_key,
        request_hash=priced.request_hash,
        metadata=priced.event.metadata,
        transfer_id=posting.transfer_id if posting else None,
        balance_after=posting.balance_after if posting else params["usage_balance_after"],
        hold_id=params["usage_hold"],
        position=params["usage_position"],
        pricing=priced.pricing,
        created_at=params["usage_now"],
    )


def usage_insert(
    priced: PricedEvent,
    *,
    tenant: Tenant,
    now: datetime,
    posting: ledger.Posting | None,
    hold_id: int | None = None,
    cap_enforced: bool = True,
) -> UsageRecord:
    """Write the record after its posting, inside the caller's transaction. AlreadyRecorded when the
    key exists (in this mode); SpendCapExceeded when the key's cap is passed (the caller rolls back),
    unless not `cap_enforced` (a hold's capture: the hold was checked against the cap, and the usage
    it records was delivered, so it is recorded in full like an over-capture of the wallet)."""
    params = record_params(priced, tenant=tenant, now=now, posting=posting, hold_id=hold_id)
    with connection.cursor() as cursor:
        cursor.execute(INSERT_USAGE_SQL, params)
        row = cursor.fetchone()
    if row is None:
        raise AlreadyRecorded()
    record_id, spent, spend_cap = row
    if spent is not None and cap_enforced:
        spend_cap_check(spent=spent, spend_cap=spend_cap)
    return _record(priced, params, record_id=record_id, posting=posting)


# What a capped live key may still spend: its cap, less what it spent, less what its active holds
# reserve. Read under the wallet's lock, where every debit and hold of the organization serializes.
_CAP_REMAINING_SQL = f"""
SELECT k.spend_cap - k.spent - {_spent_on_stripes("k.id")} - COALESCE(
           (SELECT sum(h.amount) FROM metering_hold h WHERE h.api_key_id = k.id AND h.status = 'active' AND NOT h.test), 0)
  FROM accounts_apikey k
 WHERE k.id = %s AND k.spend_cap IS NOT NULL
"""


def spend_cap_applies(tenant: Tenant) -> bool:
    """A live key with a spend cap: its debits and holds are checked against the cap."""
    return tenant.api_key is not None and not tenant.is_test and tenant.api_key.spend_cap is not None


def spend_cap_remaining(*, tenant: Tenant) -> Decimal | None:
    """What the caller's live, capped key may still spend or reserve (None: no cap applies). The
    caller holds the wallet's lock."""
    api_key = tenant.api_key
    if api_key is None or not spend_cap_applies(tenant):
        return None
    with connection.cursor() as cursor:
        cursor.execute(_CAP_REMAINING_SQL, [api_key.pk])
        row = cursor.fetchone()
    return None if row is None else row[0]


def _charged_in_one_statement(
    priced: PricedEvent,
    params: dict[str, Any],
    *,
    tenant: Tenant,
    now: datetime,
    statements: ledger.PostStatements,
    guarded: bool,
) -> tuple[ledger.Posting | None, tuple[Any, ...]]:
    """`ledger.usage_charge_in_one_statement` for this record; AlreadyRecorded when its key exists."""
    with _already_recorded_on_conflict():
        return ledger.usage_charge_in_one_statement(
            statements=statements,
            organization_id=params["usage_org"],
            stripes=tenant.organization.wallet_stripes,
            cost=priced.cost,
            reference=f"usage:{priced.event.idempotency_key}",
            params=params,
            now=now,
            api_key_id=params["usage_key"],
            guarded=guarded,
        )


@contextmanager
def _already_recorded_on_conflict() -> Iterator[None]:
    """A reused idempotency key violates the unique index and rolls its statement back: AlreadyRecorded."""
    try:
        yield
    except IntegrityError as error:
        if getattr(getattr(error.__cause__, "diag", None), "constraint_name", None) == IDEMPOTENCY_CONSTRAINT:
            raise AlreadyRecorded() from error
        raise


def usage_debit_in_one_statement(priced: PricedEvent, *, tenant: Tenant, now: datetime) -> UsageRecord:
    """The hot path: one round trip that debits, records, rolls up and commits. For keys without a
    spend cap only (the cap is checked after the spend update, which needs a transaction)."""
    params = record_params(priced, tenant=tenant, now=now)
    posting, (record_id,) = _charged_in_one_statement(priced, params, tenant=tenant, now=now, statements=DEBIT_SQL, guarded=False)
    return _record(priced, params, record_id=record_id, posting=posting)


def usage_debit_positional_in_one_statement(
    priced: PricedEvent, *, tenant: Tenant, now: datetime, key: PositionKey
) -> UsageRecord | Position | None:
    """The hot path of a positional event priced at a guessed position: the record when the position
    still lay in the range its cost holds for, else the position the statement saw (None: there is no
    position row yet) and nothing is written. GuardRefused when the guess held but the wallet row (or
    stripe) could not pay, or, for a free event, is at or past its limit: the caller settles the event
    on its locked path."""
    params = record_params(priced, tenant=tenant, now=now)
    params.update(
        usage_period=key.period,
        usage_free_until=priced.free_until,
        usage_position_low=priced.low,
        usage_position_high=priced.high,
    )
    if priced.cost > ZERO:
        posting, extra = _charged_in_one_statement(
            priced, params, tenant=tenant, now=now, statements=POSITIONAL_DEBIT_SQL, guarded=True
        )
    else:
        with _already_recorded_on_conflict():
            row = ledger.usage_free_in_one_statement(
                statement=POSITIONAL_FREE_SQL, organization_id=params["usage_org"], params=params
            )
        posting, extra = None, () if row is None else row[2:]
        if row is not None and row[0] is not None:
            params["usage_balance_after"] = row[0]
            params["usage_position"] = extra[1]
            return _record(priced, params, record_id=extra[0], posting=None)
    if posting is None:
        # after the companion's (id, start), NULL here: `seen`'s (used, free_until)
        return Position(used=extra[2], free_until=extra[3]) if extra else None
    record_id, start = extra[:2]
    params["usage_position"] = start
    return _record(priced, params, record_id=record_id, posting=posting)


@dataclass(slots=True)
class BatchRecord:
    """A usage record a batch wrote, as rendered: built from what was sent, not read back, and much
    lighter than a model instance (a batch renders a thousand)."""

    pk: int
    service: Service
    quantity: int
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    input_price: Decimal | None
    output_price: Decimal | None
    cached_input_price: Decimal | None
    unit_price: Decimal | None
    cost: Decimal
    balance_after: Decimal | None
    test: bool
    idempotency_key: str
    request_hash: str
    metadata: dict[str, Any]
    created_at: datetime
    position: int | None = None
    pricing: dict[str, Any] | None = None


def usage_insert_batch(
    accepted: list[tuple[PricedEvent, ledger.Posting | None]], *, tenant: Tenant, now: datetime
) -> dict[str, int]:
    """Insert the accepted records (binary COPY), their rollups and the key's spend, inside the
    caller's transaction; answer idempotency key → id. IdempotencyConflict when another request wrote
    one of these keys meanwhile; SpendCapExceeded when the total passes the key's cap."""
    if not accepted:
        return {}
    rows = [record_params(priced, tenant=tenant, now=now, posting=posting) for priced, posting in accepted]
    params: dict[str, Any] = {name: rows[0][name] for name in ("usage_org", "usage_key", "usage_test", "usage_day")}
    rollup: dict[int, list[Any]] = {}
    for row in rows:
        totals = rollup.setdefault(row["usage_service"], [0, 0, 0, 0, ZERO])
        totals[0] += 1
        totals[1] += row["usage_quantity"]
        totals[2] += row["usage_input_tokens_sum"]
        totals[3] += row["usage_output_tokens_sum"]
        totals[4] += row["usage_cost"]
    for index, name in enumerate(("service", "events", "quantity", "input_tokens", "output_tokens", "cost")):
        params[f"usage_rollup_{name}"] = list(rollup) if name == "service" else [totals[index - 1] for totals in rollup.values()]
    params["usage_total"] = sum((totals[4] for totals in rollup.values()), ZERO)
    # COPY's jsonb dumper encodes the object itself, so the metadata goes as the dict, not its JSON text.
    names = [f"usage_{param}" for _, param, _ in RECORD_COLUMNS]
    metadata_at, pricing_at = names.index("usage_metadata"), names.index("usage_pricing")
    with server_bound_cursor() as cursor:
        cursor.execute(_BATCH_IDS_SQL, [len(rows)])
        ids = [record_id for (record_id,) in cursor.fetchall()]
        try:
            with connection.wrap_database_errors, cursor.copy(COPY_USAGE_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                for record_id, row, (priced, _) in zip(ids, rows, accepted, strict=True):
                    values = [record_id, *(row[name] for name in names)]
                    values[1 + metadata_at] = priced.event.metadata
                    values[1 + pricing_at] = priced.pricing
                    copy.write_row(values)
        except IntegrityError as error:
            if getattr(getattr(error.__cause__, "diag", None), "constraint_name", None) == IDEMPOTENCY_CONSTRAINT:
                # Another request wrote one of these keys after our pre-check: the unique index saw it.
                raise IdempotencyConflict(
                    "An idempotency key in this batch was used concurrently by another request; retry the batch."
                ) from error
            raise
        cursor.execute(ROLLUP_BATCH_SQL, params)
        if tenant.api_key is not None and not tenant.is_test and params["usage_total"]:
            cursor.execute(SPEND_BATCH_SQL, params)
            spent, spend_cap = cursor.fetchone()
            spend_cap_check(spent=spent, spend_cap=spend_cap)
    return {row["usage_idem"]: record_id for record_id, row in zip(ids, rows, strict=True)}
