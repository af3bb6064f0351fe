"""(1) The debit transaction as raw SQL, no Django: psycopg straight to the same PostgreSQL.

`app` runs exactly the statement the app runs for one debit on its hot path: the ledger's posting
and the usage record, rollup and key spend fused into `metering.services.usage_sql.DEBIT_SQL`, sent in
autocommit (one round trip) — imported from the module (never copied), with the parameters the app
passes, prepared on the server as the app sends it (billing_site/db.py; psycopg's ClientCursor,
client-side binding, with DATABASE_PREPARED_STATEMENTS=false).

`twostmt` is the app's transactional path (capped or test keys, holds): BEGIN;
`payments.ledger._POST_SQL`; `metering.services.usage_sql.INSERT_USAGE_SQL`; COMMIT — four round trips.

`striped` is the app's hot-path statement on a high-volume wallet (docs/contract.md §2.9): the same
posting and usage rows on one stripe's row, the stripe picked at random per debit as the app does
(`DEBIT_SQL.stripe`); its single-row twin is `app` on the same organization with striping off.

`classic` is the 6-round-trip reference of docs/performance.md: BEGIN; SELECT … FOR UPDATE; UPDATE the
balance; INSERT the transfer and its entries; the app's usage statement; COMMIT.

Each client is its own process (no GIL between clients) with its own connection; all connect,
then start together, warm up, and are measured over the same wall-clock window.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import time
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metering.services.usage_sql import DEBIT_SQL, INSERT_USAGE_SQL, record_params
from payments.ledger import _POST_SQL, posting_params, stripe_pick

CLASSIC_LOCK_SQL = "SELECT balance, held, credit_limit FROM payments_wallet WHERE organization_id = %(org)s FOR UPDATE"
CLASSIC_UPDATE_SQL = (
    "UPDATE payments_wallet SET balance = %(balance)s, ledger_seq = ledger_seq + 1 WHERE organization_id = %(org)s"
)
CLASSIC_LEDGER_SQL = """
WITH t AS (
    INSERT INTO payments_transfer (organization_id, kind, reference, created_by_id, memo, created_at)
    VALUES (%(ledger_org)s, %(ledger_kind)s, %(ledger_reference)s, %(ledger_created_by)s, %(ledger_memo)s, %(ledger_now)s)
    RETURNING id
), e AS (
    INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, created_at)
    SELECT t.id, %(ledger_org)s, 'wallet', %(ledger_delta)s, %(balance)s, %(ledger_now)s FROM t
    UNION ALL
    SELECT t.id, %(ledger_org)s, %(ledger_counter)s, -%(ledger_delta)s, NULL, %(ledger_now)s FROM t
)
SELECT id FROM t
"""

VARIANTS = {
    "app": "the app's one autocommit statement: posting + usage record + rollup + spend (1 round trip)",
    "striped": "the same statement on one stripe of a high-volume wallet, picked at random (1 round trip)",
    "twostmt": "the app's transactional path: BEGIN; ledger CTE; usage CTE; COMMIT (4 round trips)",
    "classic": "BEGIN; SELECT FOR UPDATE; UPDATE; INSERT ledger; INSERT usage; COMMIT (6 round trips)",
}


def _app_params(job: RawJob) -> tuple[dict, dict]:
    """The parameters the app passes for a usage debit of a REQUEST event with a live key, built by the
    app's own builders (the ledger's `posting_params`, metering's `record_params`), never restated."""
    from accounts.models import ApiKey, Organization
    from accounts.tenancy import Tenant
    from metering.calculators import Quantities
    from metering.services.events import PricedEvent, UsageEvent
    from payments.models import Account, TransferKind

    base_post = posting_params(organization_id=0, amount=-job.cost, counter_account=Account.REVENUE, kind=TransferKind.USAGE)
    priced = PricedEvent(
        event=UsageEvent(service="bench", idempotency_key="", data={}),
        service_id=job.service_id,
        calc_method="REQUEST",
        quantities=Quantities(quantity=1),
        prices={"unit_price": job.unit_price},
        cost=job.cost,
        request_hash="",
    )
    tenant = Tenant(organization=Organization(pk=0), user=None, api_key=ApiKey(pk=0, mode="live"), role=None)
    return base_post, record_params(priced, tenant=tenant, now=datetime.now(UTC))


class Refused(Exception):
    """The posting answered no row: the wallet would go below its limit."""


@dataclass(frozen=True)
class RawJob:
    conninfo: str
    variant: str  # app | classic
    targets: list[tuple[int, int]]  # (organization id, api key id)
    service_id: int
    unit_price: Decimal
    cost: Decimal
    run_id: str
    warmup: float
    duration: float
    stripes: int = 0  # `striped`: the high-volume wallet's stripe count


def _debit_twostmt(cursor, conn, job: RawJob, org: int, key: int, idem: str, base_post: dict, base_usage: dict) -> None:
    now = datetime.now(UTC)
    with conn.transaction():
        cursor.execute(_POST_SQL, {**base_post, "ledger_org": org, "ledger_reference": f"usage:{idem}", "ledger_now": now})
        row = cursor.fetchone()
        if row is None:
            raise Refused
        transfer_id, balance_after = row[0], row[1]  # (id, balance, held, …): the app reads these two
        cursor.execute(
            INSERT_USAGE_SQL,
            {**_usage(base_usage, org, key, idem, now), "usage_transfer": transfer_id, "usage_balance_after": balance_after},
        )
        if cursor.fetchone() is None:
            raise RuntimeError("usage record not written (idempotency key reused?)")


def _debit_classic(cursor, conn, job: RawJob, org: int, key: int, idem: str, base_post: dict, base_usage: dict) -> None:
    now = datetime.now(UTC)
    with conn.transaction():
        cursor.execute(CLASSIC_LOCK_SQL, {"org": org})
        balance, held, credit_limit = cursor.fetchone()
        balance_after = balance - job.cost
        if balance_after - held < -credit_limit:
            raise Refused
        cursor.execute(CLASSIC_UPDATE_SQL, {"balance": balance_after, "org": org})
        cursor.execute(
            CLASSIC_LEDGER_SQL,
            {**base_post, "ledger_org": org, "ledger_reference": f"usage:{idem}", "ledger_now": now, "balance": balance_after},
        )
        (transfer_id,) = cursor.fetchone()
        cursor.execute(
            INSERT_USAGE_SQL,
            {**_usage(base_usage, org, key, idem, now), "usage_transfer": transfer_id, "usage_balance_after": balance_after},
        )
        if cursor.fetchone() is None:
            raise RuntimeError("usage record not written (idempotency key reused?)")


def _debit_app(cursor, conn, job: RawJob, org: int, key: int, idem: str, base_post: dict, base_usage: dict) -> None:
    now = datetime.now(UTC)
    params = {
        **base_post,
        **_usage(base_usage, org, key, idem, now),
        "ledger_org": org,
        "ledger_reference": f"usage:{idem}",
        "ledger_now": now,
    }
    statement = DEBIT_SQL.wallet
    if job.stripes:
        statement, params["ledger_stripe"] = DEBIT_SQL.stripe, stripe_pick(job.stripes)
    cursor.execute(statement, params)
    if cursor.fetchone() is None:
        raise Refused


def _app_cursor(conn):
    """The cursor the app sends its debit through: prepared on the server, as `payments.ledger` does
    (billing_site/db.py), unless DATABASE_PREPARED_STATEMENTS is off."""
    from django.conf import settings

    from billing_site.db import PreparedCursor

    return PreparedCursor(conn) if settings.DATABASE_PREPARED_STATEMENTS else conn.cursor()


def _usage(base_usage: dict, org: int, key: int, idem: str, now: datetime) -> dict:
    """The app's usage parameters for one event (built once by `record_params`), with this event's own values."""
    return {
        **base_usage,
        "usage_org": org,
        "usage_key": key,
        "usage_idem": idem,
        "usage_hash": _hash(idem),
        "usage_now": now,
        "usage_day": now.date(),
    }


def _hash(idem: str) -> str:
    # The app hashes the canonical request; any 64-hex string costs the database the same.
    return hashlib.sha256(idem.encode()).hexdigest()


def _worker(index: int, job: RawJob, connected, go, t0, results, finish) -> None:
    import signal

    import psycopg

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    debit = {"app": _debit_app, "striped": _debit_app, "twostmt": _debit_twostmt, "classic": _debit_classic}[job.variant]
    base_post, base_usage = _app_params(job)
    rnd = random.Random(os.getpid())
    latencies = array("d")
    count = errors = refused = 0
    first_error = ""
    try:
        conn = psycopg.connect(job.conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor)
    except psycopg.Error as exc:
        connected.wait()
        go.wait()
        results.put((index, 0, 1, 0, f"connect: {exc}".strip(), b""))
        return
    cursor = _app_cursor(conn) if job.variant in ("app", "striped") else conn.cursor()  # as the app sends them
    connected.wait()
    go.wait()
    start = t0.value + job.warmup
    end = start + job.duration
    while time.time() < t0.value:
        time.sleep(0.001)
    targets, n = job.targets, 0
    while True:
        began_wall = time.time()
        if began_wall >= end:
            break
        org, key = targets[rnd.randrange(len(targets))] if len(targets) > 1 else targets[0]
        n += 1
        idem = f"{job.run_id}-{job.variant}-{index}-{n}"
        began = time.perf_counter()
        try:
            debit(cursor, conn, job, org, key, idem, base_post, base_usage)
            failed = None
        except Refused:
            failed = "refused"
        except psycopg.Error as exc:
            failed = str(exc).strip()
        except Exception as exc:  # noqa: BLE001 - a changed statement shape, …: report it, never hang the parent
            results.put((index, count, errors + 1, refused, f"{type(exc).__name__}: {exc}", latencies.tobytes()))
            finish.wait()
            return
        elapsed = time.perf_counter() - began
        if began_wall < start:
            continue
        if failed is None:
            count += 1
            latencies.append(elapsed)
        else:
            errors += 1
            refused += failed == "refused"
            first_error = first_error or failed
    results.put((index, count, errors, refused, first_error, latencies.tobytes()))
    finish.wait()  # keep the connection (and its backend's CPU counters) until the parent has measured
    conn.close()


def _collect(results, processes) -> list[tuple]:
    import queue

    collected: list[tuple] = []
    deadline = time.monotonic() + 120
    while len(collected) < len(processes):
        try:
            collected.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{len(dead)} raw client(s) died; {len(collected)}/{len(processes)} reported") from None
    return collected


@dataclass
class RawResult:
    transactions: int
    errors: int
    refused: int
    first_error: str
    latencies: list[float]
    seconds: float
    pids: list[int]


def run(job: RawJob, clients: int, on_window=None) -> RawResult:
    """Run `clients` processes; `on_window(start, end, pids)` is called by the parent at the
    measured window's start (answering an object whose .stop() is called at its end)."""
    ctx = mp.get_context("fork")
    from django.db import connections

    connections.close_all()  # nothing Django-side crosses the fork
    connected, go, finish = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1), ctx.Event()
    t0, results = ctx.Value("d", 0.0), ctx.Queue()
    processes = [
        ctx.Process(target=_worker, args=(i, job, connected, go, t0, results, finish), daemon=True) for i in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        connected.wait(timeout=120)
        t0.value = time.time() + 0.1
        go.wait(timeout=30)
        start = t0.value + job.warmup
        time.sleep(max(0.0, start - time.time()))
        window = on_window([p.pid for p in processes]) if on_window else None
        time.sleep(max(0.0, start + job.duration - time.time()))
        collected = _collect(results, processes)
        if window is not None:
            window.stop()
        finish.set()
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    latencies: list[float] = []
    for *_, blob in collected:
        values = array("d")
        values.frombytes(blob)
        latencies.extend(values)
    return RawResult(
        transactions=sum(c[1] for c in collected),
        errors=sum(c[2] for c in collected),
        refused=sum(c[3] for c in collected),
        first_error=next((c[4] for c in collected if c[4]), ""),
        latencies=latencies,
        seconds=job.duration,
        pids=[p.pid for p in processes if p.pid is not None],  # all of them: each was started
    )
