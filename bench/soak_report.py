"""The soak's tables on stdout."""

from __future__ import annotations

from typing import Any

from bench import soak_memory

KINDS = [
    ("usage", "usage"),
    ("batch", "batch"),
    ("hold", "hold"),
    ("capture", "capture"),
    ("release", "release"),
    ("recharge", "recharge"),
    ("webhook", "webhook"),
    ("webhook_replay", "replay"),
    ("overview", "overview"),
    ("usage_page", "usage pg"),
    ("usage_list", "usage api"),
    ("summary", "summary"),
    ("balance", "balance"),
]
CELL = 12


def _cell(kind: dict[str, Any] | None) -> str:
    if not kind or kind.get("p50_ms") is None:
        return "-"
    p50 = kind["p50_ms"]
    return f"{p50:.1f}/{kind['p99_ms']:.0f}" if p50 < 100 else f"{p50:.0f}/{kind['p99_ms']:.0f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / soak_memory.MIB:.1f}"


def print_minutes(result: dict[str, Any], args) -> None:
    settlement = {row["minute"]: row for row in result["settlement"]}
    cpu = {row["cpu_covers"]: row["cpu_cores"] for row in result["memory"]["timeline"]}
    print(
        "\nPer minute (by when each request was due): requests/s, wrong answers, requests dropped unsent, then p50/p99 in ms per kind, open-loop latency "
        "(from due to answered); 'settle' = notification stored → payment settled by the Celery worker; cores used by "
        "gunicorn+PostgreSQL / by everything else on the machine (other work shares it)."
    )
    head = (
        f"{'minute':>8} {'req/s':>6} {'err':>4} {'drop':>5} "
        + "".join(f"{label:>{CELL}}" for _, label in KINDS)
        + f"{'settle':>{CELL}}{'app/other':>{CELL}}"
    )
    print(head)
    print("-" * len(head))
    for row in result["minutes"]:
        seconds = args.warmup if row["minute"] == "warm-up" else 60.0
        settled = settlement.get(row["minute"])
        settle = f"{settled['p50_ms']:.0f}/{settled['p99_ms']:.0f}" if settled and settled["p50_ms"] is not None else "-"
        cores = cpu.get(row["minute"])
        busy = f"{cores.get('gunicorn', 0) + cores.get('postgres', 0):.2f}/{cores.get('other', 0):.2f}" if cores else "-"
        print(
            f"{row['minute']!s:>8} {row['requests'] / seconds:>6.1f} {row['errors'] - row['not_sent']:>4} {row['not_sent']:>5} "
            + "".join(f"{_cell(row['kinds'].get(kind)):>{CELL}}" for kind, _ in KINDS)
            + f"{settle:>{CELL}}{busy:>{CELL}}"
        )


def print_counts(result: dict[str, Any]) -> None:
    print("\nRequests per minute by kind (errors in brackets when there were any):")
    head = f"{'minute':>8} " + "".join(f"{label:>{CELL - 2}}" for _, label in KINDS)
    print(head)
    print("-" * len(head))
    for row in result["minutes"]:
        cells = []
        for kind, _ in KINDS:
            summary = row["kinds"].get(kind)
            text = "-" if not summary else str(summary["requests"]) + (f" ({summary['errors']})" if summary["errors"] else "")
            cells.append(f"{text:>{CELL - 2}}")
        print(f"{row['minute']!s:>8} " + "".join(cells))


def print_overall(result: dict[str, Any], args) -> None:
    seconds = 60.0 * args.minutes
    print(f"\nWhole measured run ({args.minutes} min), per kind:")
    print(
        f"  {'kind':<15} {'requests':>9} {'per s':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server p50':>11} {'send lag p99':>13}"
    )
    for kind, row in result["overall"].items():
        if not row["requests"]:
            continue
        print(
            f"  {kind:<15} {row['requests']:>9,} {row['requests'] / seconds:>7.1f} {row['errors']:>6} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {row['max_ms']:>8.1f} {row['service_p50_ms']:>11.1f} {row['send_lag_p99_ms']:>13.1f}"
        )
        for error in row["first_errors"]:
            print(f"      {error}")
    total = sum(r["requests"] for r in result["overall"].values())
    print(
        f"  {'all':<15} {total:>9,} {total / seconds:>7.1f}   (max in flight {result['max_in_flight']}; "
        f"events debited {result['oracle']['events_answered']:,})"
    )


def print_memory(result: dict[str, Any], args) -> None:
    memory = result["memory"]
    start = {(r["pid"], r["created"]): r for r in memory["start"]}
    middle_label = f"minute {args.minutes // 2}"
    middle = next(
        ({(r["pid"], r["created"]): r for r in t["processes"]} for t in memory["timeline"] if t["label"] == middle_label), {}
    )
    print(
        f"\nMemory, MiB: RSS / PSS / anonymous RSS before the load, and after the warm-up → at the end. Flat = anonymous "
        f"RSS grows by less than {soak_memory.GROWTH_LIMIT:.0%} or {soak_memory.GROWTH_FLOOR // soak_memory.MIB} MiB "
        "from the end of the warm-up (PostgreSQL backends, recycled by CONN_MAX_AGE, judged by their mean). 'anon' is "
        f"that growth; '2nd half' the growth from {middle_label} to the end (a leak keeps growing, a warm-up does not)."
    )
    print(f"  {'process':<40} {'before load':>20} {'after warm-up':>20} {'end':>20} {'anon':>7} {'2nd half':>9}")
    for row in memory["verdict"]["rows"]:
        before = start.get((row["pid"], row["start"].get("created"))) if row["pid"] else None
        growth = (
            f"{(row['end']['anon'] - row['start']['anon']) / row['start']['anon']:+.1%}"
            if row["start"].get("anon") and row["end"].get("anon") is not None
            else "-"
        )
        if row["role"] in soak_memory.RECYCLED_ROLES and not row["judged"] and not row["start"]:
            growth = "new"
        name = f"{row['role']} {row['pid']}" if row["pid"] else row["role"]
        halfway = middle.get((row["pid"], row["end"].get("created"))) if row["pid"] else None
        late = (
            f"{(row['end']['anon'] - halfway['anon']) / halfway['anon']:+.1%}"
            if halfway and halfway.get("anon") and row["end"].get("anon") is not None
            else "-"
        )
        print(
            f"  {name:<40} {_triple(before):>20} {_triple(row['start']):>20} {_triple(row['end']):>20} {growth:>7} {late:>9}"
            + ("  GREW" if row["grown"] else "" if row["judged"] else "  (not judged alone)")
        )
    for failure in memory["verdict"]["failures"]:
        print(f"  FAIL {failure}")
    timeline = memory["timeline"]
    if timeline:
        print(
            "  Redis used_memory, MiB: "
            + ", ".join(f"{t['label']} {_mib(t['redis_used_memory'])}" for t in timeline)
            + "; Celery queue backlog: "
            + ", ".join(str(t["celery_backlog"]) for t in timeline)
        )


def _triple(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    return f"{_mib(row['rss'])}/{_mib(row['pss'])}/{_mib(row['anon'])}"


def print_all(result: dict[str, Any], args) -> None:
    machine = result["machine"]
    print("=" * 100)
    print(
        f"Soak {result['started_at']}: {args.minutes} min after {args.warmup:g} s warm-up, {args.rate:g} requests/s "
        f"({result['arrivals_per_s']:.1f} arrivals/s; seed {args.seed}), {args.orgs} organizations, batches of "
        f"{args.batch_size}, {args.web_workers} gunicorn sync workers, Celery prefork x{args.celery_concurrency}"
    )
    print(
        f"machine {machine['nproc']} CPUs ({machine['cpu_model']}), load average {machine['loadavg_at_start']} at the start; "
        f"{machine['postgresql']}; {result['database']}"
    )
    print("=" * 100)
    print_minutes(result, args)
    print_counts(result)
    print_overall(result, args)
    cores = result["cpu_cores"]
    if cores:
        answered = sum(m["requests"] for m in result["minutes"])
        seconds = result.get("load_seconds") or args.warmup + 60.0 * args.minutes
        app = sum(v for k, v in cores.items() if k in ("gunicorn", "postgres", "celery", "celery beat", "redis"))
        print(
            "\nCPU over the run, cores: "
            + ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if k not in ("total",))
            + f" (machine total {cores.get('total', 0):.2f}); the app (web, database, worker, Redis) used "
            f"{app / (answered / seconds) * 1000:.1f} ms of CPU per request, so {args.rate:g} requests/s need about "
            f"{app / (answered / seconds) * args.rate:.2f} cores of the machine's {result['machine']['nproc']}"
        )
    print_memory(result, args)
    print(
        f"\nMoney: recharges credited {result['oracle']['credited']} ({result['oracle']['payments']} payments), "
        f"costs answered {result['oracle']['charged']}; {result['oracle']['holds']} holds ended; settled the last "
        f"notification {result['settle_wait_s']} s after the load; {result['oracle'].get('token_refreshes', 0)} JWT refreshes"
    )
    print("Invariants on the soak organizations:")
    for check in result["invariants"]:
        ok = check["violations"] == 0
        print(
            f"  {'ok  ' if ok else 'FAIL'} {check['name']}" + ("" if ok else f": {check['violations']} ({check.get('sample')})")
        )
    for name, lines in result["log_error_lines"].items():
        for line in lines[:5]:
            print(f"  {name} log: {line[:200]}")
    print("\nAims:")
    for aim in result["aims"]:
        print(f"  {aim['aim']:<80} {aim['value']:>30}  {'met' if aim['ok'] else 'NOT met'}")
