"""cProfiles of POST /api/v1/usage/ (and of usage/batch/) in-process: Django's test Client runs the
whole middleware stack, DRF, authentication, throttling and the debit against the real PostgreSQL,
without gunicorn. The same requests are also timed without the profiler, and the SQL statements
one request sends are listed."""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import logging
import pstats
import sysconfig
import time
from collections import defaultdict
from pathlib import Path

from bench.fixtures import BenchData

_STDLIB = sysconfig.get_paths()["stdlib"]


def _bucket(filename: str) -> str:
    """Group a profiled function by what it belongs to: a package, the project, the stdlib, C."""
    if filename.startswith("~") or filename == "":
        return "builtins (C)"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(_STDLIB):
        return "stdlib:" + filename[len(_STDLIB) + 1 :].split("/", 1)[0].removesuffix(".py")
    for part in ("accounts", "payments", "metering", "billing_site", "gateway"):
        if f"/{part}/" in filename:
            return f"app:{part}"
    return "other"


PROJECT_DIR = Path(__file__).resolve().parent.parent


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    short = filename.split("site-packages/", 1)[-1]
    for marker in (str(PROJECT_DIR) + "/", _STDLIB + "/"):
        short = short.removeprefix(marker)
    return f"{short}:{line}({name})"


@contextlib.contextmanager
def _logs_to(path: Path):
    """Send the app's log lines (one access line per request) to a file while profiling: their cost
    stays in the profile, their volume leaves the terminal."""
    loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    handlers = {h for logger in loggers for h in logger.handlers if type(h) is logging.StreamHandler}
    with path.open("a") as sink:
        previous = {h: h.setStream(sink) for h in handlers}
        try:
            yield
        finally:
            for handler, stream in previous.items():
                handler.setStream(stream)


def profile_endpoint(*, name: str, path: str, body, secret: str, requests: int, out_prefix: Path, per_request: int = 1) -> dict:
    """Time `requests` POSTs of body(i) unprofiled, then profile as many; `per_request` events each."""
    from django.db import connection
    from django.test import Client

    client = Client()
    headers = {"Authorization": f"Bearer {secret}"}
    counter = 0
    statuses: dict[int, int] = defaultdict(int)

    def post() -> None:
        nonlocal counter
        counter += 1
        response = client.post(path, data=json.dumps(body(counter)), content_type="application/json", headers=headers)
        statuses[response.status_code] += 1

    with _logs_to(out_prefix.with_suffix(".log")):
        for _ in range(min(100, requests)):  # warm: imports, URL resolver, connection
            post()
        # The statements of one request as Django sends them; the health check's SELECT 1 and the
        # BEGIN/COMMIT of transaction.atomic() bypass Django's wrappers (psycopg sends them itself).
        statements: list[str] = []

        def record(execute, sql, params, many, context):
            statements.append(" ".join(sql.split())[:110])
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):
            post()

        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(requests):
            post()
        plain_ms = (time.perf_counter() - started) / requests * 1000
        cpu_ms = (time.process_time() - cpu_started) / requests * 1000  # this process only: Python, not PostgreSQL

        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for _ in range(requests):
            post()
        profiler.disable()
        profiled_ms = (time.perf_counter() - started) / requests * 1000

    prof_path = out_prefix.with_suffix(".prof")
    profiler.dump_stats(prof_path)
    stats = pstats.Stats(profiler)
    rows = stats.stats  # type: ignore[attr-defined]  # func -> (primitive calls, calls, tottime, cumtime, callers)
    cumulative = sorted(rows.items(), key=lambda item: item[1][3], reverse=True)
    by_tottime = sorted(rows.items(), key=lambda item: item[1][2], reverse=True)
    buckets: dict[str, float] = defaultdict(float)
    for func, (_, _, tottime, _, _) in rows.items():
        buckets[_bucket(func[0])] += tottime
    # psycopg's wait() is where a request sits while PostgreSQL works: one call per round trip.
    waits = [(v[1], v[3]) for f, v in rows.items() if f[2] == "wait" and "psycopg/connection.py" in f[0]]
    round_trips = sum(n for n, _ in waits) / requests
    db_wait_ms = sum(t for _, t in waits) / requests * 1000

    def row(func, values) -> dict:
        _, calls, tottime, cumtime, _ = values
        return {
            "function": _label(func),
            "calls_per_request": round(calls / requests, 2),
            "cumulative_ms_per_request": round(cumtime / requests * 1000, 4),
            "own_ms_per_request": round(tottime / requests * 1000, 4),
        }

    text = io.StringIO()
    text.write(
        f"{name} x {requests} in-process: {plain_ms:.3f} ms/request without the profiler (of which {cpu_ms:.3f} ms "
        f"CPU in this process), {profiled_ms:.3f} ms with it; "
        f"{round_trips:.1f} database round trips/request, {db_wait_ms:.3f} ms/request waiting on them (profiled)\n"
        "statements of one request sent through Django's cursor:\n"
    )
    text.writelines(f"  {s}\n" for s in statements)
    text.write("\nown time by package (ms/request):\n")
    text.writelines(
        f"  {name:<34} {seconds / requests * 1000:8.4f}\n"
        for name, seconds in sorted(buckets.items(), key=lambda kv: kv[1], reverse=True)
    )
    for order in ("cumulative", "tottime"):
        text.write(f"\n--- pstats sorted by {order} ---\n")
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(60)
    txt_path = out_prefix.with_suffix(".txt")
    txt_path.write_text(text.getvalue())
    return {
        "endpoint": path,
        "requests": requests,
        "events_per_request": per_request,
        "statuses": dict(statuses),
        "ms_per_request_plain": round(plain_ms, 3),
        "cpu_ms_per_request_plain": round(cpu_ms, 3),
        "ms_per_request_profiled": round(profiled_ms, 3),
        "round_trips_per_request": round(round_trips, 2),
        "db_wait_ms_per_request": round(db_wait_ms, 3),
        "statements": statements,
        "top_cumulative": [row(f, v) for f, v in cumulative[:30]],
        "top_own": [row(f, v) for f, v in by_tottime[:30]],
        "own_ms_by_package": {k: round(v / requests * 1000, 4) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
        "files": {"pstats": str(prof_path), "text": str(txt_path)},
    }


def profile_all(
    *,
    data: BenchData,
    requests: int,
    batch_requests: int,
    batch_size: int,
    run_id: str,
    out_prefix: Path,
    services: dict[str, str] | None = None,
) -> dict:
    """POST usage/ on the bench's per-unit service, then on each of `services` (name → slug: the
    positional cases' services), then usage/batch/."""
    out = {}
    out["usage"] = profile_endpoint(
        name="POST /api/v1/usage/ (hot wallet)",
        path="/api/v1/usage/",
        secret=data.hot.secret,
        requests=requests,
        body=lambda i: {"service": data.service_slug, "idempotency_key": f"{run_id}-u{i}"},
        out_prefix=out_prefix.with_name(out_prefix.name + "-usage"),
    )
    for name, slug in (services or {}).items():
        out[name] = profile_endpoint(
            name=f"POST /api/v1/usage/ on {slug} (hot wallet)",
            path="/api/v1/usage/",
            secret=data.hot.secret,
            requests=requests,
            body=lambda i, slug=slug: {"service": slug, "idempotency_key": f"{run_id}-{slug}-{i}"},
            out_prefix=out_prefix.with_name(out_prefix.name + f"-usage-{name}"),
        )
    if batch_requests > 0:
        out["batch"] = profile_endpoint(
            name=f"POST /api/v1/usage/batch/ with {batch_size} events (hot wallet)",
            path="/api/v1/usage/batch/",
            secret=data.hot.secret,
            requests=batch_requests,
            per_request=batch_size,
            body=lambda i: {
                "events": [{"service": data.service_slug, "idempotency_key": f"{run_id}-b{i}-{j}"} for j in range(batch_size)]
            },
            out_prefix=out_prefix.with_name(out_prefix.name + "-batch"),
        )
    return out
