"""(5) The AI gateway (issue 13; docs/performance.md, "Gateway"): a fake OpenAI upstream called directly and
through the gateway, in one run, on the same machine.

  non-streamed   POST /v1/chat/completions, wrk at each client count: the fake directly, then through the
                 gateway (gunicorn -c gunicorn_gateway.conf.py, uvicorn workers), interleaved. Added latency =
                 gateway p50 − direct p50; throughput ratio = gateway / direct.
  first byte     streamed chat completions, N concurrent streams a round (an asyncio httpx client), direct
                 and through the gateway, rounds interleaved: time to the first byte of the body.
  slow streams   N (200) concurrent streams through the gateway from a second fake that writes one token
                 every --stream-chunk-delay s (each stream lasts --stream-seconds): the gateway workers' RSS
                 before vs while they are open, per stream; POST /api/v1/usage/ p50 (wrk, the web gunicorn
                 the bench already runs) while they are open vs idle before and after. Every stream must end
                 in [DONE] and be captured once, for exactly its tokens at the route's price.
  profile        where the gateway's own time goes: bench/gateway_profile.py, in-process.

The gateway's organization (`bench-gateway`), service, upstreams and routes are made through the services;
its wallet is funded through the ledger and checked with the other bench organizations at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx

from bench import cpu, soak_memory, web
from bench.env import BASE_DIR, RESULTS_DIR
from bench.fixtures import OWNER_EMAIL

ORGANIZATION_SLUG = "bench-gateway"
SERVICE_SLUG = "bench-tokens"
FAST_UPSTREAM = "bench-fake"
SLOW_UPSTREAM = "bench-fake-slow"
MODEL = "bench-chat"  # routed to the fast fake
SLOW_MODEL = "bench-chat-slow"  # routed to the slow one
UPSTREAM_MODEL = "gpt-4o-mini"  # what the fakes are asked for (their tokenizer), directly or by the gateway
INPUT_PRICE = Decimal("2.50")  # per million tokens
OUTPUT_PRICE = Decimal("10.00")
FUNDING = Decimal("1000000")
MAX_TOKENS = 16  # the reply of a non-streamed or first-byte call
PROMPT = "Say hello to the benchmark."
UPSTREAM_CONCURRENCY = 10_000  # the upstreams' cap must not be what the bench measures
# Issue 13's aims (docs/performance.md, "Gateway").
AIMS = {"added_p50_ms_1": 3.0, "usage_p50_ratio": 1.5}


# --- setup ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayData:
    organization_id: int
    secret: str  # a live key without limits: the load's
    limited_secret: str  # a live key with RPM and TPM limits far above any load: the profile's second variant
    key_file: str  # the load's key, for wrk
    service_slug: str = SERVICE_SLUG


def ensure_gateway(*, fast_url: str, slow_url: str) -> GatewayData:
    """The gateway's bench organization, keys, priced service, the two upstreams (pointed at this run's fakes)
    and their routes; made or updated through the services, idempotently."""
    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_digest, organization_create
    from gateway import services as gateway_services
    from gateway.models import ModelRoute, Upstream
    from metering.models import CalcMethod, Price, Service
    from metering.services import price_create, service_create
    from payments.ledger import wallet_adjust
    from payments.models import Wallet

    owner = User.objects.get(email=OWNER_EMAIL)
    organization = Organization.objects.filter(slug=ORGANIZATION_SLUG).first() or organization_create(
        name=ORGANIZATION_SLUG, owner=owner
    )
    service = Service.objects.filter(slug=SERVICE_SLUG).first() or service_create(
        slug=SERVICE_SLUG, name="Bench tokens", calc_method=CalcMethod.TOKENS
    )
    if service.calc_method != CalcMethod.TOKENS or not service.active:
        raise SystemExit(f"bench: the service {SERVICE_SLUG} exists but is not an active TOKENS service; use another database.")
    if not Price.objects.filter(service=service, organization__isnull=True).exists():
        price_create(
            service=service,
            organization_id=None,
            effective_from=None,
            created_by_id=owner.pk,
            input_price=INPUT_PRICE,
            output_price=OUTPUT_PRICE,
        )
    for name, url in ((FAST_UPSTREAM, fast_url), (SLOW_UPSTREAM, slow_url)):
        upstream = Upstream.objects.filter(name=name).first()
        if upstream is None:
            gateway_services.upstream_create(
                name=name,
                base_url=url + "/v1",
                max_concurrency=UPSTREAM_CONCURRENCY,
                timeout_seconds=60.0,
                idle_timeout_seconds=60.0,
            )
        else:
            gateway_services.upstream_update(
                upstream=upstream,
                base_url=url + "/v1",
                active=True,
                max_concurrency=UPSTREAM_CONCURRENCY,
                timeout_seconds=60.0,
                idle_timeout_seconds=60.0,
            )
    for model, upstream_name in ((MODEL, FAST_UPSTREAM), (SLOW_MODEL, SLOW_UPSTREAM)):
        links = [gateway_services.RouteUpstreamSpec(upstream=upstream_name, upstream_model=UPSTREAM_MODEL)]
        route = ModelRoute.objects.filter(model=model).first()
        if route is None:
            gateway_services.model_route_create(
                model=model, service=SERVICE_SLUG, upstreams=links, on_disconnect="drain", default_max_tokens=MAX_TOKENS
            )
        else:
            gateway_services.model_route_update(route=route, service=SERVICE_SLUG, upstreams=links, active=True)

    keys_file = _keys_file()
    try:
        secrets: dict[str, str] = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        secrets = {}
    limits: dict[str, int | None] = {"plain": None, "limited": 2_000_000_000}
    for name, limit in limits.items():
        secret = secrets.get(name)
        usable = (
            secret is not None
            and ApiKey.objects.filter(
                organization=organization, digest=api_key_digest(secret), revoked_at__isnull=True, mode="live"
            ).exists()
        )
        if not usable:
            secrets[name] = api_key_create(
                organization=organization, name=f"bench gateway {name}", created_by=owner, rpm_limit=limit, tpm_limit=limit
            ).secret
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            keys_file.write_text(json.dumps(secrets))
            keys_file.chmod(0o600)
    balance = Wallet.objects.get(organization=organization).balance
    if balance < FUNDING / 2:
        wallet_adjust(organization_id=organization.pk, amount=FUNDING - balance, reason="bench funding", created_by_id=owner.pk)
    key_file = RESULTS_DIR / ".wrk-keys-gateway.txt"
    key_file.write_text(secrets["plain"] + "\n")
    key_file.chmod(0o600)
    return GatewayData(
        organization_id=organization.pk, secret=secrets["plain"], limited_secret=secrets["limited"], key_file=str(key_file)
    )


def _keys_file() -> Path:
    """Key secrets are shown once: kept per database (git-ignored), like bench.fixtures' ones."""
    from django.db import connection

    where = connection.settings_dict["NAME"] + str(connection.get_connection_params().get("host"))
    return RESULTS_DIR / f".keys-gateway-{hashlib.sha256(where.encode()).hexdigest()[:12]}.json"


def chat_body(*, model: str, stream: bool = False, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return body


# --- processes --------------------------------------------------------------------------------------------


class FakeUpstreamProcess:
    """`python -m tests.gateway.fake_upstream` on a free loopback port (the tests' fake, as a process)."""

    def __init__(self, *, log_path: Path, chunk_delay: float = 0.0, chunks: int | None = None) -> None:
        self.log_path, self.chunk_delay, self.chunks = log_path, chunk_delay, chunks
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> FakeUpstreamProcess:
        self.port = web.free_port()
        argv = [sys.executable, "-m", "tests.gateway.fake_upstream", "--port", str(self.port)]
        argv += ["--chunk-delay", str(self.chunk_delay)] + (["--chunks", str(self.chunks)] if self.chunks else [])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=web._die_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: the fake upstream exited with status {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as response:  # noqa: S310 - our own http URL
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"bench: the fake upstream did not answer within {timeout:.0f}s; see {self.log_path}")

    def processes(self):
        return cpu.tree(self.process.pid) if self.process else []

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def gateway_gunicorn(*, workers: int, log_path: Path) -> web.Gunicorn:
    """The gateway as deployed: gunicorn -c gunicorn_gateway.conf.py (its uvicorn workers), on a free port."""
    from bench.env import app_environment

    environment = app_environment()
    environment["DJANGO_SETTINGS_MODULE"] = "billing_site.settings"
    environment["GATEWAY_WORKERS"] = str(workers)
    environment["LOG_LEVEL"] = "WARNING"  # a line per call would be load of the bench's own
    return web.Gunicorn(
        env=environment, workers=workers, config=BASE_DIR / "gunicorn_gateway.conf.py", log_path=log_path, worker_class=None
    )


def memory(processes) -> dict[str, int]:
    """RSS and anonymous RSS (heap: soak_memory explains the difference) summed over `processes`."""
    rows = [row for row in (soak_memory.measure(p, "gateway worker") for p in processes) if row is not None]
    return {"rss": sum(r["rss"] for r in rows), "anon": sum(r["anon"] or 0 for r in rows), "processes": len(rows)}


# --- streams from an asyncio client -------------------------------------------------------------------------


@dataclass
class StreamResult:
    status: int | None = None
    ttfb: float | None = None  # seconds to the first byte of the body
    seconds: float | None = None  # to the end of the body
    done: bool = False  # the body ended with `data: [DONE]`
    request_id: str | None = None
    body_bytes: int = 0
    error: str = ""


async def stream_once(client: httpx.AsyncClient, *, url: str, secret: str, body: dict[str, Any], on_first=None) -> StreamResult:
    result = StreamResult()
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {secret}"}) as response:
            result.status, result.request_id = response.status_code, response.headers.get("x-request-id")
            tail = b""
            async for chunk in response.aiter_raw():
                if result.ttfb is None:
                    result.ttfb = time.perf_counter() - started
                    if on_first is not None:
                        on_first()
                        on_first = None
                tail = (tail + chunk)[-64:]
                result.body_bytes += len(chunk)
            result.done = tail.rstrip().endswith(b"data: [DONE]")
    except Exception as error:  # noqa: BLE001 - reported per stream; the verdict counts them
        result.error = f"{type(error).__name__}: {error}"[:200]
    finally:
        result.seconds = time.perf_counter() - started
        if on_first is not None:
            on_first()  # settled without a first byte: the waiter must not wait for it
    return result


def _client(timeout: float) -> httpx.AsyncClient:
    # No pool cap: every stream its own connection, as N separate clients would have.
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        timeout=httpx.Timeout(timeout, connect=30.0),
        trust_env=False,
    )


async def first_byte_rounds(*, targets: dict[str, tuple[str, str, dict]], streams: int, rounds: int) -> dict[str, list]:
    """`streams` concurrent streams per target and round, targets alternating first; answers the results."""
    out: dict[str, list[StreamResult]] = {name: [] for name in targets}
    names = list(targets)
    async with _client(60.0) as client:
        for round_index in range(rounds + 1):  # round 0 warms the connections and is dropped
            for name in names if round_index % 2 == 0 else reversed(names):
                url, secret, body = targets[name]
                results = await asyncio.gather(*(stream_once(client, url=url, secret=secret, body=body) for _ in range(streams)))
                if round_index:
                    out[name].extend(results)
    return out


class StreamFleet:
    """`count` concurrent streams in a thread of their own (an asyncio loop), while the caller measures."""

    def __init__(self, *, url: str, secret: str, body: dict[str, Any], count: int, timeout: float) -> None:
        self.url, self.secret, self.body, self.count, self.timeout = url, secret, body, count, timeout
        self.results: list[StreamResult] = []
        self._settled = 0
        self._lock = threading.Lock()
        self.all_settled = threading.Event()  # every stream had its first byte (or failed before it)
        self.started_at = 0.0
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="bench-streams", daemon=True)

    def start(self) -> StreamFleet:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _first(self) -> None:
        with self._lock:
            self._settled += 1
            if self._settled >= self.count:
                self.all_settled.set()

    def _run(self) -> None:
        async def run() -> list[StreamResult]:
            async with _client(self.timeout) as client:
                return list(
                    await asyncio.gather(
                        *(
                            stream_once(client, url=self.url, secret=self.secret, body=self.body, on_first=self._first)
                            for _ in range(self.count)
                        )
                    )
                )

        try:
            self.results = asyncio.run(run())
        except Exception as error:  # noqa: BLE001 - the main thread reports it
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.all_settled.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


# --- the cells ---------------------------------------------------------------------------------------------


def _usage_records_between(organization_id: int, start: datetime, end: datetime) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM metering_usagerecord WHERE organization_id = %s AND created_at >= %s AND created_at < %s",
            [organization_id, start, end],
        )
        return cursor.fetchone()[0]


def _wrk_cell(
    *, url: str, script: str, script_args: list[str], clients: int, args, window_groups: dict, run_id: str | None = None
) -> tuple[dict, dict, datetime]:
    """wrk's warm-up, then its measured cell; answers its result, the cores each group used, and when it started.
    With `run_id`, the warm-up and the cell get their own (the script's first argument: unique idempotency keys)."""
    threads = max(1, min(clients, len(os.sched_getaffinity(0))))
    if args.warmup > 0:
        web.run_wrk(
            url=url,
            script=script,
            script_args=[f"{run_id}w", *script_args] if run_id else script_args,
            connections=clients,
            duration=max(1, round(args.warmup)),
            threads=threads,
        )
    window = cpu.Window(window_groups, children_rusage="gen").start()
    started = datetime.now(UTC)
    out = web.run_wrk(
        url=url,
        script=script,
        script_args=[f"{run_id}m", *script_args] if run_id else script_args,
        connections=clients,
        duration=max(1, round(args.duration)),
        threads=threads,
    )
    return out, window.stop(), started


def _cell_of(out: dict, cores: dict, *, ok_status: int) -> dict:
    seconds = out["duration_us"] / 1e6
    socket_errors = sum(v for k, v in out["errors"].items() if k != "status")
    non_ok = sum(n for code, n in out["statuses"].items() if int(code) != ok_status)
    lat = out["latency_us"]
    return {
        "throughput": out["ok_events"] / seconds,
        "requests": out["requests"],
        "seconds": round(seconds, 2),
        "p50_ms": round(lat["p50"] / 1000, 3) if out["requests"] else None,
        "p90_ms": round(lat["p90"] / 1000, 3) if out["requests"] else None,
        "p99_ms": round(lat["p99"] / 1000, 3) if out["requests"] else None,
        "errors": non_ok + socket_errors,
        "attempts": out["requests"] + socket_errors,
        "error_detail": ", ".join(
            [
                *(f"{n}× HTTP {c}" for c, n in out["statuses"].items() if int(c) != ok_status),
                *(f"{n}× socket {k}" for k, n in out["errors"].items() if k != "status" and n),
            ]
        ),
        "cpu_cores": cores,
    }


def run_nonstream_cell(*, path: str, clients: int, args, ctx: GatewayRun) -> dict:
    """One wrk cell of non-streamed chat completions: `path` is "direct" (the fake) or "gateway"."""
    url = (ctx.fake.url if path == "direct" else ctx.gateway.url) + "/v1/chat/completions"
    key_file, body_file = ctx.files[path]
    groups = {
        "gateway": ctx.gateway.processes,
        "upstream": ctx.fake.processes,
        "db": lambda: cpu.postgres(ctx.target.postmaster_pid, ctx.target.database),
    }
    out, cores, started = _wrk_cell(
        url=url,
        script="chat.lua",
        script_args=["/v1/chat/completions", key_file, body_file],
        clients=clients,
        args=args,
        window_groups=groups,
    )
    cell = _cell_of(out, cores, ok_status=200)
    if path == "gateway":
        # Usage records the gateway captured while wrk measured: a call is answered only once it is charged.
        ctx.gateway.wait_idle()
        end = started + timedelta(seconds=cell["seconds"])
        cell["charged_per_s"] = _usage_records_between(ctx.data.organization_id, started, end) / cell["seconds"]
    return cell


def run_usage_cell(*, clients: int, args, ctx: GatewayRun, run_id: str) -> dict:
    """POST /api/v1/usage/ on the hot wallet through the web gunicorn (the bench's (2)), wrk for one cell."""
    groups = {
        "web": ctx.web_app.processes,
        "gateway": ctx.gateway.processes,
        "upstream": ctx.slow_fake.processes,
        "db": lambda: cpu.postgres(ctx.target.postmaster_pid, ctx.target.database),
        "bench": lambda: cpu.by_pids([os.getpid()]),
    }
    out, cores, _ = _wrk_cell(
        url=ctx.web_app.url + "/api/v1/usage/",
        script="usage.lua",
        script_args=[ctx.bench_data.service_slug, ctx.hot_key_file, "/api/v1/usage/"],
        clients=clients,
        args=args,
        window_groups=groups,
        run_id=run_id,
    )
    return _cell_of(out, cores, ok_status=201)


@dataclass
class GatewayRun:
    """What the gateway case runs against."""

    data: GatewayData
    bench_data: Any  # bench.fixtures.BenchData: the hot wallet's key and service for POST usage/
    hot_key_file: str
    target: Any
    web_app: web.Gunicorn
    gateway: web.Gunicorn
    fake: FakeUpstreamProcess
    slow_fake: FakeUpstreamProcess
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (wrk key file, body file)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, as bench.run's."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _quiet(args) -> dict | None:
    if args.wait_quiet <= 0:
        return None
    waited, busy = cpu.wait_quiet(limit_cores=0.35, timeout=args.wait_quiet)
    return {"waited_s": round(waited, 1), "busy_cores_before": round(busy, 2)}


def _stream_oracle_cost(*, input_tokens: int, output_tokens: int) -> Decimal:
    """What one stream must cost: its tokens at the route's prices, rounded once half-even to the stored scale."""
    from billing_site.money import MONEY_QUANTUM

    exact = (Decimal(input_tokens) * INPUT_PRICE + Decimal(output_tokens) * OUTPUT_PRICE) / Decimal(1_000_000)
    return exact.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def streams_charged(*, organization_id: int, results: list[StreamResult], body: dict[str, Any], output_tokens: int) -> dict:
    """Each stream's hold captured once, by one usage record of outcome `completed` for exactly the tokens
    the fake wrote (and the prompt the fake counted), at the oracle's cost."""
    from gateway.tokens import count_chat_prompt
    from metering.models import Hold, UsageRecord
    from metering.services.events import RESERVED_KEY_PREFIX

    input_tokens = count_chat_prompt({**body, "model": UPSTREAM_MODEL}, model=UPSTREAM_MODEL)
    expected_cost = _stream_oracle_cost(input_tokens=input_tokens, output_tokens=output_tokens)
    ids = [r.request_id for r in results if r.request_id]
    holds = dict(
        Hold.objects.filter(
            organization_id=organization_id, idempotency_key__in=[f"{RESERVED_KEY_PREFIX}gateway:{i}" for i in ids]
        ).values_list("id", "status")
    )
    records = list(
        UsageRecord.objects.filter(organization_id=organization_id, hold_id__in=list(holds)).values(
            "hold_id", "input_tokens", "output_tokens", "cost", "metadata"
        )
    )
    per_hold: dict[int, int] = {}
    for record in records:
        per_hold[record["hold_id"]] = per_hold.get(record["hold_id"], 0) + 1
    exact = [
        r
        for r in records
        if r["metadata"].get("outcome") == "completed"
        and not r["metadata"].get("estimated")
        and r["input_tokens"] == input_tokens
        and r["output_tokens"] == output_tokens
        and r["cost"] == expected_cost
    ]
    return {
        "streams": len(results),
        "with_request_id": len(ids),
        "holds": len(holds),
        "holds_captured": sum(1 for status in holds.values() if status == "captured"),
        "records": len(records),
        "holds_with_one_record": sum(1 for n in per_hold.values() if n == 1),
        "records_exact": len(exact),
        "expected": {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": str(expected_cost)},
        "ok": len(results) == len(ids) == len(holds) == len(records) == len(exact)
        and all(status == "captured" for status in holds.values())
        and all(n == 1 for n in per_hold.values()),
    }


def holds_check(*, organization_id: int, since: datetime) -> dict:
    """After the case: every call's hold was captured or released (none left active), and the wallet holds
    exactly its active holds. A hold left active reserves its amount until it expires (GATEWAY_HOLD_SECONDS)."""
    from django.db.models import Sum

    from metering.models import Hold
    from payments.models import Wallet

    active = Hold.objects.filter(organization_id=organization_id, status="active", test=False)
    total = active.aggregate(total=Sum("amount"))["total"] or Decimal(0)
    held = Wallet.objects.get(organization_id=organization_id).held
    left = active.filter(created_at__gte=since)
    return {
        "active_holds": active.count(),
        "active_holds_this_run": left.count(),
        "active_amount": str(total),
        "wallet_held": str(held),
        "first_left_at": [str(t) for t in left.order_by("created_at").values_list("created_at", flat=True)[:5]],
        "ok": active.count() == 0 and held == 0,
    }


def run_slow_streams(*, args, ctx: GatewayRun, run_id: str) -> dict:
    """The 200 slow streams: memory per stream, POST usage/ p50 while they run vs idle, all charged."""
    chunks = max(2, round(args.stream_seconds / args.stream_chunk_delay))
    body = chat_body(model=SLOW_MODEL, stream=True, max_tokens=chunks)
    out: dict[str, Any] = {"streams": args.streams, "chunks": chunks, "chunk_delay_s": args.stream_chunk_delay}
    out["quiet_idle_before"] = _quiet(args)
    out["usage_idle_before"] = run_usage_cell(clients=args.usage_clients, args=args, ctx=ctx, run_id=f"{run_id}-idle1")
    samples = []
    for _ in range(3):
        samples.append(memory(ctx.gateway.processes()[1:]))
        time.sleep(0.5)
    out["memory_idle"] = samples[len(samples) // 2] | {"samples": [s["rss"] for s in samples]}
    fleet = StreamFleet(
        url=ctx.gateway.url + "/v1/chat/completions",
        secret=ctx.data.secret,
        body=body,
        count=args.streams,
        timeout=args.stream_seconds * 4 + 60,
    ).start()
    settled = fleet.all_settled.wait(timeout=120)
    out["ramp_seconds"] = round(time.monotonic() - fleet.started_at, 2)
    during: list[dict] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            during.append(memory(ctx.gateway.processes()[1:]))
            sampling.wait(0.5)

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    sampler.start()
    window_from = time.monotonic()
    out["usage_during"] = (
        run_usage_cell(clients=args.usage_clients, args=args, ctx=ctx, run_id=f"{run_id}-during") if settled else None
    )
    window_to = time.monotonic()
    sampling.set()
    sampler.join(5)
    finished = fleet.join(timeout=args.stream_seconds * 4 + 120)
    results = fleet.results
    # A stream was open throughout the usage/ window if it had its first byte before it and ended after it.
    open_throughout = sum(
        1
        for r in results
        if r.ttfb is not None and r.seconds is not None and fleet.started_at + r.seconds > window_to and r.status == 200
    )
    out["open_throughout_window"] = open_throughout
    out["window_seconds"] = round(window_to - window_from, 1)
    rss = sorted(s["rss"] for s in during)
    anon = sorted(s["anon"] for s in during)
    out["memory_during"] = {"rss": rss[len(rss) // 2] if rss else None, "anon": anon[len(anon) // 2] if anon else None}
    if rss:
        out["rss_per_stream_kib"] = round((out["memory_during"]["rss"] - out["memory_idle"]["rss"]) / args.streams / 1024, 1)
        out["anon_per_stream_kib"] = round((out["memory_during"]["anon"] - out["memory_idle"]["anon"]) / args.streams / 1024, 1)
    ok_results = [r for r in results if r.status == 200 and r.done and not r.error]
    out["completed"] = len(ok_results)
    out["finished"] = finished
    out["errors"] = sorted({r.error or f"HTTP {r.status}" for r in results if r not in ok_results})[:5] + (
        [fleet.error] if fleet.error else []
    )
    out["stream_seconds_p50"] = round(_median([r.seconds for r in results]) or 0, 2)
    out["ttfb_ms_p50"] = _ms(_median([r.ttfb for r in results]))
    out["quiet_idle_after"] = _quiet(args)
    out["usage_idle_after"] = run_usage_cell(clients=args.usage_clients, args=args, ctx=ctx, run_id=f"{run_id}-idle2")
    idle = [c["p50_ms"] for c in (out["usage_idle_before"], out["usage_idle_after"]) if c and c["p50_ms"]]
    out["usage_idle_p50_ms"] = statistics.mean(idle) if idle else None
    during_p50 = out["usage_during"]["p50_ms"] if out["usage_during"] else None
    out["usage_ratio"] = during_p50 / out["usage_idle_p50_ms"] if during_p50 and out["usage_idle_p50_ms"] else None
    out["charged"] = streams_charged(organization_id=ctx.data.organization_id, results=results, body=body, output_tokens=chunks)
    return out


def run_first_byte(*, args, ctx: GatewayRun) -> dict:
    targets = {
        "direct": (ctx.fake.url + "/v1/chat/completions", "sk-bench-direct", chat_body(model=UPSTREAM_MODEL, stream=True)),
        "gateway": (ctx.gateway.url + "/v1/chat/completions", ctx.data.secret, chat_body(model=MODEL, stream=True)),
    }
    return {str(streams): _first_byte_at(targets=targets, streams=streams, args=args) for streams in args.ttfb_streams}


def _first_byte_at(*, targets: dict, streams: int, args) -> dict:
    # As many samples at every concurrency: fewer streams at once, more rounds.
    rounds = args.ttfb_rounds * max(1, 16 // streams)
    results = asyncio.run(first_byte_rounds(targets=targets, streams=streams, rounds=rounds))
    out: dict[str, Any] = {"streams": streams, "rounds": rounds}
    for name, rows in results.items():
        good = [r.ttfb for r in rows if r.status == 200 and r.done and r.ttfb is not None]
        out[name] = {
            "samples": len(rows),
            "ok": len(good),
            "p50_ms": _ms(_percentile(good, 50)),
            "p99_ms": _ms(_percentile(good, 99)),
            "errors": sorted({r.error or f"HTTP {r.status}" for r in rows if not (r.status == 200 and r.done)})[:3],
        }
    if out["direct"]["p50_ms"] is not None and out["gateway"]["p50_ms"] is not None:
        out["added_p50_ms"] = round(out["gateway"]["p50_ms"] - out["direct"]["p50_ms"], 3)
        out["added_p99_ms"] = round(out["gateway"]["p99_ms"] - out["direct"]["p99_ms"], 3)
    return out


def _write_files(data: GatewayData) -> dict[str, tuple[str, str]]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    direct_keys = RESULTS_DIR / ".wrk-keys-direct.txt"
    direct_keys.write_text("sk-bench-direct\n")  # the fake takes any key
    files = {}
    for path, key_file, model in (("direct", str(direct_keys), UPSTREAM_MODEL), ("gateway", data.key_file, MODEL)):
        body_file = RESULTS_DIR / f".wrk-body-{path}.json"
        body_file.write_text(json.dumps(chat_body(model=model)))
        files[path] = (key_file, str(body_file))
    return files


def preflight(ctx: GatewayRun) -> None:
    """One call each way outside wrk: the load must be measuring successes."""
    for path in ("direct", "gateway"):
        base = ctx.fake.url if path == "direct" else ctx.gateway.url
        key_file, body_file = ctx.files[path]
        secret = Path(key_file).read_text().strip()
        request = urllib.request.Request(  # noqa: S310 - loopback
            base + "/v1/chat/completions",
            data=Path(body_file).read_bytes(),
            method="POST",
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - idem
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise SystemExit(f"bench: the gateway case's {path} call answered {error.code}: {error.read()[:300]!r}") from None
        if not answer.get("choices") or not answer.get("usage"):
            raise SystemExit(f"bench: the {path} call answered no completion: {json.dumps(answer)[:300]}")


def run_gateway(*, args, bench_data, hot_key_file: str, target, web_gunicorn: web.Gunicorn, run_id: str, stamp: str) -> dict:
    """The whole gateway case; answers its cells, summary rows, aims and checks (printed by print_gateway)."""
    from bench import fixtures, gateway_profile

    slow_chunks = max(2, round(args.stream_seconds / args.stream_chunk_delay))
    fake = FakeUpstreamProcess(log_path=RESULTS_DIR / f"{stamp}-fake-upstream.log").start()
    slow_fake = FakeUpstreamProcess(
        log_path=RESULTS_DIR / f"{stamp}-fake-upstream-slow.log", chunk_delay=args.stream_chunk_delay, chunks=slow_chunks
    ).start()
    gateway = gateway_gunicorn(workers=args.gateway_workers, log_path=RESULTS_DIR / f"{stamp}-gateway.log")
    case_started = datetime.now(UTC)
    result: dict[str, Any] = {
        "gateway_workers": args.gateway_workers,
        "cells": [],
        "failed": [],
        "log": f"bench/results/{stamp}-gateway.log",
    }
    try:
        data = ensure_gateway(fast_url=fake.url, slow_url=slow_fake.url)
        gateway.start()
        ctx = GatewayRun(
            data=data,
            bench_data=bench_data,
            hot_key_file=hot_key_file,
            target=target,
            web_app=web_gunicorn,
            gateway=gateway,
            fake=fake,
            slow_fake=slow_fake,
            files=_write_files(data),
        )
        preflight(ctx)
        for rep in range(args.repeat):
            for clients in args.clients:
                for path in ("direct", "gateway") if (rep + clients) % 2 == 0 else ("gateway", "direct"):
                    quiet = _quiet(args)
                    try:
                        cell = run_nonstream_cell(path=path, clients=clients, args=args, ctx=ctx)
                    except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others' results
                        print(f"  (5) gateway {path:<7} {clients:>3} clients: FAILED: {exc}", flush=True)
                        result["failed"].append({"path": path, "clients": clients, "repeat": rep, "error": str(exc)})
                        continue
                    cell.update(path=path, clients=clients, repeat=rep, quiet=quiet)
                    result["cells"].append(cell)
                    c = cell["cpu_cores"]
                    print(
                        f"  (5) chat, not streamed, {path:<7} {clients:>3} clients: {cell['throughput']:>7,.0f} req/s  "
                        f"p50 {cell['p50_ms'] or 0:7.2f} ms  p99 {cell['p99_ms'] or 0:8.2f} ms  errors {cell['errors']}  "
                        f"cpu gateway {c.get('gateway', 0):.2f} upstream {c.get('upstream', 0):.2f} db {c.get('db', 0):.2f} "
                        f"gen {c.get('gen', 0):.2f} other {c.get('other', 0):.2f}"
                        + (
                            f"  (waited {quiet['waited_s']:.0f}s for quiet: {quiet['busy_cores_before']:.2f} busy)"
                            if quiet
                            else ""
                        ),
                        flush=True,
                    )
        result["rows"] = summarize(result["cells"], args.clients)
        print(f"bench: gateway: time to first byte, {args.ttfb_streams} concurrent streams", flush=True)
        result["quiet_first_byte"] = _quiet(args)
        result["first_byte"] = run_first_byte(args=args, ctx=ctx)
        print(
            f"bench: gateway: {args.streams} concurrent streams of {slow_chunks} tokens, one every {args.stream_chunk_delay:g} s",
            flush=True,
        )
        result["streams"] = run_slow_streams(args=args, ctx=ctx, run_id=f"{run_id}-gw")
        gateway.stop()
        if args.gateway_profile_requests > 0:
            print(f"bench: gateway: profiling {args.gateway_profile_requests} calls in-process", flush=True)
            try:
                result["profile"] = gateway_profile.profile_gateway(
                    data=data,
                    fake_url=fake.url,
                    requests=args.gateway_profile_requests,
                    out_prefix=RESULTS_DIR / f"{stamp}-gateway-profile",
                )
            except Exception as exc:  # noqa: BLE001 - report it with the results measured so far
                print(f"bench: the gateway profile failed: {type(exc).__name__}: {exc}", flush=True)
                result["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
        result["holds"] = holds_check(organization_id=data.organization_id, since=case_started)
        result["invariants"] = fixtures.verify_organizations([data.organization_id]) if not args.no_verify else None
        result["organization_id"] = data.organization_id
    finally:
        gateway.stop()
        fake.stop()
        slow_fake.stop()
    result["aims"] = aims(result, args)
    streams = result.get("streams") or {}
    charged_ok = bool(streams.get("charged", {}).get("ok")) and streams.get("completed") == args.streams
    invariants_ok = result.get("invariants") is None or result["invariants"]["ok"]
    result["ok"] = charged_ok and result.get("holds", {}).get("ok", False) and invariants_ok
    return result


def summarize(cells: list[dict], clients_list: list[int]) -> list[dict]:
    rows = []
    for clients in clients_list:
        row: dict[str, Any] = {"clients": clients}
        for path in ("direct", "gateway"):
            runs = [c for c in cells if c["clients"] == clients and c["path"] == path]
            if not runs:
                continue
            row[path] = {
                "throughput": _median(c["throughput"] for c in runs),
                "p50_ms": _median(c["p50_ms"] for c in runs),
                "p99_ms": _median(c["p99_ms"] for c in runs),
                "errors": sum(c["errors"] for c in runs),
                "error_rate": sum(c["errors"] for c in runs) / max(1, sum(c["attempts"] for c in runs)),
                "cpu_cores": {
                    k: round(_median(c["cpu_cores"].get(k) for c in runs) or 0, 2)
                    for k in ("gateway", "upstream", "db", "gen", "other")
                },
                "runs": [round(c["throughput"], 1) for c in runs],
            }
            if path == "gateway":
                row[path]["charged_per_s"] = _median(c.get("charged_per_s") for c in runs)
        direct, through = row.get("direct"), row.get("gateway")
        if direct and through and direct["p50_ms"] is not None and through["p50_ms"] is not None:
            row["added_p50_ms"] = round(through["p50_ms"] - direct["p50_ms"], 3)
            row["added_p99_ms"] = round(through["p99_ms"] - direct["p99_ms"], 3)
            row["throughput_ratio"] = through["throughput"] / direct["throughput"] if direct["throughput"] else None
            # CPU per call through the gateway, beyond the fake's: the gateway's own cost, steadier than latency on
            # a shared machine.
            row["gateway_cpu_ms_per_call"] = (
                round(through["cpu_cores"]["gateway"] / through["throughput"] * 1000, 3) if through["throughput"] else None
            )
        rows.append(row)
    return rows


def aims(result: dict, args) -> list[dict]:
    out = []
    rows = {r["clients"]: r for r in result.get("rows", [])}
    one = rows.get(1)
    value = one.get("added_p50_ms") if one else None
    invalid = one is not None and any((one.get(p) or {}).get("error_rate", 0) > 0.01 for p in ("direct", "gateway"))
    target = AIMS["added_p50_ms_1"]
    out.append(
        {
            "aim": f"(5) gateway adds at p50, 1 client <= {target:g} ms",
            "value": value,
            "target": target,
            "ok": None if value is None or invalid else value <= target,
            "invalid": invalid,
            "text": "n/a (cell not run)" if value is None else f"{value:+.2f} ms",
        }
    )
    streams = result.get("streams") or {}
    ratio = streams.get("usage_ratio")
    target = AIMS["usage_p50_ratio"]
    during = streams.get("usage_during") or {}
    out.append(
        {
            "aim": f"(5) usage/ p50, {args.streams} streams / idle <= {target:g}x",
            "value": ratio,
            "target": target,
            "ok": None if ratio is None else ratio <= target and streams.get("open_throughout_window") == args.streams,
            "invalid": (during.get("errors") or 0) > 0.01 * max(1, during.get("attempts") or 1),
            "text": "n/a" if ratio is None else f"{ratio:.2f}x",
        }
    )
    charged = streams.get("charged") or {}
    out.append(
        {
            "aim": f"(5) all {args.streams} streams complete, charged exactly",
            "value": charged.get("records_exact"),
            "target": args.streams,
            "ok": None if not charged else bool(charged.get("ok")) and streams.get("completed") == args.streams,
            "invalid": False,
            "text": "n/a" if not charged else f"{streams.get('completed')}/{charged.get('records_exact')}",
        }
    )
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_gateway(result: dict, args) -> None:
    print(
        f"\n(5) The AI gateway: the fake upstream directly vs through the gateway ({result['gateway_workers']} uvicorn "
        f"workers), same run; medians of {args.repeat} run(s). 'added' = gateway − direct; cpu = cores of the gateway / "
        "the fake / PostgreSQL / wrk / the rest of the machine."
    )
    head = (
        f"  {'non-streamed chat':<18} {'clients':>7} {'direct/s':>9} {'gateway/s':>10} {'ratio':>6} {'p50 direct':>11} "
        f"{'p50 gw':>8} {'added':>7} {'p99 direct':>11} {'p99 gw':>8} {'added':>8} {'gw cpu ms/call':>15}  cores gw/up/db/gen/other"
    )
    print(head)
    for row in result.get("rows", []):
        d, g = row.get("direct"), row.get("gateway")
        if not d or not g:
            continue
        cores = "/".join(f"{g['cpu_cores'].get(k, 0):.2f}" for k in ("gateway", "upstream", "db", "gen", "other"))
        flag = "!" if max(d["error_rate"], g["error_rate"]) > 0.01 else " "
        print(
            f"  {'':<18} {row['clients']:>7} {d['throughput']:>9,.0f} {g['throughput']:>10,.0f} "
            f"{_fmt(row.get('throughput_ratio'), '.2f'):>5}x {_fmt(d['p50_ms']):>11} {_fmt(g['p50_ms']):>8} "
            f"{_fmt(row.get('added_p50_ms'), '+.2f'):>7} {_fmt(d['p99_ms']):>11} {_fmt(g['p99_ms']):>8} "
            f"{_fmt(row.get('added_p99_ms'), '+.2f'):>8} {_fmt(row.get('gateway_cpu_ms_per_call'), '.3f'):>15}{flag} {cores}"
        )
        for path, r in (("direct", d), ("gateway", g)):
            if r["errors"]:
                print(f"    errors {path}: {r['errors']}")
    for cell in result.get("cells", []):
        if cell.get("error_detail"):
            print(f"    {cell['path']} {cell['clients']} clients: {cell['error_detail']}")
    for fb in (result.get("first_byte") or {}).values():
        d, g = fb["direct"], fb["gateway"]
        print(
            f"  streamed, time to first byte ({fb['streams']} concurrent streams x {fb['rounds']} rounds, {d['ok']}/{d['samples']} and "
            f"{g['ok']}/{g['samples']} ok): p50 direct {_fmt(d['p50_ms'])} ms, gateway {_fmt(g['p50_ms'])} ms, added "
            f"{_fmt(fb.get('added_p50_ms'), '+.2f')} ms; p99 {_fmt(d['p99_ms'])} / {_fmt(g['p99_ms'])} ms, added "
            f"{_fmt(fb.get('added_p99_ms'), '+.2f')} ms"
        )
        for path in ("direct", "gateway"):
            if fb[path]["errors"]:
                print(f"    first-byte errors {path}: {fb[path]['errors']}")
    s = result.get("streams")
    if s:
        mib = 1024 * 1024
        print(
            f"  {s['streams']} slow streams ({s['chunks']} tokens, one per {s['chunk_delay_s']:g} s; p50 {s['stream_seconds_p50']} s "
            f"each, first byte p50 {_fmt(s['ttfb_ms_p50'])} ms, all open after {s['ramp_seconds']} s): completed "
            f"{s['completed']}/{s['streams']}, open through the usage/ window {s['open_throughout_window']}/{s['streams']}"
        )
        if s.get("memory_during", {}).get("rss"):
            print(
                f"    gateway workers' RSS {s['memory_idle']['rss'] / mib:.1f} MiB idle -> {s['memory_during']['rss'] / mib:.1f} MiB "
                f"with the streams open: {s['rss_per_stream_kib']} KiB per stream (anonymous: {s['memory_idle']['anon'] / mib:.1f} "
                f"-> {s['memory_during']['anon'] / mib:.1f} MiB, {s['anon_per_stream_kib']} KiB per stream)"
            )
        for label, key in (("idle before", "usage_idle_before"), ("during", "usage_during"), ("idle after", "usage_idle_after")):
            c = s.get(key)
            if c:
                cores = c["cpu_cores"]
                print(
                    f"    POST usage/ {args.usage_clients} client(s), {label:<11}: p50 {_fmt(c['p50_ms'])} ms  p99 {_fmt(c['p99_ms'])} ms  "
                    f"{c['throughput']:,.0f} req/s  errors {c['errors']}  cores web {cores.get('web', 0):.2f} gateway "
                    f"{cores.get('gateway', 0):.2f} upstream {cores.get('upstream', 0):.2f} db {cores.get('db', 0):.2f} "
                    f"streams-client {cores.get('bench', 0):.2f} other {cores.get('other', 0):.2f}"
                )
        print(f"    usage/ p50 during / idle (mean of before and after): {_fmt(s.get('usage_ratio'))}x")
        charged = s.get("charged", {})
        print(
            f"    charged: {charged.get('holds_captured')}/{charged.get('holds')} holds captured, {charged.get('records_exact')} "
            f"records exactly {charged.get('expected', {}).get('input_tokens')} + {charged.get('expected', {}).get('output_tokens')} "
            f"tokens = {charged.get('expected', {}).get('cost')}: {'OK' if charged.get('ok') else 'FAIL'}"
        )
        if s.get("errors"):
            print(f"    stream errors: {s['errors']}")
    holds = result.get("holds")
    if holds:
        print(
            f"  holds of {ORGANIZATION_SLUG} left active: {holds['active_holds']} ({holds['active_holds_this_run']} from this run, "
            f"{holds['active_amount']} in all), wallet held {holds['wallet_held']}: {'OK' if holds['ok'] else 'FAIL'}"
        )
        if holds["active_holds_this_run"]:
            print(
                "    a hold left active is a call whose hold was never captured nor released; it reserves its amount until it "
                f"expires. The first were taken at {', '.join(holds['first_left_at'])} (compare with the cells' ends, "
                "when wrk closes its connections with calls in flight)"
            )
    invariants = result.get("invariants")
    if invariants:
        print(f"  money invariants on {ORGANIZATION_SLUG}: {'OK' if invariants['ok'] else 'FAIL'}")
        for check in invariants["checks"]:
            if check["violations"]:
                print(f"    FAIL {check['name']}: {check['violations']} violations")
    for failed in result.get("failed", []):
        print(f"  FAILED {failed['path']} {failed['clients']} (run {failed['repeat'] + 1}): {failed['error'][:300]}")
    profile = result.get("profile")
    if profile and "error" in profile:
        print(f"\n  gateway profile: failed: {profile['error']}")
    elif profile:
        from bench import gateway_profile

        gateway_profile.print_profile(profile)


def add_arguments(parser) -> None:
    group = parser.add_argument_group("the gateway case (--cases gateway)")
    group.add_argument("--gateway-workers", type=int, default=2, help="the gateway's uvicorn workers (default 2, as deployed)")
    group.add_argument("--streams", type=int, default=200, help="concurrent slow streams (default 200)")
    group.add_argument("--stream-seconds", type=float, help="how long each slow stream lasts (default 25; --quick: 10)")
    group.add_argument("--stream-chunk-delay", type=float, default=0.2, help="seconds between a slow stream's tokens (0.2)")
    group.add_argument(
        "--ttfb-streams", default="1,16", help="concurrent streams per first-byte round, comma-separated (default 1,16)"
    )
    group.add_argument(
        "--ttfb-rounds", type=int, help="first-byte rounds per path of 16 streams (fewer at once: more rounds; 5, --quick: 2)"
    )
    group.add_argument("--usage-clients", type=int, default=1, help="wrk clients of POST usage/ beside the streams (1)")
    group.add_argument(
        "--gateway-profile-requests",
        type=int,
        help="gateway calls profiled in-process per key variant (400; --quick: 100; 0: skip)",
    )


def finish_arguments(args, parser) -> None:
    args.ttfb_streams = [int(n) for n in str(args.ttfb_streams).split(",") if n.strip()]
    if args.stream_seconds is None:
        args.stream_seconds = 10.0 if args.quick else 25.0
    if args.ttfb_rounds is None:
        args.ttfb_rounds = 2 if args.quick else 5
    if args.gateway_profile_requests is None:
        args.gateway_profile_requests = 100 if args.quick else 400
    # The usage/ cell while the streams run (warm-up + duration) must end before they do, with room for the ramp.
    if "gateway" in args.cases and args.stream_seconds < args.warmup + args.duration + 6:
        parser.error(
            f"--stream-seconds ({args.stream_seconds:g}) must exceed --warmup + --duration + 6 s "
            f"({args.warmup + args.duration + 6:g}): the streams must outlast the usage/ cell run beside them"
        )
    if args.streams < 1 or min(args.ttfb_streams, default=0) < 1 or args.stream_chunk_delay <= 0 or args.gateway_workers < 1:
        parser.error("--streams, --ttfb-streams and --gateway-workers must be at least 1, --stream-chunk-delay positive")
