"""`make bench-bigdata` (python -m bench.bigdata): the pages people read, at 10k, 1M and 10M usage records.

For each size it loads usage records with COPY (bench/bigdata_load.py: many organizations and one
large one, with their ledger postings, daily rollups and key spend, never breaking a money invariant),
vacuums and analyzes as autovacuum would, then times each page in-process through Django's test Client
(the whole middleware stack, sessions, JWT, templates; no gunicorn, no network), for the large
organization and a small one, and the back office's changelists as a staff user, in rounds interleaved
over the sizes. It prints p50/p95 per page and size, the database's share, the ratio of the largest
size to the smallest, and the aims (docs/performance.md).

It also times a statement's figures for last month (`statements.selectors.statement_figures`, all a
statement's issuance computes: opening, closing, per-kind and per-service sums) for the same two
organizations, in-process, against their limit in the same process and round: the same sums as the
plainest SQL (two balance sums and one GROUP BY kind, no usage-by-service split), calls alternating.
It checks both give the same figures, prints each of the statement's queries' share, the ratio
figures / limit, and, at the largest size, the `EXPLAIN (ANALYZE, BUFFERS)` of the slowest query.

Without DATABASE_URL each size has its own database on the embedded PostgreSQL
(`tollgate_bigdata_10k`, `_1m`, `_10m`); a bigger one starts as a copy of the next smaller one
(CREATE DATABASE … TEMPLATE) and grows from there, and every later run reuses them, so the code can be
re-measured at every size without loading again. With DATABASE_URL, the one database grows through
the sizes in ascending order (its bench organizations are told apart by the slug prefix bench-bigdata-).

    make bench-bigdata                                      # 10k, 1M, 10M; 3 rounds of 20 requests per page
    make bench-bigdata BIGDATA_ARGS="--sizes 10k,1m --requests 20"
    make bench-bigdata BIGDATA_ARGS="--sizes 10k,1m --parts statements --rounds 3 --requests 5"
    make bench-bigdata BIGDATA_ARGS="--drop"                # drop the big databases (~10 GB at 10M)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import env

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
DATABASE_PREFIX = "tollgate_bigdata_"
AIM_PAGE_P95_MS = 100.0
AIM_CSV_FIRST_ROW_MS = 200.0
AIM_FLAT_RATIO = 2.0
USAGE_PAGE_SIZE = 50
# Pages that read no usage, ledger or rollup row: what this machine's load alone does to a page, in the same run.
REFERENCE = "reference: "
# A statement is computed by a background task, one organization at a time: beyond this for the largest
# organization, the issuance's queries need a look (an index or a different plan).
AIM_STATEMENT_P95_MS = 2000.0
STATEMENT_FIGURES = "statement_figures(last month)"
STATEMENT_LIMIT = "limit: the same sums, plainest SQL"
PARTS = ("pages", "statements")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bigdata", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10k,1m,10m", help=f"usage records, ascending: any of {', '.join(SIZES)}")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page and round (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before each page's timed ones (default 3)")
    parser.add_argument(
        "--organizations", type=int, default=1000, help="small organizations besides the large one (default 1000)"
    )
    parser.add_argument("--large-share", type=float, default=0.4, help="the large organization's share of records (default 0.4)")
    parser.add_argument("--days", type=int, default=60, help="records spread over the last N days (default 60)")
    parser.add_argument("--chunk", type=int, default=250_000, help="records per loading transaction (default 250,000)")
    parser.add_argument("--deep-page", type=int, default=5000, help="the deep page's number (default 5000, or the last page)")
    parser.add_argument("--load-only", action="store_true", help="load (and vacuum) the sizes, measure nothing")
    parser.add_argument(
        "--verify", action="store_true", help="check the money invariants on the bench organizations after loading"
    )
    parser.add_argument("--drop", action="store_true", help="drop the big-data databases and exit")
    parser.add_argument("--rounds", type=int, default=3, help="measuring rounds, interleaved over the sizes (default 3)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to measure: any of {', '.join(PARTS)} (default: both)")
    parser.add_argument("--explain", action="store_true", help=argparse.SUPPRESS)  # the worker explains the slowest query
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one size, in a process of its own
    parser.add_argument("--phase", choices=["load", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    args.parts = [p.strip().lower() for p in args.parts.split(",") if p.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        parser.error(f"--parts takes a list of {', '.join(PARTS)}")
    if not args.sizes or set(args.sizes) - set(SIZES) or [SIZES[s] for s in args.sizes] != sorted(SIZES[s] for s in args.sizes):
        parser.error(f"--sizes takes an ascending list of {', '.join(SIZES)}")
    if args.rounds < 1 or args.requests < 1 or args.organizations < 1 or not 0 < args.large_share < 1:
        parser.error("--rounds, --requests and --organizations must be at least 1, --large-share between 0 and 1")
    return args


# --- the orchestrator: one process per size -------------------------------------------------------------------


def _admin_connection():
    import psycopg

    from billing_site import embedded

    params = embedded.ensure_postgres()
    return psycopg.connect(host=params["HOST"], user=params["USER"], dbname="postgres", autocommit=True), params


def _existing_databases(conn) -> set[str]:
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [DATABASE_PREFIX + "%"]).fetchall()
    return {row[0] for row in rows}


def drop() -> int:
    if os.environ.get("DATABASE_URL"):
        print(
            "bigdata: --drop is refused with DATABASE_URL set: usage records and the ledger are immutable there "
            "(drop or recreate that database yourself)."
        )
        return 2
    conn, _ = _admin_connection()
    with conn:
        for name in sorted(_existing_databases(conn)):
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(%s))", [name]).fetchone()[0]
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            print(f"bigdata: dropped {name} ({size})")
    return 0


def _prepare_size_database(label: str, previous: str | None) -> dict[str, str]:
    """The environment of the worker for `label`: its own database, grown from the previous size's."""
    environment = dict(os.environ)
    environment.setdefault("DJANGO_SETTINGS_MODULE", "billing_site.settings")
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("ACCESS_LOG_LEVEL", "WARNING")  # thousands of timed requests: keep the terminal for the figures
    if os.environ.get("DATABASE_URL"):
        return environment
    conn, params = _admin_connection()
    name = DATABASE_PREFIX + label
    with conn:
        existing = _existing_databases(conn)
        if name not in existing:
            template = DATABASE_PREFIX + previous if previous and DATABASE_PREFIX + previous in existing else None
            started = time.monotonic()
            conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
            if template:
                print(f"bigdata: {name} starts as a copy of {template} ({time.monotonic() - started:.1f}s)", flush=True)
    environment["DATABASE_URL"] = f"postgres://{params['USER']}@/{name}?host={params['HOST']}"
    environment.setdefault("TOLLGATE_ENV", "development")
    # Each size's database numbers its rows alike: keep their cache entries apart.
    environment["CACHE_KEY_PREFIX"] = f"bench-bigdata-{label}"
    return environment


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    os.chdir(env.BASE_DIR)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    env.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    environments = {}
    results: dict[str, dict] = {}
    previous = None
    for label in args.sizes:  # load (or find) every size first
        environments[label] = _prepare_size_database(label, previous)
        print(f"\n=== {label}: {SIZES[label]:,} usage records ===", flush=True)
        loaded = _run_worker(label, "load", environments[label], argv, stamp)
        if loaded is None:
            return 1
        results[label] = loaded
        previous = label
    load_average: dict[str, tuple[float, ...]] = {}
    if not args.load_only:
        load_average["before"] = os.getloadavg()
        # Interleaved rounds (10k, 1M, 10M, 10k, …): a shared machine's load drifts, and each size should
        # see the same drift; every page's samples are pooled over the rounds.
        for round_number in range(args.rounds):
            for label in args.sizes:
                print(f"\n--- round {round_number + 1} of {args.rounds}: {label} ---", flush=True)
                # The slowest statement query is explained once: at the largest size, in the last round.
                last = round_number == args.rounds - 1 and label == args.sizes[-1] and "statements" in args.parts
                measured = _run_worker(label, "measure", environments[label], [*argv, "--explain"] if last else argv, stamp)
                if measured is None:
                    return 1
                for call in measured["statements"]:
                    pooled = results[label].setdefault("statement_samples", {}).setdefault(f"{call['who']}|{call['call']}", call)
                    if pooled is not call:
                        for field in ("seconds", "db_seconds", "queries"):  # query_names: the same in every call
                            pooled[field] = pooled[field] + call[field]
                if measured.get("explain"):
                    results[label]["statement_explain"] = measured["explain"]
                for page in measured["pages"]:
                    pooled = results[label].setdefault("samples", {}).setdefault(f"{page['who']}|{page['page']}", dict(page))
                    if pooled is not page:
                        pooled["seconds"] = pooled["seconds"] + page["seconds"]
                        pooled["db_seconds"] = pooled["db_seconds"] + page["db_seconds"]
        load_average["after"] = os.getloadavg()
        print(
            "\nload average (1, 5, 15 min) on "
            f"{os.cpu_count()} cores: before the rounds {', '.join(f'{x:.2f}' for x in load_average['before'])}, "
            f"after {', '.join(f'{x:.2f}' for x in load_average['after'])}"
        )
        if "pages" in args.parts:
            report(list(results.values()), args)
        if "statements" in args.parts:
            report_statements(list(results.values()), args)
    summary = env.RESULTS_DIR / f"bigdata-{stamp}.json"
    summary.write_text(
        json.dumps(
            {"started_at": stamp, "args": vars(args), "load_average": load_average, "sizes": list(results.values())},
            indent=2,
            default=str,
        )
    )
    print(f"\nJSON: {summary}")
    return 0


def _run_worker(label: str, phase: str, environment: dict[str, str], argv: list[str], stamp: str) -> dict | None:
    out = env.RESULTS_DIR / f"bigdata-{stamp}-{label}-{phase}.json"
    command = [sys.executable, "-m", "bench.bigdata", *argv, "--worker", label, "--phase", phase, "--out", str(out)]
    finished = subprocess.run(command, env=environment, check=False)
    if finished.returncode != 0:
        print(f"bigdata: the {label} {phase} run failed (exit {finished.returncode})")
        return None
    result = json.loads(out.read_text())
    out.unlink()
    return result


# --- the worker: one size --------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from bench import bigdata_load, fixtures

    target = SIZES[args.worker]
    if args.phase == "measure":
        data = bigdata_load.ensure_fixtures(small_organizations=args.organizations, quiet=True)
        measured: dict = {"pages": measure(data, args) if "pages" in args.parts else [], "statements": []}
        if "statements" in args.parts:
            measured["statements"] = measure_statements(data, args)
            if args.explain:
                measured["explain"] = explain_statement(data)
        Path(args.out).write_text(json.dumps(measured, default=str))
        return 0
    call_command("migrate", interactive=False, verbosity=0)
    data = bigdata_load.ensure_fixtures(small_organizations=args.organizations)
    result: dict = {"size": args.worker, "records_wanted": target, "database": connection.settings_dict["NAME"]}
    loaded = bigdata_load.loaded_records(data)
    if loaded < target:
        missing = target - loaded
        print(f"bigdata: loading {missing:,} usage records (with {loaded:,} already there)", flush=True)
        seconds = 0.0
        for done, seconds, phases in bigdata_load.load(
            data, count=missing, chunk=args.chunk, large_share=args.large_share, days=args.days, seed=loaded
        ):
            detail = ", ".join(f"{name} {value:.1f}s" for name, value in phases.items())
            print(f"  {done:>12,} records in {seconds:7.1f}s ({done / seconds:,.0f} records/s; last chunk: {detail})", flush=True)
        vacuum = bigdata_load.vacuum_analyze()
        print(f"bigdata: loaded {missing:,} records in {seconds:.1f}s, then VACUUM ANALYZE in {vacuum:.1f}s", flush=True)
        result["load"] = {"records": missing, "seconds": round(seconds, 1), "vacuum_seconds": round(vacuum, 1)}
    result["records"] = bigdata_load.loaded_records(data)
    result["sizes_on_disk"] = _table_sizes()
    print("bigdata: " + ", ".join(f"{k} {v}" for k, v in result["sizes_on_disk"].items()), flush=True)
    result["statement_rows"] = _statement_rows(data)
    if args.verify:
        started = time.monotonic()
        invariants = fixtures.verify_organizations(data.organization_ids)
        result["invariants"] = invariants
        print(
            f"bigdata: money invariants on {len(data.organization_ids)} organizations: "
            f"{'OK' if invariants['ok'] else 'FAIL'} ({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        for check in invariants["checks"]:
            print(f"  {'ok  ' if check['violations'] == 0 else 'FAIL'} {check['name']}: {check['violations']}")
        if not invariants["ok"]:
            return 1
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


def _table_sizes() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class"
            " WHERE relname IN ('metering_usagerecord', 'payments_ledgerentry', 'payments_transfer', 'metering_usagerollup')"
            " ORDER BY relname"
        )
        sizes = dict(cursor.fetchall())
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        sizes["database"] = cursor.fetchone()[0]
    return sizes


# --- measuring -------------------------------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def _deep_page(organization_id: int, wanted: int) -> tuple[int, tuple[datetime, int] | None]:
    """The deep page's number (wanted, or the last page if there are fewer) and the (created_at, id)
    of the record just before it, newest first: where a reader paging with the cursor would be."""
    from metering import selectors

    records = selectors.usage_list(organization_id=organization_id)
    count = records.count()
    page = max(1, min(wanted, (count - 1) // USAGE_PAGE_SIZE + 1))
    offset = (page - 1) * USAGE_PAGE_SIZE
    if offset == 0:
        return page, None
    row = records.values_list("created_at", "id")[offset - 1 : offset].first()
    return page, row


def measure(data, args: argparse.Namespace) -> list[dict]:
    from django.test import Client
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.models import User
    from billing_site.api.pagination import older_cursor
    from billing_site.keyset import Position

    pages = []
    for who, organization_id, user_id in (
        ("large", data.large_id, data.large_owner_id),
        ("small", data.small_id, data.small_owner_id),
    ):
        user = User.objects.get(pk=user_id)
        dashboard = Client()
        dashboard.force_login(user)
        api = Client(headers={"Authorization": f"Bearer {RefreshToken.for_user(user).access_token}"})
        deep, before = _deep_page(organization_id, args.deep_page)
        position = Position(*before) if before else None
        deep_query = f"before={position.encode()}" if position else ""  # the dashboard's Older → link
        deep_cursor = older_cursor(position) if position else ""  # the API's `next` link
        pages += [
            _time(who, REFERENCE + "dashboard pricing", dashboard, "/dashboard/pricing/", args),
            _time(who, "dashboard overview", dashboard, "/dashboard/", args),
            _time(who, "dashboard usage, first page", dashboard, "/dashboard/usage/", args),
            _time(who, "dashboard usage, deep page (cursor)", dashboard, f"/dashboard/usage/?{deep_query}", args, deep=deep),
            _time(who, "dashboard CSV export, first row", dashboard, "/dashboard/usage/export.csv", args, csv=True),
            _time(who, "API usage/summary/", api, "/api/v1/usage/summary/", args),
            _time(who, "API usage/, page 1", api, f"/api/v1/usage/?page_size={USAGE_PAGE_SIZE}", args),
            _time(who, "API usage/, deep page", api, f"/api/v1/usage/?page_size={USAGE_PAGE_SIZE}&page={deep}", args, deep=deep),
            _time(who, "API usage/?cursor=, first page", api, f"/api/v1/usage/?page_size={USAGE_PAGE_SIZE}&cursor=", args),
            _time(
                who,
                "API usage/?cursor=, deep page",
                api,
                f"/api/v1/usage/?page_size={USAGE_PAGE_SIZE}&cursor={deep_cursor}",
                args,
                deep=deep,
            ),
            _time(who, "API usage/export.csv, first row", api, "/api/v1/usage/export.csv", args, csv=True),
        ]
    staff = Client()
    staff.force_login(User.objects.get(pk=data.staff_id))
    for name, path in (
        (REFERENCE + "admin index", "/admin/"),
        ("admin usage records", "/admin/metering/usagerecord/"),
        ("admin ledger entries", "/admin/payments/ledgerentry/"),
        ("admin transfers", "/admin/payments/transfer/"),
        ("admin organizations", "/admin/accounts/organization/"),
    ):
        pages.append(_time("staff", name, staff, path, args))
    return pages


class _DatabaseClock:
    """Sums the wall time of every statement Django sends (the database's share of a request)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started


def _time(
    who: str, name: str, client, path: str, args: argparse.Namespace, *, csv: bool = False, deep: int | None = None
) -> dict:
    """Time GET `path`: to the whole response, or (csv) to the first data row of the stream."""
    from django.db import connection

    seconds, db_seconds = [], []
    for attempt in range(args.warmup + args.requests):
        clock = _DatabaseClock()
        with connection.execute_wrapper(clock):
            started = time.perf_counter()
            response = client.get(path)
            if csv and response.status_code == 200:
                stream = iter(response.streaming_content)
                next(stream)  # the header line, written before any query
                next(stream, None)  # the first record
            elapsed = time.perf_counter() - started
            response.close()
        if response.status_code != 200:
            raise SystemExit(
                f"bigdata: {path} answered {response.status_code} for {who}: {getattr(response, 'content', b'')[:300]!r}"
            )
        if attempt >= args.warmup:
            seconds.append(elapsed)
            db_seconds.append(clock.seconds)
    print(
        f"  {who:<6} {(f'{name} ({deep})' if deep else name):<44} p50 {statistics.median(seconds) * 1000:8.2f} ms"
        f"  (database {statistics.median(db_seconds) * 1000:6.2f} ms)",
        flush=True,
    )
    return {"who": who, "page": name, "path": path, "csv": csv, "deep_page": deep, "seconds": seconds, "db_seconds": db_seconds}


# --- a statement's figures --------------------------------------------------------------------------------------

# The limit: the sums a statement needs from the ledger, in the plainest SQL (no usage-by-service split).
_LIMIT_BALANCE_SQL = (
    "SELECT sum(amount) FROM payments_ledgerentry WHERE organization_id = %s AND account = 'wallet' AND created_at < %s"
)
_LIMIT_KINDS_SQL = (
    "SELECT t.kind, sum(e.amount) FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id"
    " WHERE e.organization_id = %s AND e.account = 'wallet' AND e.created_at >= %s AND e.created_at < %s GROUP BY t.kind"
)


def _statement_month() -> tuple[datetime, datetime]:
    """Last month, UTC: [its first instant, the first of this month) (statements.services.month_start's
    months, without Django: the orchestrator prints it too)."""
    end = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (end - timedelta(days=1)).replace(day=1), end


def _statement_limit(organization_id: int, start: datetime, end: datetime) -> tuple[Decimal, Decimal, dict[str, Decimal]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_LIMIT_BALANCE_SQL, [organization_id, start])
        opening = cursor.fetchone()[0] or Decimal(0)
        cursor.execute(_LIMIT_BALANCE_SQL, [organization_id, end])
        closing = cursor.fetchone()[0] or Decimal(0)
        cursor.execute(_LIMIT_KINDS_SQL, [organization_id, start, end])
        return opening, closing, dict(cursor.fetchall())


def _statement_rows(data) -> dict[str, dict[str, int]]:
    """What last month's statement reads, per measured organization: its wallet entries up to the
    month's end, those in the month, and the month's usage records."""
    from django.db import connection

    start, end = _statement_month()
    rows = {}
    with connection.cursor() as cursor:
        for who, organization_id in (("large", data.large_id), ("small", data.small_id)):
            cursor.execute(
                "SELECT count(*), count(*) FILTER (WHERE created_at >= %s) FROM payments_ledgerentry"
                " WHERE organization_id = %s AND account = 'wallet' AND created_at < %s",
                [start, organization_id, end],
            )
            entries, in_month = cursor.fetchone()
            cursor.execute(
                "SELECT count(*) FROM metering_usagerecord WHERE organization_id = %s AND created_at >= %s AND created_at < %s",
                [organization_id, start, end],
            )
            rows[who] = {"entries_before_end": entries, "entries_in_month": in_month, "records_in_month": cursor.fetchone()[0]}
    return rows


class _StatementClock(_DatabaseClock):
    """A _DatabaseClock that also keeps each statement's SQL, parameters and time, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[tuple[str, Any, float]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            self.statements.append((sql, params, elapsed))


def measure_statements(data, args: argparse.Namespace) -> list[dict]:
    """statement_figures for last month against its limit, for the large and the small organization:
    first checked equal, then timed, the two calls alternating (each sees the same drift)."""
    from statements.selectors import statement_figures

    start, end = _statement_month()
    calls = []
    for who, organization_id in (("large", data.large_id), ("small", data.small_id)):

        def figures(organization_id: int = organization_id):
            return statement_figures(organization_id=organization_id, start=start, end=end)

        def limit(organization_id: int = organization_id):
            return _statement_limit(organization_id, start, end)

        got, want = figures(), limit()
        by_kind: dict[str, Decimal] = {}
        for line in got.lines:
            by_kind[line.kind] = by_kind.get(line.kind, Decimal(0)) + line.amount
        if (got.opening_balance, got.closing_balance, by_kind) != want:
            raise SystemExit(f"bigdata: statement_figures and the raw SQL disagree for {who}: {got} != {want}")
        calls += _time_calls(who, {STATEMENT_FIGURES: figures, STATEMENT_LIMIT: limit}, args)
    return calls


def _time_calls(who: str, calls: dict, args: argparse.Namespace) -> list[dict]:
    """Time each function of `calls` in-process, alternating between them, warm-up calls untimed."""
    samples = {
        name: {"who": who, "call": name, "seconds": [], "db_seconds": [], "queries": [], "query_names": []} for name in calls
    }
    from django.db import connection

    for attempt in range(args.warmup + args.requests):
        for name, function in calls.items():
            clock = _StatementClock()
            with connection.execute_wrapper(clock):
                started = time.perf_counter()
                function()
                elapsed = time.perf_counter() - started
            if attempt >= args.warmup:
                samples[name]["seconds"].append(elapsed)
                samples[name]["db_seconds"].append(clock.seconds)
                samples[name]["queries"].append([seconds for _, _, seconds in clock.statements])
                samples[name]["query_names"] = [_sql_label(sql) for sql, _, _ in clock.statements]
    for sample in samples.values():
        print(
            f"  {who:<6} {sample['call']:<44} p50 {statistics.median(sample['seconds']) * 1000:8.2f} ms"
            f"  (database {statistics.median(sample['db_seconds']) * 1000:6.2f} ms)",
            flush=True,
        )
    return list(samples.values())


def _sql_label(sql: str) -> str:
    """A statement's first words, on one line: tells a call's statements apart in the report."""
    words = " ".join(sql.split())
    return words if len(words) <= 40 else words[:39] + "…"


def explain_statement(data) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of statement_figures' slowest statement for the large organization."""
    from django.db import connection

    from statements.selectors import statement_figures

    start, end = _statement_month()
    clock = _StatementClock()
    with connection.execute_wrapper(clock):
        statement_figures(organization_id=data.large_id, start=start, end=end)
    index = max(range(len(clock.statements)), key=lambda i: clock.statements[i][2])
    sql, params, seconds = clock.statements[index]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    name = f"statement {index + 1} of {len(clock.statements)}, {_sql_label(sql)}"
    print(f"\n  the slowest of statement_figures' statements for the large organization: {name} ({seconds * 1000:.1f} ms)")
    print("\n".join("    " + line for line in plan.splitlines()), flush=True)
    return {"query": name, "ms": round(seconds * 1000, 2), "plan": plan}


# --- the report ------------------------------------------------------------------------------------------------


def _ms(values: list[float], p: float) -> float:
    return _percentile(values, p) * 1000


def report(results: list[dict], args: argparse.Namespace) -> None:
    labels = [r["size"] for r in results]
    counts = ", ".join(f"{r['records']:,}" for r in results)
    print(
        f"\nPages at {counts} usage records: p50 / p95 in ms of {args.rounds} x {args.requests} requests each (rounds "
        f"interleaved over the sizes), in-process through Django's test Client; 'db' is the p50 of the time spent in "
        f"the database's statements. Aims: p95 < {AIM_PAGE_P95_MS:.0f} ms for pages, first CSV row < "
        f"{AIM_CSV_FIRST_ROW_MS:.0f} ms, {labels[-1]}/{labels[0]} p95 within {AIM_FLAT_RATIO:.0f}x. Reference rows read "
        "no usage: they show what the machine's own load does to any page."
    )
    for r in results:
        if "load" in r:
            load = r["load"]
            print(
                f"  {r['size']}: loaded {load['records']:,} records in {load['seconds']:.0f}s "
                f"({load['records'] / max(load['seconds'], 0.001):,.0f}/s), VACUUM ANALYZE {load['vacuum_seconds']:.0f}s"
            )
        print(f"  {r['size']}: on disk " + ", ".join(f"{k} {v}" for k, v in r["sizes_on_disk"].items()))
    head = (
        f"{'who':<6} {'page':<44}"
        + "".join(f" {label + ' p50/p95 (db)':>26}" for label in labels)
        + f" {'ratio p95':>10} {'ratio db':>9}  aims"
    )
    print(head)
    print("-" * len(head))
    pooled = [r["samples"] for r in results]
    missed = 0
    for key, first in pooled[0].items():
        cells = [p.get(key) for p in pooled]
        text = "".join(
            f" {_ms(c['seconds'], 50):8.1f}/{_ms(c['seconds'], 95):<7.1f} ({_ms(c['db_seconds'], 50):5.1f})"
            if c
            else f" {'-':>26}"
            for c in cells
        )
        last = cells[-1]
        ratio = _ms(last["seconds"], 95) / _ms(first["seconds"], 95) if last else None
        db_ratio = _ms(last["db_seconds"], 50) / max(_ms(first["db_seconds"], 50), 0.05) if last else None
        limit = AIM_CSV_FIRST_ROW_MS if first["csv"] else AIM_PAGE_P95_MS
        reference = first["page"].startswith(REFERENCE)
        ok = last is not None and _ms(last["seconds"], 95) < limit and (ratio is None or ratio <= AIM_FLAT_RATIO)
        missed += not ok and not reference
        verdict = "" if reference else "met" if ok else "NOT met"
        ratios = f"{ratio:9.2f}x {db_ratio:8.2f}x" if ratio is not None and db_ratio is not None else f"{'-':>10} {'-':>9}"
        print(f"{first['who']:<6} {first['page']:<44}{text} {ratios}  {verdict}")
    print(f"{missed} rows miss an aim" if missed else "every row meets its aims")
    deep = {r["size"]: sorted({(p["who"], p["deep_page"]) for p in r["samples"].values() if p["deep_page"]}) for r in results}
    print("deep pages (who, page number): " + "; ".join(f"{size}: {pages}" for size, pages in deep.items()))


def report_statements(results: list[dict], args: argparse.Namespace) -> None:
    labels = [r["size"] for r in results]
    start, end = (moment.date() for moment in _statement_month())
    print(
        f"\nA statement's figures for {start} to {end} (exclusive), in-process: {STATEMENT_FIGURES} is "
        f"statements.selectors.statement_figures (opening, closing, per-kind and per-service sums); its limit is the same "
        f"sums as the plainest SQL (two balance sums and a GROUP BY kind, no usage-by-service split), checked equal to "
        f"the figures. p50 / p95 in ms of {args.rounds} x {args.requests} calls each, alternating with the limit, rounds "
        f"interleaved over the sizes; 'db' is the p50 of the time in the database's statements. Aim: p95 < "
        f"{AIM_STATEMENT_P95_MS:.0f} ms for the large organization at {labels[-1]}."
    )
    for r in results:
        rows = r.get("statement_rows", {})
        print(
            f"  {r['size']}: "
            + "; ".join(
                f"{who}: {n['entries_before_end']:,} wallet entries before the month's end, {n['entries_in_month']:,} "
                f"in it, {n['records_in_month']:,} usage records in it"
                for who, n in rows.items()
            )
        )
    head = (
        f"{'who':<6} {'call':<44}" + "".join(f" {label + ' p50/p95 (db)':>26}" for label in labels) + f" {'ratio p95':>10}  aim"
    )
    print(head)
    print("-" * len(head))
    pooled = [r["statement_samples"] for r in results]
    for key, first in pooled[0].items():
        cells = [p.get(key) for p in pooled]
        text = "".join(
            f" {_ms(c['seconds'], 50):8.1f}/{_ms(c['seconds'], 95):<7.1f} ({_ms(c['db_seconds'], 50):5.1f})"
            if c
            else f" {'-':>26}"
            for c in cells
        )
        last = cells[-1]
        ratio = f"{_ms(last['seconds'], 95) / _ms(first['seconds'], 95):9.2f}x" if last else f"{'-':>10}"
        verdict = ""
        if first["who"] == "large" and first["call"] == STATEMENT_FIGURES and last:
            verdict = "met" if _ms(last["seconds"], 95) < AIM_STATEMENT_P95_MS else "NOT met"
        print(f"{first['who']:<6} {first['call']:<44}{text} {ratio}  {verdict}")
        if first["call"] == STATEMENT_FIGURES:
            # Each of its statements' p50, in the order sent: where the time goes.
            for index, name in enumerate(first["query_names"]):
                parts = []
                for c in cells:
                    times = [q[index] for q in c["queries"] if len(q) > index] if c else []
                    parts.append(f" {f'{statistics.median(times) * 1000:.1f} ms p50':>26}" if times else f" {'-':>26}")
                print(f"{'':<6}   {name:<41}" + "".join(parts))
    print(f"{'':<6} {'figures / limit, p50 (p95)':<44}", end="")
    for who in ("large", "small"):
        ratios = []
        for p in pooled:
            figures, limit = p.get(f"{who}|{STATEMENT_FIGURES}"), p.get(f"{who}|{STATEMENT_LIMIT}")
            if figures and limit:
                ratios.append(
                    f"{_ms(figures['seconds'], 50) / _ms(limit['seconds'], 50):.2f}x"
                    f" ({_ms(figures['seconds'], 95) / _ms(limit['seconds'], 95):.2f}x)"
                )
        print(f"\n{'':<6}   {who:<41}" + "".join(f" {ratio:>26}" for ratio in ratios), end="")
    print()
    for r in results:
        if r.get("statement_explain"):
            explain = r["statement_explain"]
            print(f"\nat {r['size']}, the slowest statement for the large organization: {explain['query']} ({explain['ms']} ms)")
            print("\n".join("    " + line for line in explain["plan"].splitlines()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.drop:
        return drop()
    if args.worker:
        return worker(args)
    return orchestrate(args, argv)


if __name__ == "__main__":
    sys.exit(main())
