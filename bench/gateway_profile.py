"""Where the gateway's own time goes: non-streamed chat completions through the real ASGI application
(gateway.asgi) in this process, one at a time — httpx's ASGITransport in place of uvicorn's socket, the fake
upstream process over real HTTP, the real PostgreSQL and Redis.

For each key variant (no limits, the default; RPM and TPM limits, which add the Redis admission and give-back):
  1. the phases: the gateway's own functions are wrapped, in this process only, by timers (the thread hops
     of sync_to_async as "awaited" minus "in the thread"), and the SQL each phase sends is timed through
     Django's execute_wrapper; Redis's own commandstats count the commands per call;
  2. a cProfile of as many calls, in every thread (the event loop's, the executor's, asgiref's per-request
     ones), each on its thread's CPU clock (time.thread_time), merged: where the CPU goes, per function and
     per package (waits for PostgreSQL, Redis or the fake cost no CPU and drop out).
The fake is called directly from the same loop as the baseline, so "added in-process" is comparable to the
wrk cells' added latency (less uvicorn's HTTP parsing and the loopback hop to the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx

from bench.gateway import MODEL, UPSTREAM_MODEL, GatewayData, chat_body
from bench.profiling import _bucket, _label

# What a thread does while it waits for work or for I/O: left out of the tables (CPU spent entering the wait).
IDLE = {
    ("~", 0, "<method 'poll' of 'select.epoll' objects>"),
    ("~", 0, "<method 'get' of '_queue.SimpleQueue' objects>"),
    ("~", 0, "<method 'acquire' of '_thread.lock' objects>"),
    ("~", 0, "<method 'select' of 'select.epoll' objects>"),
}
# Sync functions the views run through `in_thread` (sync_to_async on a worker thread), by name.
IN_THREAD = {"_admit": "admission (key, route, plan)", "call_hold": "hold", "call_capture": "capture", "call_release": "release"}
# Awaited functions timed as a whole: module, attribute, label.
AWAITED = [
    ("gateway.limits", "key_admit", "key limits: admit (Redis)"),
    ("gateway.limits", "key_tokens_settle", "key limits: give back tokens (Redis)"),
    ("gateway.calls", "call_open", "upstream call (call_open)"),
    ("gateway.upstream", "breaker_allow", "  breaker check (Redis)"),
    ("gateway.upstream", "upstream_acquire", "  upstream slot (Redis)"),
    ("gateway.upstream", "_attempt", "  HTTP to the fake, to its whole answer"),
    ("gateway.upstream", "breaker_success", "  breaker success (Redis)"),
    ("gateway.upstream", "upstream_release", "upstream slot release (Redis)"),
]
# Entry points whose cumulative CPU (on their thread's clock: waits cost nothing) says which part costs what.
ENTRY_POINTS = [
    ("django/core/handlers/asgi.py", "handle", "Django's ASGI handler (its own task, without the view's)"),
    ("gateway/views.py", "_serve", "the view, on the loop (without its threads and the call's task)"),
    ("gateway/views.py", "_admit", "admission in its thread: key, route, plan"),
    ("metering/services/holds.py", "hold_create", "the hold in its thread (metering)"),
    ("gateway/calls.py", "_run", "the call's task on the loop: upstream, Redis, metrics"),
    ("gateway/upstream.py", "call_open", "  of which the upstream call with its breaker and slot"),
    ("gateway/redis.py", "__call__", "  of which Lua scripts on the async Redis client"),
    ("metering/services/holds.py", "hold_capture", "the capture in its thread (metering)"),
    ("asgiref/sync.py", "thread_handler", "every thread hop's work, all phases (includes the three above)"),
]
# The order they are printed in (nested ones indented by their label).
ORDER = [
    "admission (key, route, plan), awaited",
    "admission (key, route, plan), in the thread",
    "key limits: admit (Redis)",
    "hold, awaited",
    "hold, in the thread",
    "upstream call (call_open)",
    "  breaker check (Redis)",
    "  upstream slot (Redis)",
    "  HTTP to the fake, to its whole answer",
    "  breaker success (Redis)",
    "upstream slot release (Redis)",
    "capture, awaited",
    "capture, in the thread",
    "release, awaited",
    "release, in the thread",
    "key limits: give back tokens (Redis)",
]
# The phases one after the other in a call (what the rest is computed against).
SEQUENTIAL = [
    "admission (key, route, plan), awaited",
    "key limits: admit (Redis)",
    "hold, awaited",
    "upstream call (call_open)",
    "upstream slot release (Redis)",
    "capture, awaited",
    "key limits: give back tokens (Redis)",
]


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.statements: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.on = False

    def add(self, name: str, seconds: float) -> None:
        if self.on:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def awaited(self, name: str, function: Callable) -> Callable:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def in_thread(self, original: Callable) -> Callable:
        """A replacement for gateway's `in_thread`: the hop awaited as a whole, and the work in the thread
        with the SQL it sends."""
        from django.db import connection

        def wrap(function: Callable) -> Callable:
            label = IN_THREAD.get(getattr(function, "__name__", ""), getattr(function, "__name__", "?"))

            def work(*args: Any, **kwargs: Any) -> Any:
                def record(execute, sql, params, many, context):
                    started = time.perf_counter()
                    try:
                        return execute(sql, params, many, context)
                    finally:
                        if self.on:
                            self.statements[(label, " ".join(sql.split())[:100])].append(time.perf_counter() - started)

                started = time.perf_counter()
                try:
                    with connection.execute_wrapper(record):
                        return function(*args, **kwargs)
                finally:
                    self.add(f"{label}, in the thread", time.perf_counter() - started)

            return self.awaited(f"{label}, awaited", original(work))

        return wrap


@contextlib.contextmanager
def _phases_installed(clock: PhaseClock) -> Iterator[None]:
    import importlib

    from gateway import calls, views

    replaced: list[tuple[Any, str, Any]] = []
    for module in (views, calls):
        original = getattr(module, "in_thread")  # noqa: B009 - two modules' attribute of one name
        replaced.append((module, "in_thread", original))
        setattr(module, "in_thread", clock.in_thread(original))  # noqa: B010 - idem
    for module_name, attribute, label in AWAITED:
        module = importlib.import_module(module_name)
        original = getattr(module, attribute)
        replaced.append((module, attribute, original))
        setattr(module, attribute, clock.awaited(label, original))
    try:
        yield
    finally:
        for module, attribute, original in reversed(replaced):
            setattr(module, attribute, original)


@contextlib.contextmanager
def _threads_profiled(profiles: list[cProfile.Profile]) -> Iterator[None]:
    """Every thread started inside gets its own cProfile, on its own CPU clock, from its first Python call
    (asgiref's per-request threads and the loop's executor threads, which the caller makes anew)."""

    def bootstrap(frame, event, arg):  # a profile hook that hands over to cProfile in this thread
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(bootstrap)
    try:
        yield
    finally:
        threading.setprofile(None)


async def _calls(client: httpx.AsyncClient, url: str, body: dict, secret: str, count: int) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = defaultdict(int)
    headers = {"Authorization": f"Bearer {secret}"}
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post(url, json=body, headers=headers)
        latencies.append(time.perf_counter() - started)
        statuses[response.status_code] += 1
    return latencies, dict(statuses)


def _redis_commands() -> dict[str, int]:
    import redis
    from django.conf import settings

    stats = redis.Redis.from_url(settings.GATEWAY_REDIS_URL).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _profile_variant(*, secret: str, fake_url: str, requests: int, out_prefix: Path) -> dict:
    from gateway.asgi import application

    loop = asyncio.get_running_loop()
    body = chat_body(model=MODEL)
    transport = httpx.ASGITransport(app=cast(Any, application))  # Django's handler types its scope as a dict
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.bench") as client:
        _, warm_statuses = await _calls(client, "/v1/chat/completions", body, secret, min(50, requests))
        if set(warm_statuses) != {200}:
            raise RuntimeError(f"the gateway answered {warm_statuses} in-process, not 200")

        clock = PhaseClock()
        with _phases_installed(clock):
            redis_before = _redis_commands()
            clock.on = True
            cpu_started = time.process_time()
            latencies, statuses = await _calls(client, "/v1/chat/completions", body, secret, requests)
            process_cpu = time.process_time() - cpu_started
            clock.on = False
            redis_after = _redis_commands()

        # cProfile in every thread: a fresh default executor, so that its threads start profiled.
        previous_executor = ThreadPoolExecutor(thread_name_prefix="bench-profiled")
        loop.set_default_executor(previous_executor)
        profiles: list[cProfile.Profile] = []
        main_profile = cProfile.Profile(time.thread_time)
        with _threads_profiled(profiles):
            started = time.perf_counter()
            main_profile.enable()
            _, profiled_statuses = await _calls(client, "/v1/chat/completions", body, secret, requests)
            main_profile.disable()
            profiled_seconds = time.perf_counter() - started
        previous_executor.shutdown(wait=True)
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench"))

    total = statistics.mean(latencies)
    phases = {name: clock.seconds[name] / requests for name in clock.seconds}
    sequential = sum(phases.get(name, 0.0) for name in SEQUENTIAL)
    hops = {
        label: phases[f"{label}, awaited"] - phases[f"{label}, in the thread"]
        for label in IN_THREAD.values()
        if f"{label}, awaited" in phases
    }
    redis_per_call = {
        name: round((redis_after.get(name, 0) - redis_before.get(name, 0)) / requests, 2)
        for name in redis_after
        if redis_after.get(name, 0) - redis_before.get(name, 0) > 0
    }
    redis_per_call.pop("info", None)

    stats = pstats.Stats(main_profile)
    for profile in profiles:
        with contextlib.suppress(TypeError):  # a thread that never ran Python after its bootstrap
            stats.add(profile)
    prof_path = out_prefix.with_suffix(".prof")
    stats.dump_stats(prof_path)
    rows = stats.stats  # type: ignore[attr-defined]  # func -> (primitive calls, calls, tottime, cumtime, callers)
    idle = sum(values[2] for func, values in rows.items() if func in IDLE)
    busy = {func: values for func, values in rows.items() if func not in IDLE}
    by_own = sorted(busy.items(), key=lambda item: item[1][2], reverse=True)
    packages: dict[str, float] = defaultdict(float)
    for func, values in busy.items():
        packages[_bucket(func[0])] += values[2]
    profiled_cpu = sum(values[2] for values in rows.values())
    entry_points = {}
    for suffix, name, label in ENTRY_POINTS:
        cumulative = sum(v[3] for f, v in rows.items() if f[0].endswith(suffix) and f[2] == name)
        entry_points[label] = round(cumulative / profiled_cpu, 4) if profiled_cpu else 0.0
    text = io.StringIO()
    pstats.Stats(str(prof_path), stream=text).sort_stats("tottime").print_stats(60)
    out_prefix.with_suffix(".txt").write_text(text.getvalue())
    return {
        "requests": requests,
        "statuses": statuses,
        "profiled_statuses": profiled_statuses,
        "ms_per_call": _ms(total),
        "process_cpu_ms_per_call": _ms(process_cpu / requests),  # this process: the gateway and its client
        "p50_ms": _ms(statistics.median(latencies)),
        "phases_ms": {name: _ms(phases[name]) for name in [*ORDER, *sorted(set(phases) - set(ORDER))] if name in phases},
        "rest_ms": _ms(total - sequential),
        "thread_hops_ms": {label: _ms(seconds) for label, seconds in hops.items()},
        "statements": [
            {"phase": phase, "sql": sql, "per_call": round(len(times) / requests, 2), "mean_ms": _ms(statistics.mean(times))}
            for (phase, sql), times in clock.statements.items()
        ],
        "redis_commands_per_call": redis_per_call,
        "profiled_ms_per_call": _ms(profiled_seconds / requests),
        "threads_profiled": len(profiles),
        "idle_ms_per_call": _ms(idle / requests),
        "profiled_cpu_ms_per_call": _ms(profiled_cpu / requests),
        # Shares of the profiled CPU: the profiler's own cost (a Python timer per event) inflates the absolute figures
        # several times, and most where calls are many and small; the shares times the unprofiled CPU are estimates.
        "top_own": [
            {
                "function": _label(func),
                "calls_per_request": round(values[1] / requests, 2),
                "own_share": round(values[2] / profiled_cpu, 4),
            }
            for func, values in by_own[:25]
        ],
        "own_share_by_package": {k: round(v / profiled_cpu, 4) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])},
        "entry_points_cumulative_share": entry_points,
        "files": {"pstats": str(prof_path), "text": str(out_prefix.with_suffix(".txt"))},
    }


async def _profile(*, data: GatewayData, fake_url: str, requests: int, out_prefix: Path) -> dict:
    from gateway import upstream
    from gateway.redis import async_redis_close

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench"))
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=fake_url, trust_env=False) as direct:
            body = chat_body(model=UPSTREAM_MODEL)
            await _calls(direct, "/v1/chat/completions", body, "sk-bench-direct", min(50, requests))
            latencies, _ = await _calls(direct, "/v1/chat/completions", body, "sk-bench-direct", requests)
        out["direct"] = {"ms_per_call": _ms(statistics.mean(latencies)), "p50_ms": _ms(statistics.median(latencies))}
        for name, secret in (("no key limits", data.secret), ("RPM and TPM limits", data.limited_secret)):
            slug = name.replace(" ", "-")
            out[name] = await _profile_variant(
                secret=secret, fake_url=fake_url, requests=requests, out_prefix=out_prefix.with_name(f"{out_prefix.name}-{slug}")
            )
            out[name]["added_ms_per_call"] = round(out[name]["ms_per_call"] - out["direct"]["ms_per_call"], 3)
    finally:
        await async_redis_close()
        for key in [key for key in upstream._clients if key[0] == id(loop)]:
            await upstream._clients.pop(key).aclose()
    return out


def profile_gateway(*, data: GatewayData, fake_url: str, requests: int, out_prefix: Path) -> dict:
    from django.db import connections

    try:
        return asyncio.run(_profile(data=data, fake_url=fake_url, requests=requests, out_prefix=out_prefix))
    finally:
        connections.close_all()


def print_profile(profile: dict) -> None:
    direct = profile["direct"]
    print(
        f"\n  Where the gateway's time goes (in-process, one call at a time; the fake directly from the same loop: "
        f"{direct['ms_per_call']:.3f} ms/call, p50 {direct['p50_ms']:.3f}):"
    )
    for name in ("no key limits", "RPM and TPM limits"):
        variant = profile.get(name)
        if not variant:
            continue
        print(
            f"  key with {name}: {variant['ms_per_call']:.3f} ms/call (p50 {variant['p50_ms']:.3f}), added in-process "
            f"{variant['added_ms_per_call']:+.3f} ms; CPU {variant['process_cpu_ms_per_call']:.3f} ms/call (the gateway and "
            f"the test client); statuses {variant['statuses']}"
        )
        print("    phase, ms per call:")
        for phase, ms in variant["phases_ms"].items():
            indent = "    " if phase.endswith(", in the thread") else ""
            print(f"      {ms:8.3f}  {indent}{phase}")
        print(
            f"      {variant['rest_ms']:8.3f}  the rest: Django's ASGI handler and signals, the view, the call's task, the client"
        )
        print(
            "    thread hops (awaited − in the thread), ms: "
            + ", ".join(f"{label} {ms:.3f}" for label, ms in variant["thread_hops_ms"].items())
        )
        statements = variant["statements"]
        every_call = [s for s in statements if s["per_call"] >= 0.5]
        print(
            "    SQL per call (Django's cursor; BEGIN/COMMIT are psycopg's own and not listed; "
            f"{len(statements) - len(every_call)} rarer statements, the caches' refreshes, left out):"
        )
        for s in sorted(every_call, key=lambda s: -s["mean_ms"] * s["per_call"]):
            print(f"      {s['per_call']:4g} x {s['mean_ms']:6.3f} ms  {s['phase']:<28} {s['sql']}")
        print(
            "    Redis commands per call: "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(variant["redis_commands_per_call"].items()))
        )
        cpu = variant["process_cpu_ms_per_call"]
        print(
            f"    cProfile on each thread's CPU clock ({variant['threads_profiled']} threads; the profiler inflates the CPU to "
            f"{variant['profiled_cpu_ms_per_call']:.1f} ms/call, so shares, and ≈ ms = share × the unprofiled {cpu:.2f} ms):"
        )
        print("    cumulative CPU of the entry points:")
        for label, share in variant["entry_points_cumulative_share"].items():
            print(f"      {share:6.1%}  ≈{share * cpu:6.3f} ms  {label}")
        print("    top own CPU:")
        for row in variant["top_own"][:10]:
            print(f"      {row['own_share']:6.1%}  x{row['calls_per_request']:<7g} {row['function']}")
        print(
            "    own CPU by package: " + ", ".join(f"{k} {v:.1%}" for k, v in list(variant["own_share_by_package"].items())[:10])
        )
        print(f"    full profile: {variant['files']['text']}")
