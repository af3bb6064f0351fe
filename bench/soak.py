"""`python -m bench.soak` (`make soak`): a soak of mixed traffic at a steady rate, with a real Celery worker.

Starts the app as `make bench` does (gunicorn, sync workers, on the bench's own database) plus Celery's
worker and beat on a queue of their own, signs in one owner per organization, then sends a fixed arrival rate (open
loop) of single debits, batches, holds (reserve, then capture or release), dashboard pages and API reads,
and recharges through the sandbox provider (POST payments/recharge/, then the signed notification the
provider would send, so that the worker settles it). Reports per minute the requests by kind with their
p50/p99, errors, the memory of every process at the start and end, and the money invariants on every
organization it touched. A table on stdout, JSON in bench/results/<timestamp>-soak.json; the exit status
is non-zero when an aim is not met.

    make soak                                   # 15 minutes at 150 requests/s after a 1-minute warm-up
    make soak SOAK_ARGS="--quick"               # 1 minute after a 15-second warm-up
    make soak SOAK_ARGS="--minutes 5 --rate 200 --orgs 50"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import env

SEED_DAILY_REQUESTS = 10_000_000  # the seed's average: 10M a day ≈ 116 requests/s
SEED_RATE = SEED_DAILY_REQUESTS / 86_400
SEED_LATENCY_MS = 50.0  # "… at under 50 ms"
RATE_TOLERANCE = 0.97  # a measured minute must carry at least 97% of the target requests


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, help="measured minutes (default 15; --quick: 1)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the measured minutes (default 60; --quick: 15)")
    parser.add_argument("--quick", action="store_true", help="a 1-minute run after a 15-second warm-up")
    parser.add_argument(
        "--rate", type=float, default=150.0, help=f"requests per second, all kinds (default 150; > {SEED_RATE:.0f})"
    )
    parser.add_argument("--orgs", type=int, default=20, help="organizations, each with an owner and a key (default 20)")
    parser.add_argument("--batch-size", type=int, default=20, help="events per usage/batch/ request (default 20)")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn sync workers (default 4, as make bench)")
    parser.add_argument("--celery-concurrency", type=int, default=2, help="Celery pool processes (default 2, as make run)")
    parser.add_argument("--senders", type=int, default=32, help="client threads that send the due requests (default 32)")
    parser.add_argument(
        "--max-lag", type=float, default=30.0, help="seconds a request may wait for a free sender before it is dropped (an error)"
    )
    parser.add_argument("--max-p99-ms", type=float, default=250.0, help="aim: every kind's p99 in every minute (default 250)")
    parser.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to wait for the last settlements")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the mix (default: random, printed)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before the load, wait up to SECONDS for the machine to be busy with < 0.5 cores (shared machines)",
    )
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench's own database first")
    args = parser.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (1 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (15.0 if args.quick else 60.0)
    args.seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.minutes < 1 or args.rate <= 0 or args.orgs < 1 or args.senders < 1 or not 1 <= args.batch_size <= 1000:
        parser.error("--minutes, --rate, --orgs and --senders must be positive, --batch-size 1..1000")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# --- the Celery worker -------------------------------------------------------------------------------------


def wait_settled(event_ids: list[str], timeout: float) -> tuple[dict[str, dict[str, Any]], float]:
    from bench import soak_setup

    started = time.monotonic()
    while True:
        rows = soak_setup.settlement(event_ids)
        done = sum(1 for r in rows.values() if r["processed_at"] is not None)
        if done == len(event_ids) or time.monotonic() - started > timeout:
            return rows, time.monotonic() - started
        time.sleep(1.0)


def settlement_by_minute(rows: dict[str, dict[str, Any]], *, origin_wall: float, warmup: float, minutes: int) -> list[dict]:
    """Webhook stored → payment settled by the worker, in ms, per minute of arrival (server timestamps)."""
    from bench.run import percentile
    from bench.soak_load import bucket_of

    buckets: dict[int, list[float]] = {}
    unsettled: dict[int, int] = {}
    for row in rows.values():
        index = bucket_of(row["received_at"].timestamp() - origin_wall, warmup=warmup, minutes=minutes)
        if row["processed_at"] is None:
            unsettled[index] = unsettled.get(index, 0) + 1
            continue
        buckets.setdefault(index, []).append((row["processed_at"] - row["received_at"]).total_seconds() * 1000)
    out = []
    for index in sorted(set(buckets) | set(unsettled)):
        lags = sorted(buckets.get(index, []))
        out.append(
            {
                "minute": "warm-up" if index < 0 else index + 1,
                "settled": len(lags),
                "unsettled": unsettled.get(index, 0),
                "p50_ms": percentile(lags, 50),
                "p99_ms": percentile(lags, 99),
            }
        )
    return out


def log_error_lines(path: Path) -> list[str]:
    try:
        with path.open(errors="replace") as log:
            return [line.rstrip() for line in log if " ERROR " in line or "[ERROR]" in line or line.startswith("Traceback")]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    os.chdir(env.BASE_DIR)
    run_started = datetime.now(UTC)
    stamp = run_started.strftime("%Y%m%dT%H%M%SZ")
    env.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run_id = f"s{stamp}{secrets.token_hex(3)}"
    queue = f"tollgate-soak-{run_id}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.soak_settings"
    os.environ["SOAK_CELERY_QUEUE"] = queue
    target = env.prepare_database(fresh=args.fresh)

    import django

    django.setup()
    import psutil
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from bench import cpu, fixtures, soak_memory, soak_setup, web
    from bench.soak_load import OpenLoop, arrival_rate, arrivals, by_minute, clock_from, summarize_kind
    from bench.soak_processes import Celery, Monitor, progress_line, redis_processes
    from bench.soak_traffic import MIX, REQUESTS_PER_ARRIVAL, Http, Session, Traffic

    print("soak: migrating the bench database", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    database = connection.settings_dict["NAME"]
    tenants = soak_setup.ensure(count=args.orgs, run_label=run_id)
    organization_ids = [t.organization_id for t in tenants]
    machine = env.machine_info()
    app_env = env.app_environment()
    gunicorn = web.Gunicorn(
        env=app_env,
        workers=args.web_workers,
        config=env.BASE_DIR / "gunicorn.conf.py",
        log_path=env.RESULTS_DIR / f"{stamp}-soak-gunicorn.log",
    )
    worker = Celery(
        env=app_env,
        queue=queue,
        concurrency=args.celery_concurrency,
        log_path=env.RESULTS_DIR / f"{stamp}-soak-celery.log",
        schedule=env.RESULTS_DIR / f".{stamp}-soak-celerybeat-schedule",
    )
    rate = arrival_rate(request_rate=args.rate, mix=MIX, requests_per_arrival=REQUESTS_PER_ARRIVAL)
    duration = args.warmup + 60.0 * args.minutes
    print(
        f"soak: {args.minutes} min after {args.warmup:g} s warm-up at {args.rate:g} requests/s ({rate:.1f} arrivals/s), "
        f"{args.orgs} organizations, {args.web_workers} gunicorn workers, Celery concurrency {args.celery_concurrency}, "
        f"seed {args.seed}; {target.description}",
        flush=True,
    )
    interrupted = False
    loop = traffic = monitor = None
    wallets_before: dict[int, dict[str, Decimal]] = {}
    memory_start: list[dict[str, Any]] = []
    memory_end: list[dict[str, Any]] = []
    cpu_cores: dict[str, float] = {}
    settled_rows: dict[str, dict[str, Any]] = {}
    settle_wait = load_seconds = 0.0
    origin_wall = 0.0
    try:
        gunicorn.start()
        worker.start()
        http_client = Http(gunicorn.port)
        groups: dict[str, Callable[[], list[psutil.Process]]] = {
            "gunicorn": gunicorn.processes,
            "celery": worker.worker_processes,
            "celery beat": worker.beat_processes,
            "postgres": lambda: cpu.postgres(target.postmaster_pid, database),
            "redis": redis_processes,
            "soak": lambda: [psutil.Process()],
        }
        memory_start = soak_memory.snapshot(groups)
        wallets_before = soak_setup.wallets(organization_ids)
        origin = time.monotonic() + 1.0  # sign-ins first; the load's clock starts after them
        clock = clock_from(origin)
        traffic = Traffic(
            http_client=http_client,
            sessions=[Session(tenant=t) for t in tenants],
            service=soak_setup.SERVICE_SLUG,
            webhook_secret=settings.SANDBOX_WEBHOOK_SECRET,
            key_prefix=f"{run_id}-",
            batch_size=args.batch_size,
            clock=clock,
            seed=args.seed,
        )
        for session in traffic.sessions:
            traffic.sign_in(session)
        if args.wait_quiet > 0:
            waited, busy = cpu.wait_quiet(limit_cores=0.5, timeout=args.wait_quiet)
            print(f"soak: waited {waited:.0f} s for a quieter machine ({busy:.2f} cores busy)", flush=True)
        origin = time.monotonic()
        origin_wall = time.time()
        traffic.clock = clock = clock_from(origin)
        loop = OpenLoop(handlers=traffic.handlers, senders=args.senders, clock=clock, max_lag=args.max_lag)
        running = loop

        def progress(row: dict[str, Any]) -> None:
            print(progress_line(running.samples, row, warmup=args.warmup, minutes=args.minutes), flush=True)

        monitor = Monitor(
            groups=groups, clock=clock, warmup=args.warmup, minutes=args.minutes, backlog=worker.backlog, progress=progress
        )
        monitor.start()
        window = cpu.Window(groups).start()
        loop.run(arrivals(rate=rate, start=0.0, end=duration, mix=MIX, rng=random.Random(args.seed)))
        cpu_cores, load_seconds = window.stop(), clock()
        monitor.stopped.set()
        monitor.join(timeout=60)
        memory_end = monitor.sample("end")["processes"]
        print(f"soak: load done; waiting for the worker to settle {len(traffic.oracle.event_ids)} notifications", flush=True)
        settled_rows, settle_wait = wait_settled(traffic.oracle.event_ids, args.settle_timeout)
    except KeyboardInterrupt:
        interrupted = True
        print("\nsoak: interrupted; stopping and reporting what was measured", flush=True)
    finally:
        if monitor is not None:
            monitor.stopped.set()
        gunicorn.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            worker.forget_queue()
        soak_setup.revoke_keys(tenants)

    samples = loop.samples if loop else []
    minutes = by_minute(samples, warmup=args.warmup, minutes=args.minutes)
    measured = [s for s in samples if s.due >= args.warmup]
    kinds = sorted({s.kind for s in samples})
    overall = {kind: summarize_kind([s for s in measured if s.kind == kind]) for kind in kinds}
    settlement = settlement_by_minute(settled_rows, origin_wall=origin_wall, warmup=args.warmup, minutes=args.minutes)

    print("soak: checking the money invariants on the soak organizations", flush=True)
    checks = list(fixtures.verify_organizations(organization_ids)["checks"])
    oracle = traffic.oracle if traffic else None
    if oracle is not None:
        checks += soak_setup.check_payments(
            organization_ids=organization_ids,
            expected=oracle.payments,
            unnotified=oracle.recharged - set(oracle.payments),
            since=run_started,
        )
        holds_expire_every: Any = settings.CELERY_BEAT_SCHEDULE["holds-expire"]["schedule"]
        beat_period = timedelta(seconds=holds_expire_every)
        checks += soak_setup.check_holds(
            organization_ids=organization_ids, since=run_started, now=datetime.now(UTC) - beat_period, ended=oracle.holds
        )
        checks.append(
            soak_setup.check_records(organization_ids=organization_ids, key_prefix=f"{run_id}-", answered=oracle.events_answered)
        )
        wallets_after = soak_setup.wallets(organization_ids)
        off = [
            org
            for org in organization_ids
            if wallets_after[org]["balance"] - wallets_before[org]["balance"]
            != oracle.credited.get(org, Decimal(0)) - oracle.charged.get(org, Decimal(0))
        ]
        checks.append(
            {
                "name": "each wallet moved by exactly (recharges notified succeeded − costs answered), as the client saw",
                "violations": len(off),
                "sample": off[:5],
            }
        )
    after_warmup = next((s["processes"] for s in (monitor.samples if monitor else []) if s["label"] == "after warm-up"), None)
    memory = soak_memory.verdict(after_warmup or memory_start, memory_end)
    log_errors = {
        "gunicorn": log_error_lines(gunicorn.log_path),
        "celery": log_error_lines(worker.log_path),
    }
    result: dict[str, Any] = {
        "started_at": stamp,
        "interrupted": interrupted,
        "args": vars(args),
        "machine": machine,
        "database": target.description,
        "arrivals_per_s": rate,
        "mix": MIX,
        "minutes": minutes,
        "overall": overall,
        "settlement": settlement,
        "settle_wait_s": round(settle_wait, 1),
        "cpu_cores": cpu_cores,
        "load_seconds": round(load_seconds, 1),
        "max_in_flight": loop.max_in_flight if loop else None,
        "memory": {
            "start": memory_start,
            "timeline": monitor.samples if monitor else [],
            "verdict": memory,
            "limit": {"growth": soak_memory.GROWTH_LIMIT, "floor_bytes": soak_memory.GROWTH_FLOOR},
        },
        "invariants": checks,
        "log_error_lines": {k: v[:20] for k, v in log_errors.items()},
        "oracle": {
            "credited": str(sum(oracle.credited.values(), Decimal(0))) if oracle else None,
            "charged": str(sum(oracle.charged.values(), Decimal(0))) if oracle else None,
            "payments": len(oracle.payments) if oracle else 0,
            "notifications": len(oracle.event_ids) if oracle else 0,
            "token_refreshes": oracle.token_refreshes if oracle else 0,
            "holds": len(oracle.holds) if oracle else 0,
            "events_answered": oracle.events_answered if oracle else 0,
        },
    }
    result["aims"] = aims(result, args, memory, checks, log_errors, settled_rows, interrupted)
    from bench import soak_report

    soak_report.print_all(result, args)
    out_path = env.RESULTS_DIR / f"{stamp}-soak.json"
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON: {out_path}")
    if interrupted:
        return 130
    return 0 if all(a["ok"] for a in result["aims"]) else 1


def aims(result, args, memory, checks, log_errors, settled_rows, interrupted) -> list[dict[str, Any]]:
    from bench import soak_memory

    measured = [m for m in result["minutes"] if m["minute"] != "warm-up"]
    not_sent = sum(m["not_sent"] for m in result["minutes"])
    wrong = sum(m["errors"] for m in result["minutes"]) - not_sent
    slowest_rate = min((m["requests"] / 60.0 for m in measured), default=0.0)
    worst_p99 = max(
        ((k["p99_ms"] or 0.0, m["minute"], kind) for m in measured for kind, k in m["kinds"].items()), default=(0.0, None, None)
    )
    usage_p50 = max((m["kinds"].get("usage", {}).get("p50_ms") or 0.0 for m in measured), default=0.0)
    notified = result["oracle"]["notifications"]
    unsettled = notified - sum(1 for r in settled_rows.values() if r["processed_at"] is not None)
    violations = sum(c["violations"] for c in checks)
    log_lines = sum(len(v) for v in log_errors.values())

    def aim(name: str, value: str, ok: bool) -> dict[str, Any]:
        return {"aim": name, "value": value, "ok": bool(ok) and not interrupted}

    return [
        aim(f"target rate above the seed's average ({SEED_RATE:.0f}/s)", f"{args.rate:g}/s", args.rate > SEED_RATE),
        aim(
            f"every measured minute carried >= {RATE_TOLERANCE:.0%} of the target",
            f"slowest {slowest_rate:.1f}/s",
            len(measured) == args.minutes and slowest_rate >= RATE_TOLERANCE * args.rate,
        ),
        aim("wrong answers: not the expected 2xx, or no answer (expected refusals: none)", str(wrong), wrong == 0),
        aim(f"requests dropped, unsent {args.max_lag:g} s after due (the server fell behind)", str(not_sent), not_sent == 0),
        aim(
            f"POST usage/ p50 in every minute <= {SEED_LATENCY_MS:g} ms",
            f"worst {usage_p50:.1f} ms",
            usage_p50 <= SEED_LATENCY_MS,
        ),
        aim(
            f"every kind's p99 in every minute <= {args.max_p99_ms:g} ms",
            f"worst {worst_p99[0]:.1f} ms ({worst_p99[2]}, minute {worst_p99[1]})",
            worst_p99[0] <= args.max_p99_ms,
        ),
        aim(
            f"every notified recharge settled by the worker within {args.settle_timeout:g} s of the end",
            f"{unsettled} of {notified} unsettled",
            unsettled == 0,
        ),
        aim(
            f"memory flat (anonymous RSS grows < {soak_memory.GROWTH_LIMIT:.0%} or < {soak_memory.GROWTH_FLOOR // soak_memory.MIB} MiB "
            "after warm-up; no worker replaced)",
            "ok" if memory["ok"] else f"{len(memory['failures'])} failed",
            memory["ok"],
        ),
        aim("money invariants on every soak organization", f"{violations} violations", violations == 0),
        aim("no error or traceback line in the web and worker logs", str(log_lines), log_lines == 0),
    ]


if __name__ == "__main__":
    sys.exit(main())
