"""`make bench` (python -m bench.run): the debit path, measured in one run on whatever machine runs it.

  (1) raw      the app's debit transaction as raw SQL through psycopg, no Django (bench/raw.py)
      classic  the 6-round-trip SELECT … FOR UPDATE version, for reference
  (2c) ceiling a bare Django + DRF view in the same deployment doing only the debit (bench/ceiling.py)
  (2) http     POST /api/v1/usage/ through gunicorn (sync, 4 workers), loaded by wrk
  (3) batch    POST /api/v1/usage/batch/ with 1,000 events per request, in events/s
  (2t) tiered  POST usage/ as (2), on a service with a tiered price whose boundaries each window crosses
  (2p) plan    POST usage/ as (2), on a service the organizations' plan includes, the allowance running out
               in each window (bench/positional.py; "Pricing models" in docs/performance.md)
  (2g) credits POST usage/ as (2), from organizations with three live credit grants and a hard monthly
               budget, each window's money checked (bench/credits.py; "Credits and budgets" in docs/performance.md)
  (4) stripes  one high-volume organization: (1) and (2) with its wallet striped vs single-row, same run
  (5) gateway  the AI gateway: a fake OpenAI upstream directly vs through the gateway (latency added,
               throughput, time to first byte), 200 slow streams (memory, POST usage/ beside them), and
               where the gateway's time goes (bench/gateway.py, bench/gateway_profile.py)

each at 1, 16 and 64 clients, on one hot wallet and on 1,000 spread wallets; then a cProfile of
POST usage/ in-process, and the money invariants checked on the bench organizations.
Results: a table on stdout and JSON in bench/results/<timestamp>.json.

    make bench                                   # ~10 s per cell
    make bench BENCH_ARGS="--quick"              # a smoke run of a few seconds per cell
    make bench BENCH_ARGS="--duration 20 --repeat 3 --cases raw,http --clients 16"
    make bench BENCH_ARGS="--cases gateway --wait-quiet 30"  # the gateway alone (--quick: a smoke run)
    make bench BENCH_ARGS="--cases http,tiered,plan --clients 16 --repeat 3"  # the pricing models vs per-unit
    make bench BENCH_ARGS="--cases http,credits --clients 16 --repeat 3"  # grants and budgets vs per-unit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import credits as credits_case
from bench import env
from bench import gateway as gateway_case

CASES = {
    "raw": "(1) raw SQL debit",
    "twostmt": "(1'') raw SQL, 4 round trips",
    "classic": "(1') raw SQL, 6 round trips",
    "ceiling": "(2c) bare DRF view, debit",
    "http": "(2) POST usage/",
    "batch": "(3) POST usage/batch/",
    "tiered": "(2t) POST usage/, tiered",
    "plan": "(2p) POST usage/, plan",
    "credits": "(2g) POST usage/, credits",
    "stripes": "(4) one high-volume org",
    "gateway": "(5) AI gateway",
}
UNITS = {
    "raw": "tx/s",
    "twostmt": "tx/s",
    "classic": "tx/s",
    "ceiling": "req/s",
    "http": "req/s",
    "batch": "events/s",
    "tiered": "req/s",
    "plan": "req/s",
    "credits": "req/s",
    "stripes": "tx/s",
    "gateway": "req/s",
}
HIGH_VOLUME_AIM = 2.5  # striped / single-row throughput of one organization, at 16 and 64 clients
MAX_ERROR_RATE = 0.01
# Issue 11's aims, each a ratio to a limit measured in the same run (docs/performance.md).
AIMS = {
    "p50_vs_ceiling_1": 1.0,  # POST usage/ p50 at 1 client <= the bare view's (2c)
    "p50_vs_raw_1": 2.0,  # ... and <= 2x the raw statement's latency (1)
    "hot_ratio_16": 0.70,  # throughput at 16 clients >= 0.70x the raw statement, one hot wallet
    "spread_ratio_16": 0.40,  # ... >= 0.40x on spread wallets
    "batch_events_per_s": 20_000,  # usage/batch/ on spread wallets, 16 clients
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 10; --quick: 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each cell (default 2; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short cells and a short profile")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated client counts (default 1,16,64)")
    parser.add_argument("--modes", default="hot,spread", help="hot, spread or both (default both)")
    parser.add_argument(
        "--cases",
        default="raw,classic,ceiling,http,batch",
        help="any of raw,twostmt,classic,ceiling,http,batch,tiered,plan,credits,stripes,gateway; "
        "default raw,classic,ceiling,http,batch",
    )
    parser.add_argument(
        "--tier-step",
        type=int,
        help="(2t): units between tier boundaries (default: the warm-up's rate x duration / 3, 2-3 crossed per window)",
    )
    parser.add_argument(
        "--plan-free-share",
        type=float,
        default=0.5,
        help="(2p): free units granted before each window, as a share of the events it should see (default 0.5)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run the whole matrix N times, interleaved; report medians")
    parser.add_argument("--spread-orgs", type=int, default=1000, help="organizations for the spread mode (default 1000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch request (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--stripes", type=int, default=8, help="(4): the high-volume wallet's stripes (default 8)")
    parser.add_argument(
        "--gunicorn-config",
        default=None,
        help="gunicorn config file, or `plain` (no access log); default gunicorn.conf.py when present",
    )
    parser.add_argument("--profile-requests", type=int, help="requests profiled in-process (default 2000; --quick: 300; 0: skip)")
    parser.add_argument("--profile-batches", type=int, help="batch requests profiled in-process (default 20; --quick: 5)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each cell, wait up to SECONDS for the machine to be busy with < 0.35 cores (shared machines)",
    )
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench's own database first")
    parser.add_argument("--no-verify", action="store_true", help="skip the invariant check at the end")
    gateway_case.add_arguments(parser)
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.profile_requests is None:
        args.profile_requests = 300 if args.quick else 2000
    if args.profile_batches is None:
        args.profile_batches = 5 if args.quick else 20
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for name, values, allowed in (("--modes", args.modes, {"hot", "spread"}), ("--cases", args.cases, set(CASES))):
        if not values or set(values) - allowed:
            parser.error(f"{name} takes any of {', '.join(sorted(allowed))}")
    if (args.tier_step is not None and args.tier_step < 1) or not 0 <= args.plan_free_share <= 10:
        parser.error("--tier-step is at least 1; --plan-free-share between 0 and 10")
    if args.duration < 1 or any(c < 1 for c in args.clients) or args.repeat < 1:
        parser.error("--duration must be at least 1 s, clients and --repeat at least 1")
    gateway_case.finish_arguments(args, parser)
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --- cells ---------------------------------------------------------------------------------------------


def run_raw_cell(*, case, mode, clients, args, data, target, gunicorn, run_id, stripes: int = 0) -> dict:
    from bench import cpu, raw

    tenants = [data.hot] if mode == "hot" else data.spread
    job = raw.RawJob(
        conninfo=target.conninfo,
        variant={"raw": "app"}.get(case, case),
        targets=[(t.organization_id, t.api_key_id) for t in tenants],
        service_id=data.service_id,
        unit_price=data.unit_price,
        cost=data.cost,
        run_id=run_id,
        warmup=args.warmup,
        duration=args.duration,
        stripes=stripes,
    )
    windows = []

    def on_window(pids):
        window = cpu.Window(
            {
                "db": lambda: cpu.postgres(target.postmaster_pid, target.database),
                "gen": lambda: cpu.by_pids(pids),
                "app": gunicorn.processes if gunicorn else list,
            }
        ).start()
        windows.append(window)
        return window

    result = raw.run(job, clients, on_window)
    latencies = sorted(result.latencies)
    return {
        "throughput": result.transactions / result.seconds,
        "requests": result.transactions,
        "attempts": result.transactions + result.errors,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "errors": result.errors,
        "error_detail": (f"{result.refused} refused; " if result.refused else "") + result.first_error[:200],
        "cpu_cores": windows[0].result if windows else {},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def run_http_cell(*, case, mode, clients, args, data, target, gunicorn, run_id, key_files, probe=None) -> dict:
    """One wrk cell; a positional case's `probe` (bench/positional.py) sets up its window after the warm-up
    and adds its figures (`positional`) after it; the credits case's (bench/credits.py) checks its window's
    money (`credits`)."""
    from bench import cpu, web
    from bench.ceiling import CEILING_PATH

    paths = {
        "http": "/api/v1/usage/",
        "tiered": "/api/v1/usage/",
        "plan": "/api/v1/usage/",
        "credits": "/api/v1/usage/",
        "ceiling": "/" + CEILING_PATH,
        "batch": "/api/v1/usage/batch/",
    }
    script = "batch.lua" if case == "batch" else "usage.lua"
    url = gunicorn.url + paths[case]
    threads = max(1, min(clients, len(os.sched_getaffinity(0))))
    extra = [str(args.batch_size)] if case == "batch" else [paths[case]]
    service_slug = probe.service_slug if probe else data.service_slug
    if probe:
        probe.before_warmup()
    if args.warmup > 0:
        web.run_wrk(
            url=url,
            script=script,
            script_args=[f"{run_id}w", service_slug, key_files[mode], *extra],
            connections=clients,
            duration=max(1, round(args.warmup)),
            threads=threads,
        )
    if probe:
        probe.before_measure()
    window = cpu.Window(
        {"db": lambda: cpu.postgres(target.postmaster_pid, target.database), "app": gunicorn.processes}, children_rusage="gen"
    ).start()
    window_start = datetime.now(UTC)
    out = web.run_wrk(
        url=url,
        script=script,
        script_args=[f"{run_id}m", service_slug, key_files[mode], *extra],
        connections=clients,
        duration=max(1, round(args.duration)),
        threads=threads,
    )
    cores = window.stop()
    seconds = out["duration_us"] / 1e6
    # Throughput = usage records the server committed during the window (the pipeline is full: the
    # warm-up ran just before). wrk's own count drops the requests still in flight at its end, which
    # undercounts whenever latency is not small against the cell (a batch, 64 queued clients).
    server_events = _records_between(data, window_start, window_start + timedelta(seconds=seconds))
    idle_wait = gunicorn.wait_idle()
    socket_errors = sum(v for k, v in out["errors"].items() if k != "status")
    non_2xx = sum(n for code, n in out["statuses"].items() if not 200 <= int(code) < 300)
    lat = out["latency_us"]
    cell = {
        "throughput": server_events / seconds,
        "client_counted_per_s": out["ok_events"] / seconds,
        "server_counted_per_s": server_events / seconds,
        "drain_seconds_after": round(idle_wait, 1),
        "requests": out["requests"],
        "requests_per_s": out["requests"] / seconds,
        "attempts": (out["ok_events"] + out["bad_events"]) if case == "batch" else out["requests"] + socket_errors,
        # wrk reports latencies of completed requests only (none: a batch longer than the cell)
        "p50_ms": round(lat["p50"] / 1000, 3) if out["requests"] else None,
        "p90_ms": round(lat["p90"] / 1000, 3) if out["requests"] else None,
        "p99_ms": round(lat["p99"] / 1000, 3) if out["requests"] else None,
        "errors": non_2xx + socket_errors + (out["bad_events"] if case == "batch" else 0),
        "error_detail": ", ".join(
            [
                *(f"{n}× HTTP {c}" for c, n in out["statuses"].items() if not 200 <= int(c) < 300),
                *(f"{n}× socket {k}" for k, n in out["errors"].items() if k != "status" and n),
                *([f"{out['bad_events']} events not 201"] if case == "batch" and out["bad_events"] else []),
            ]
        ),
        "statuses": out["statuses"],
        "cpu_cores": cores,
    }
    if case == "batch":
        cell["events"] = out["ok_events"]
    if probe:
        cell["credits" if case == "credits" else "positional"] = probe.after_measure()
    return cell


def _records_between(data, start: datetime, end: datetime) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM metering_usagerecord WHERE created_at >= %s AND created_at < %s AND organization_id = ANY(%s)",
            [start, end, data.organization_ids],
        )
        return cursor.fetchone()[0]


def preflight(gunicorn, data, batch_size: int, positional_slugs: tuple[str, ...] = (), credits_data=None) -> None:
    """One request of each kind outside wrk: the load must be measuring successes."""
    from bench import web
    from bench.ceiling import CEILING_PATH

    probe = secrets.token_hex(6)
    targets = [("/api/v1/usage/", data.service_slug), ("/" + CEILING_PATH, data.service_slug)]
    targets += [("/api/v1/usage/", slug) for slug in positional_slugs]
    for path, slug in targets:
        for tenant in [data.hot] * 8 + data.spread[:8]:  # several, so that every worker answers at least once
            status, body = web.post_json(
                gunicorn.url + path,
                {"service": slug, "idempotency_key": f"preflight-{probe}-{secrets.token_hex(4)}"},
                tenant.secret,
            )
            if status != 201:
                raise SystemExit(f"bench: POST {path} ({slug}) for {tenant.slug} answered {status}, not 201: {body}")
    if credits_data is not None:
        for tenant in [credits_data.hot] * 8 + credits_data.spread[:8]:
            status, body = web.post_json(
                gunicorn.url + "/api/v1/usage/",
                {"service": credits_data.service_slug, "idempotency_key": f"preflight-{probe}-{secrets.token_hex(4)}"},
                tenant.secret,
            )
            if status != 201:
                raise SystemExit(f"bench: POST /api/v1/usage/ for {tenant.slug} (credits) answered {status}, not 201: {body}")
    events = [{"service": data.service_slug, "idempotency_key": f"preflight-{probe}-b{i}"} for i in range(min(3, batch_size))]
    status, body = web.post_json(gunicorn.url + "/api/v1/usage/batch/", {"events": events}, data.hot.secret)
    if status != 200 or any(r.get("status") != 201 for r in body.get("results", [])):
        raise SystemExit(f"bench: POST usage/batch/ answered {status}: {json.dumps(body)[:500]}")


# --- (4) one high-volume organization --------------------------------------------------------------------


def run_high_volume(*, args, data, target, gunicorn, run_id) -> dict:
    """The same organization single-row (stripes off) and striped (`--stripes`), interleaved per client
    count and repeat: the raw statement, and POST usage/ when gunicorn runs. Answers cells, medians,
    the striped/single-row ratios and the organization's money invariants."""
    from bench import fixtures

    hv_data, key_file = fixtures.ensure_high_volume(data)
    cells = []
    for rep in range(args.repeat):
        for clients in args.clients:
            for stripes in (0, args.stripes):
                fixtures.high_volume_stripes_set(hv_data, stripes)
                layout = "striped" if stripes else "single"
                for kind in ("raw", "http") if gunicorn is not None else ("raw",):
                    common = {
                        "mode": "hot",
                        "clients": clients,
                        "args": args,
                        "data": hv_data,
                        "target": target,
                        "gunicorn": gunicorn,
                        "run_id": f"{run_id}-{rep}-hv-{kind}-{layout}-{clients}",
                    }
                    try:
                        if kind == "raw":
                            cell = run_raw_cell(case="striped" if stripes else "raw", stripes=stripes, **common)
                        else:
                            cell = run_http_cell(case="http", key_files={"hot": key_file}, **common)
                    except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others' results
                        print(f"  (4) {kind} {layout} {clients:>3} clients: FAILED: {exc}", flush=True)
                        continue
                    cell.update(kind=kind, layout=layout, clients=clients, repeat=rep, stripes=stripes)
                    cells.append(cell)
                    print(
                        f"  (4) high-volume org, {kind:<4} {layout:<7} {clients:>3} clients: {cell['throughput']:>9,.0f}/s "
                        f"p50 {cell['p50_ms'] or 0:7.2f} ms  p99 {cell['p99_ms'] or 0:8.2f} ms  errors {cell['errors']}",
                        flush=True,
                    )
    fixtures.high_volume_stripes_set(hv_data, args.stripes)  # left striped: the verification reads it so
    rows = []
    for kind in ("raw", "http"):
        for clients in args.clients:
            medians = {}
            for layout in ("single", "striped"):
                runs = [c for c in cells if (c["kind"], c["layout"], c["clients"]) == (kind, layout, clients)]
                if runs:
                    medians[layout] = {
                        "throughput": statistics.median(c["throughput"] for c in runs),
                        "p50_ms": statistics.median(c["p50_ms"] or 0 for c in runs),
                        "p99_ms": statistics.median(c["p99_ms"] or 0 for c in runs),
                        "errors": sum(c["errors"] for c in runs),
                        "runs": [round(c["throughput"], 1) for c in runs],
                    }
            if len(medians) == 2:
                ratio = (
                    medians["striped"]["throughput"] / medians["single"]["throughput"]
                    if medians["single"]["throughput"]
                    else None
                )
                rows.append({"kind": kind, "clients": clients, **medians, "ratio": ratio})
    return {
        "organization": hv_data.hot.slug,
        "stripes": args.stripes,
        "cells": cells,
        "rows": rows,
        "aim": HIGH_VOLUME_AIM,
        "invariants": fixtures.verify(hv_data) if not args.no_verify else None,
    }


def print_high_volume(result: dict) -> None:
    print(
        f"\n(4) One high-volume organization ({result['organization']}), {result['stripes']} stripes vs single-row, "
        f"same run (medians; aim: striped >= {result['aim']}x single-row at 16 and 64 clients):"
    )
    print(
        f"  {'path':<22} {'clients':>7} {'single-row/s':>13} {'striped/s':>11} {'ratio':>7}  {'p50 ms single/striped':>22}  verdict"
    )
    for row in result["rows"]:
        path = "(1) raw statement" if row["kind"] == "raw" else "(2) POST usage/"
        ratio = row["ratio"]
        aimed = row["clients"] in (16, 64)
        verdict = "" if not aimed or ratio is None else ("met" if ratio >= result["aim"] else "NOT met")
        print(
            f"  {path:<22} {row['clients']:>7} {row['single']['throughput']:>13,.0f} {row['striped']['throughput']:>11,.0f} "
            f"{(f'{ratio:.2f}x' if ratio else '-'):>7}  {row['single']['p50_ms']:>10.2f} / {row['striped']['p50_ms']:<9.2f}  {verdict}"
        )
    invariants = result.get("invariants")
    if invariants:
        print(f"  money invariants on the high-volume organization: {'OK' if invariants['ok'] else 'FAIL'}")
        for check in invariants["checks"]:
            if check["violations"]:
                print(f"    FAIL {check['name']}: {check['violations']} violations")


# --- summary --------------------------------------------------------------------------------------------


def summarize(cells: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["case"], cell["mode"], cell["clients"]), []).append(cell)

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    rows = []
    for (case, mode, clients), runs in groups.items():
        cpu_keys = sorted({k for r in runs for k in r.get("cpu_cores", {})})
        rows.append(
            {
                "case": case,
                "mode": mode,
                "clients": clients,
                "runs": len(runs),
                "unit": UNITS[case],
                "throughput": med([r["throughput"] for r in runs]),
                "throughput_runs": [round(r["throughput"], 1) for r in runs],
                "p50_ms": med([r["p50_ms"] for r in runs]),
                "p99_ms": med([r["p99_ms"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "error_rate": sum(r["errors"] for r in runs) / max(1, sum(r.get("attempts", 0) for r in runs)),
                "error_detail": "; ".join(sorted({r["error_detail"] for r in runs if r.get("error_detail")})),
                "cpu_cores": {k: round(med([r["cpu_cores"].get(k) for r in runs]), 2) for k in cpu_keys},
            }
        )
    by_key = {(r["case"], r["mode"], r["clients"]): r for r in rows}
    for row in rows:
        # CPU per operation (µs per transaction, request or event): steadier than throughput when other
        # work shares the machine, and nproc / the sum is the ceiling of a CPU-bound case on this machine.
        row["cpu_us_per_op"] = {
            k: round(v / row["throughput"] * 1e6, 1)
            for k, v in row["cpu_cores"].items()
            if k in ("db", "app", "gen") and row["throughput"]
        }
        base = by_key.get(("raw", row["mode"], row["clients"]))
        row["vs_raw"] = row["throughput"] / base["throughput"] if base and base["throughput"] and row["case"] != "raw" else None
        ceiling = by_key.get(("ceiling", row["mode"], row["clients"]))
        row["vs_ceiling"] = (
            row["throughput"] / ceiling["throughput"] if ceiling and ceiling["throughput"] and row["case"] == "http" else None
        )
        row["p50_vs_ceiling"] = (
            row["p50_ms"] / ceiling["p50_ms"]
            if ceiling and ceiling["p50_ms"] and row["p50_ms"] and row["case"] == "http"
            else None
        )
    return rows


def aims(rows: list[dict]) -> list[dict]:
    """The issue's aims, each a figure of this run against a limit measured in the same run."""
    by_key = {(r["case"], r["mode"], r["clients"]): r for r in rows}
    out = []

    def add(name, value, target, passed, fmt, *rows_used):
        invalid = any(r is not None and r["error_rate"] > MAX_ERROR_RATE for r in rows_used)
        out.append(
            {
                "aim": name,
                "value": value,
                "target": target,
                "ok": None if invalid or value is None else passed,
                "invalid": invalid,
                "text": "n/a (cell not run)" if value is None else fmt.format(value),
            }
        )

    def ratio(numerator, denominator, field):
        if numerator is None or denominator is None or not numerator[field] or not denominator[field]:
            return None
        return numerator[field] / denominator[field]

    for mode in ("hot", "spread"):
        app, ceiling, raw = (by_key.get((case, mode, 1)) for case in ("http", "ceiling", "raw"))
        value = ratio(app, ceiling, "p50_ms")
        target = AIMS["p50_vs_ceiling_1"]
        add(
            f"(2)/(2c) p50, 1 client, {mode} <= {target:g}x",
            value,
            target,
            value is not None and value <= target,
            "{:.2f}x",
            app,
            ceiling,
        )
        value = ratio(app, raw, "p50_ms")
        target = AIMS["p50_vs_raw_1"]
        add(
            f"(2)/(1) p50, 1 client, {mode} <= {target:g}x",
            value,
            target,
            value is not None and value <= target,
            "{:.2f}x",
            app,
            raw,
        )
    for mode, key in (("hot", "hot_ratio_16"), ("spread", "spread_ratio_16")):
        app, raw = by_key.get(("http", mode, 16)), by_key.get(("raw", mode, 16))
        value = ratio(app, raw, "throughput")
        add(
            f"(2)/(1) throughput, 16 clients, {mode} >= {AIMS[key]:.2f}x",
            value,
            AIMS[key],
            value is not None and value >= AIMS[key],
            "{:.2f}x",
            app,
            raw,
        )
    row = by_key.get(("batch", "spread", 16))
    value = row["throughput"] if row else None
    add(
        f"(3) spread, 16 clients >= {AIMS['batch_events_per_s']:,} events/s",
        value,
        AIMS["batch_events_per_s"],
        value is not None and value >= AIMS["batch_events_per_s"],
        "{:,.0f} events/s",
        row,
    )
    return out


def print_table(rows: list[dict], args) -> None:
    order = {c: i for i, c in enumerate(CASES)}
    rows = sorted(rows, key=lambda r: (order[r["case"]], r["mode"] != "hot", r["clients"]))
    head = (
        f"{'case':<28} {'wallet':<7} {'clients':>7} {'throughput':>18} {'p50 ms':>8} {'p99 ms':>9} {'errors':>7} "
        f"{'vs (1)':>7} {'vs (2c)':>7} {'p50/(2c)':>8}  {'cpu µs/op db+app+gen':>21}  cores db/app/gen/other"
    )
    print(head)
    print("-" * len(head))
    flagged = False
    last_case = None
    for r in rows:
        if last_case is not None and r["case"] != last_case:
            print()
        last_case = r["case"]
        c = r["cpu_cores"]
        cores = "/".join(f"{c.get(k, 0):.2f}" for k in ("db", "app", "gen", "other"))
        ratio = f"{r['vs_raw']:.0%}" if r["vs_raw"] is not None else ""
        vs_ceiling = f"{r['vs_ceiling']:.0%}" if r.get("vs_ceiling") is not None else ""
        p50_ceiling = f"{r['p50_vs_ceiling']:.2f}x" if r.get("p50_vs_ceiling") is not None else ""
        per_op = r["cpu_us_per_op"]
        per_op_text = "+".join(f"{per_op.get(k, 0):.0f}" for k in ("db", "app", "gen")) if per_op else "-"
        p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else "-"
        mark = "!" if r["error_rate"] > MAX_ERROR_RATE else " "
        flagged = flagged or mark == "!"
        print(
            f"{CASES[r['case']]:<28} {r['mode']:<7} {r['clients']:>7} {r['throughput']:>9,.0f} {r['unit']:<8} {p50:>8} "
            f"{p99:>9} {r['errors']:>6}{mark} {ratio:>7} {vs_ceiling:>7} {p50_ceiling:>8}  {per_op_text:>21}  {cores}"
        )
    if flagged:
        print(f"  ! more than {MAX_ERROR_RATE:.0%} of the attempts failed: that row measures failures, not the debit path")
    errors = [r for r in rows if r["error_detail"]]
    for r in errors:
        print(f"  errors in {r['case']} {r['mode']} {r['clients']}: {r['error_detail']}")
    if args.repeat > 1:
        print(f"(medians of {args.repeat} interleaved runs; every run's throughput is in the JSON)")


def print_machine(machine: dict, target, args, gunicorn_desc: str) -> None:
    print("=" * 100)
    print(
        f"machine   {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, kernel {machine['kernel']}, "
        f"load average {machine['loadavg_at_start']}"
    )
    pg = machine["postgresql_settings"]
    print(
        f"database  {machine['postgresql']} (synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']}, "
        f"shared_buffers={pg['shared_buffers']}, max_connections={pg['max_connections']}); {target.description}"
    )
    print(
        f"software  Python {machine['python']}, Django {machine['django']}, psycopg {machine['psycopg']}, "
        f"gunicorn {machine['gunicorn']}, {machine['wrk']}"
    )
    print(f"app       {gunicorn_desc}")
    print(
        f"load      clients {args.clients}, wallets {args.modes} (spread: {args.spread_orgs} organizations, a key each), "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up per cell, x{args.repeat}; "
        f"batch {args.batch_size} events/request"
    )
    print("=" * 100, flush=True)


def print_profile(profile: dict) -> None:
    usage = profile["usage"]
    print(
        f"\nProfile of POST usage/ in-process (Django test Client, hot wallet, {usage['requests']} requests, statuses "
        f"{usage['statuses']}): {usage['ms_per_request_plain']:.3f} ms/request unprofiled (Python CPU "
        f"{usage['cpu_ms_per_request_plain']:.3f} ms), "
        f"{usage['ms_per_request_profiled']:.3f} profiled; {usage['round_trips_per_request']:.0f} database round trips "
        f"taking {usage['db_wait_ms_per_request']:.3f} ms of it"
    )
    print("  statements through Django's cursor (psycopg adds the health check's SELECT 1, BEGIN and COMMIT):")
    for statement in usage["statements"]:
        print(f"    {statement}")
    print("  top 15 by cumulative time, ms/request (own ms/request):")
    for row in usage["top_cumulative"][:15]:
        print(f"    {row['cumulative_ms_per_request']:8.3f} ({row['own_ms_per_request']:.3f})  {row['function']}")
    print(
        "  own time by package, ms/request: "
        + ", ".join(f"{k} {v:.3f}" for k, v in list(usage["own_ms_by_package"].items())[:12])
    )
    print(f"  full profile: {usage['files']['text']}")
    batch = profile.get("batch")
    if batch:
        per_event = batch["ms_per_request_plain"] / batch["events_per_request"] * 1000
        print(
            f"\nProfile of POST usage/batch/ with {batch['events_per_request']} events ({batch['requests']} requests, statuses "
            f"{batch['statuses']}): {batch['ms_per_request_plain']:.1f} ms/request unprofiled (Python CPU "
            f"{batch['cpu_ms_per_request_plain']:.1f} ms) = {per_event:.0f} µs/event "
            f"(≈ {1e6 / per_event:,.0f} events/s per busy process); {batch['round_trips_per_request']:.0f} round trips "
            f"taking {batch['db_wait_ms_per_request']:.1f} ms"
        )
        print("  top 12 by own time, ms/request:")
        for row in batch["top_own"][:12]:
            print(f"    {row['own_ms_per_request']:8.3f}  x{row['calls_per_request']:<8g} {row['function']}")
        print(
            "  own time by package, ms/request: "
            + ", ".join(f"{k} {v:.2f}" for k, v in list(batch["own_ms_by_package"].items())[:10])
        )
        print(f"  full profile: {batch['files']['text']}")


def print_profile_short(case: str, usage: dict) -> None:
    """The in-process profile of POST usage/ on a positional case's service (one client: no contention)."""
    print(
        f"\nProfile of POST usage/ on the {case} service in-process ({usage['requests']} requests, statuses "
        f"{usage['statuses']}): {usage['ms_per_request_plain']:.3f} ms/request unprofiled (Python CPU "
        f"{usage['cpu_ms_per_request_plain']:.3f} ms), {usage['round_trips_per_request']:.0f} database round trips "
        f"taking {usage['db_wait_ms_per_request']:.3f} ms"
    )
    print("  statements through Django's cursor:")
    for statement in usage["statements"]:
        print(f"    {statement}")
    print("  top 12 by cumulative time, ms/request (own ms/request):")
    for row in usage["top_cumulative"][:12]:
        print(f"    {row['cumulative_ms_per_request']:8.3f} ({row['own_ms_per_request']:.3f})  {row['function']}")
    print(f"  full profile: {usage['files']['text']}")


def _log_errors(path: Path) -> int:
    try:
        with path.open(errors="replace") as log:
            return sum(1 for line in log if "[ERROR]" in line or line.startswith("Traceback") or " ERROR " in line)
    except OSError:
        return 0


# --- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    os.chdir(env.BASE_DIR)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    env.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = env.prepare_database(fresh=args.fresh)

    import django

    django.setup()
    from django.core.management import call_command

    from bench import cpu, fixtures, positional, profiling, web

    print("bench: migrating the bench database", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    target.conninfo = env.libpq_conninfo()
    from django.db import connection

    target.database = connection.settings_dict["NAME"]
    needs_http = bool({"ceiling", "http", "batch", "tiered", "plan", "credits", "stripes", "gateway"} & set(args.cases))
    debit_cases = set(args.cases) - {"gateway"}
    if not debit_cases:
        args.spread_orgs = 0  # the gateway alone needs the hot wallet (POST usage/ beside its streams), no spread ones
    if needs_http:
        web.ensure_wrk()
    data = fixtures.ensure(spread_count=args.spread_orgs)
    pos = fixtures.ensure_positional(data) if set(positional.POSITIONAL_CASES) & set(args.cases) else None
    credits = credits_case.ensure(spread_count=args.spread_orgs) if "credits" in args.cases else None
    key_files = fixtures.write_key_files(data)
    machine = env.machine_info()
    if args.gunicorn_config == "plain" or (args.gunicorn_config is None and not (env.BASE_DIR / "gunicorn.conf.py").exists()):
        gunicorn_config = web.PLAIN_CONFIG
    else:
        gunicorn_config = Path(args.gunicorn_config or env.BASE_DIR / "gunicorn.conf.py").resolve()
    gunicorn_desc = (
        f"gunicorn --config {gunicorn_config.relative_to(env.BASE_DIR) if gunicorn_config.is_relative_to(env.BASE_DIR) else gunicorn_config} "
        f"--workers {args.workers} --worker-class sync, on 127.0.0.1 (log: bench/results/{stamp}-gunicorn.log)"
    )
    print_machine(machine, target, args, gunicorn_desc if needs_http else "(not started: no HTTP case)")

    run_id = f"b{stamp}{secrets.token_hex(3)}"
    high_volume: dict | None = None
    gateway_result: dict | None = None
    cells: list[dict] = []
    failed: list[dict] = []
    gunicorn = None
    interrupted = False
    profile = None
    started = time.monotonic()
    app_env = env.app_environment()
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in app_env:
        # Every worker's counters in files that /metrics sums (as gunicorn.conf.py sets up; the plain
        # config does not): the positional cases read how their events settled from there.
        metrics_dir = tempfile.mkdtemp(prefix="tollgate-bench-metrics-")
        app_env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if needs_http:
            gunicorn = web.Gunicorn(
                env=app_env,
                workers=args.workers,
                config=gunicorn_config,
                log_path=env.RESULTS_DIR / f"{stamp}-gunicorn.log",
            )
            gunicorn.start()
            preflight(
                gunicorn,
                data,
                args.batch_size,
                (pos.tiered_slug, pos.plan_service_slug) if pos is not None else (),
                credits.data if credits is not None else None,
            )
        for rep in range(args.repeat):
            for case in args.cases:
                for mode in args.modes:
                    for clients in args.clients:
                        if case in ("stripes", "gateway"):
                            continue  # their own sections below
                        cell_id = f"{run_id}-{rep}-{case}-{mode}-{clients}"
                        common = {
                            "case": case,
                            "mode": mode,
                            "clients": clients,
                            "args": args,
                            "data": data,
                            "target": target,
                            "gunicorn": gunicorn,
                            "run_id": cell_id,
                        }
                        quiet = None
                        if args.wait_quiet > 0:
                            waited, busy = cpu.wait_quiet(limit_cores=0.35, timeout=args.wait_quiet)
                            quiet = {"waited_s": round(waited, 1), "busy_cores_before": round(busy, 2)}
                        try:
                            if case in ("raw", "twostmt", "classic"):
                                cell = run_raw_cell(**common)
                            elif case == "credits":
                                assert credits is not None
                                credits_probe = credits_case.probe_for(credits=credits, mode=mode, gunicorn=gunicorn)
                                cell = run_http_cell(
                                    **{**common, "data": credits.data}, key_files=credits.key_files, probe=credits_probe
                                )
                            elif case in positional.POSITIONAL_CASES:
                                probe = positional.probe_for(case, pos=pos, mode=mode, data=data, gunicorn=gunicorn, args=args)
                                cell = run_http_cell(**common, key_files=key_files, probe=probe)
                            else:
                                cell = run_http_cell(**common, key_files=key_files)
                        except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others' results
                            print(f"  {CASES[case]:<28} {mode:<6} {clients:>3} clients: FAILED: {exc}", flush=True)
                            failed.append({"case": case, "mode": mode, "clients": clients, "repeat": rep, "error": str(exc)})
                            continue
                        cell.update(
                            case=case,
                            mode=mode,
                            clients=clients,
                            repeat=rep,
                            unit=UNITS[case],
                            quiet=quiet,
                            loadavg=[round(x, 2) for x in os.getloadavg()],
                        )
                        cells.append(cell)
                        c = cell["cpu_cores"]
                        print(
                            f"  {CASES[case]:<28} {mode:<6} {clients:>3} clients: {cell['throughput']:>9,.0f} {UNITS[case]:<8} "
                            f"p50 {cell['p50_ms'] or 0:7.2f} ms  p99 {cell['p99_ms'] or 0:8.2f} ms  errors {cell['errors']}  "
                            f"cpu db {c.get('db', 0):.2f} app {c.get('app', 0):.2f} gen {c.get('gen', 0):.2f} "
                            f"other {c.get('other', 0):.2f} steal {c.get('steal', 0):.2f}"
                            + (
                                f"  (waited {quiet['waited_s']:.0f}s for quiet: {quiet['busy_cores_before']:.2f} cores busy)"
                                if quiet
                                else ""
                            ),
                            flush=True,
                        )
        if "stripes" in args.cases:
            high_volume = run_high_volume(args=args, data=data, target=target, gunicorn=gunicorn, run_id=run_id)
        if "gateway" in args.cases:
            assert gunicorn is not None  # started for every HTTP case: the gateway's POST usage/ cells need it
            gateway_result = gateway_case.run_gateway(
                args=args,
                bench_data=data,
                hot_key_file=key_files["hot"],
                target=target,
                web_gunicorn=gunicorn,
                run_id=run_id,
                stamp=stamp,
            )
        if gunicorn is not None:
            gunicorn.stop()
        if args.profile_requests > 0 and debit_cases:
            print(
                f"bench: profiling {args.profile_requests} POST usage/ and {args.profile_batches} usage/batch/ requests "
                "in-process",
                flush=True,
            )
            try:
                profile = profiling.profile_all(
                    data=data,
                    requests=args.profile_requests,
                    batch_requests=args.profile_batches,
                    batch_size=args.batch_size,
                    run_id=f"{run_id}-p",
                    out_prefix=env.RESULTS_DIR / f"{stamp}-profile",
                    services={
                        case: pos.tiered_slug if case == "tiered" else pos.plan_service_slug
                        for case in positional.POSITIONAL_CASES
                        if pos is not None and case in args.cases
                    },
                )
            except Exception as exc:  # noqa: BLE001 - report it with the results measured so far
                print(f"bench: the profile failed: {type(exc).__name__}: {exc}", flush=True)
                profile = {"error": f"{type(exc).__name__}: {exc}"}
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; stopping and reporting what was measured", flush=True)
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    invariants = None
    if not args.no_verify:
        print("bench: checking the money invariants on the bench organizations", flush=True)
        invariants = fixtures.verify(data)
        if pos is not None:
            invariants["checks"] += fixtures.verify_positional(pos, data.organization_ids)
        if credits is not None:
            credit_orgs = credits.data.organization_ids
            more = fixtures.verify_organizations(credit_orgs)
            invariants["checks"] += [{**check, "name": f"credits organizations: {check['name']}"} for check in more["checks"]]
            invariants["checks"] += [
                {**check, "name": f"credits organizations: {check['name']}"}
                for check in credits_case.money_checks(credit_orgs, since=datetime.now(UTC), now=datetime.now(UTC))[1:3]
            ]
            invariants["ledger_entries"] += more["ledger_entries"]
            invariants["usage_records"] += more["usage_records"]
        invariants["ok"] = all(check["violations"] == 0 for check in invariants["checks"])

    rows = summarize(cells)
    pricing = positional.pricing_rows(rows, cells) if pos is not None else []
    credit_rows = credits_case.credit_rows(rows, cells) if credits is not None else []
    aim_rows = aims(rows) if debit_cases - {"stripes", "tiered", "plan", "credits"} else []
    aim_rows += positional.aims(pricing, MAX_ERROR_RATE)
    aim_rows += credits_case.aims(credit_rows, MAX_ERROR_RATE)
    if gateway_result:
        aim_rows += gateway_result["aims"]
    print()
    print(f"Results ({stamp}, {time.monotonic() - started:.0f} s).")
    if rows:
        print(
            "Throughput counts successes only: transactions committed "
            "by the raw clients, usage records the server committed during the window for (2) and (3); p50/p99 per "
            "transaction or request; 'vs (1)' = throughput / that of the raw SQL debit at the same clients and wallets; "
            "'vs (2c)' and 'p50/(2c)' = throughput and p50 against the bare DRF view doing only the debit; "
            "cpu = cores used by PostgreSQL / gunicorn / the load generator / everything else on the machine."
        )
        print_table(rows, args)
    for f in failed:
        print(f"  FAILED {f['case']} {f['mode']} {f['clients']} (run {f['repeat'] + 1}): {f['error'][:300]}")
    log_errors = _log_errors(env.RESULTS_DIR / f"{stamp}-gunicorn.log") if needs_http else None
    if log_errors:
        print(f"  the gunicorn log has {log_errors} error or traceback lines: bench/results/{stamp}-gunicorn.log")
    if pricing:
        positional.print_pricing(pricing, args)
    if credit_rows:
        credits_case.print_credits(credit_rows, args)
    if gateway_result:
        gateway_case.print_gateway(gateway_result, args)
        gateway_log_errors = _log_errors(env.BASE_DIR / gateway_result["log"])
        gateway_result["log_error_lines"] = gateway_log_errors
        if gateway_log_errors:
            print(f"  the gateway's log has {gateway_log_errors} error or traceback lines: {gateway_result['log']}")
    print("\nAims (issue):")
    for aim in aim_rows:
        verdict = "invalid (errors)" if aim["invalid"] else "n/a" if aim["ok"] is None else ("met" if aim["ok"] else "NOT met")
        print(f"  {aim['aim']:<46} {aim['text']:>18}  {verdict}")
    if high_volume:
        print_high_volume(high_volume)
    if profile and "error" in profile:
        print(f"\nProfile: failed: {profile['error']}")
    elif profile:
        print_profile(profile)
        for case in positional.POSITIONAL_CASES:
            if case in profile:
                print_profile_short(case, profile[case])
    if invariants:
        print(
            f"\nMoney invariants on {len(data.organization_ids) + (len(credits.data.organization_ids) if credits else 0)} bench organizations ({invariants['ledger_entries']:,} ledger "
            f"entries, {invariants['usage_records']:,} usage records, {invariants['seconds']} s): "
            f"{'OK' if invariants['ok'] else 'FAIL'}"
        )
        for check in invariants["checks"]:
            detail = ", ".join(f"{k} {v}" for k, v in check.items() if k not in ("name", "violations"))
            print(
                f"  {'ok  ' if check['violations'] == 0 else 'FAIL'} {check['name']}"
                + ("" if check["violations"] == 0 else f": {check['violations']} violations")
                + (f" ({detail})" if detail else "")
            )

    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out_path = env.RESULTS_DIR / f"{stamp}.json"
    out_path.write_text(
        json.dumps(
            {
                "started_at": stamp,
                "interrupted": interrupted,
                "args": vars(args),
                "machine": machine,
                "database": target.description,
                "gunicorn": {"config": str(gunicorn_config), "workers": args.workers, "worker_class": "sync"}
                if needs_http
                else None,
                "raw_variants": {
                    "raw": "BEGIN; payments.ledger._POST_SQL; metering.services.usage_sql.INSERT_USAGE_SQL; COMMIT",
                    "classic": "BEGIN; SELECT … FOR UPDATE; UPDATE; INSERT transfer+entries; _INSERT_USAGE_SQL; COMMIT",
                },
                "cells": cells,
                "failed_cells": failed,
                "gunicorn_log_error_lines": log_errors,
                "summary": rows,
                "pricing_models": pricing,
                "credits": credit_rows,
                "aims": aim_rows,
                "high_volume": high_volume,
                "gateway": gateway_result,
                "profile": profile,
                "invariants": invariants,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nJSON: {out_path}")
    if interrupted:
        return 130
    high_volume_ok = not (high_volume and high_volume["invariants"] and not high_volume["invariants"]["ok"])
    gateway_ok = gateway_result is None or gateway_result["ok"]
    credits_ok = credits_case.all_ok(cells)
    return 0 if (invariants is None or invariants["ok"]) and high_volume_ok and gateway_ok and credits_ok else 1


if __name__ == "__main__":
    sys.exit(main())
