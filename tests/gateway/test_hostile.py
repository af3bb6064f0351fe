"""A hostile review of the gateway (docs/gateway.md): a customer who wants free or cheaper AI service, and an auditor
who wants money never wrong. Each test drives the real gateway over a real socket (the `openai` SDK, or raw
httpx / a raw socket where the SDK hides what matters) against a real upstream: the shared fake, or
`ScriptedUpstream`, which answers with exactly the bytes a test gives (what no well-behaved fake sends: split SSE
lines, usage on every chunk, a stream answered in JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis
import uvicorn
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from gateway.tokens import count_chat_prompt, count_text
from metering.models import Hold, HoldStatus, UsageRecord
from payments.models import Wallet
from tests.gateway.gateway_server import GatewayServer
from tests.gateway.world import MODEL, World, wait_until, world_build
from tests.gateway.world import wait_hold_finished as wait_finished
from tests.payments.helpers import assert_money_invariants, wallet_of

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say something."}]
UPSTREAM_MODEL = f"{MODEL}-upstream"


# --- a scripted upstream ---------------------------------------------------------------------------------------

# A piece of an answer: bytes to write, or a pause in seconds.
Piece = bytes | float


@dataclass
class Answer:
    status: int = 200
    content_type: str = "text/event-stream"
    pieces: Iterable[Piece] = ()
    pause_before_head: float = 0.0


@dataclass
class ScriptedUpstream:
    """A real HTTP server (uvicorn, on 127.0.0.1) that answers every request with `answer(body)`."""

    answer: Callable[[dict[str, Any]], Answer] = lambda body: Answer()
    requests: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: int = 0
    port: int = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw or b"{}")
        self.requests.append(body)
        answer = self.answer(body)
        if answer.pause_before_head:
            await asyncio.sleep(answer.pause_before_head)
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": [(b"content-type", answer.content_type.encode())]}
        )
        for piece in answer.pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
                continue
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.bytes_sent += len(piece)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def _scripted_server() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    upstream.port = listener.getsockname()[1]
    config = uvicorn.Config(upstream, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the scripted upstream did not start"
        time.sleep(0.01)
    yield upstream
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def scripted(_scripted_server: ScriptedUpstream) -> Iterator[ScriptedUpstream]:
    _scripted_server.answer = lambda body: Answer()
    _scripted_server.requests = []
    _scripted_server.bytes_sent = 0
    yield _scripted_server


def scripted_world(upstream: ScriptedUpstream, **options: Any) -> World:
    return world_build(upstreams=[("scripted-" + str(time.monotonic_ns()), upstream.url + "/v1")], **options)


def event(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, usage: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": UPSTREAM_MODEL,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        report["prompt_tokens_details"] = {"cached_tokens": cached}
    return report


def completion(content: str, report: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    if report is not None:
        body["usage"] = report
    return body


# --- helpers ---------------------------------------------------------------------------------------------------


def local_prompt() -> int:
    return count_chat_prompt({"messages": MESSAGES}, model=MODEL)


def records(world: World) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(organization=world.organization).order_by("id"))


def assert_nothing_active(world: World) -> None:
    assert not Hold.objects.filter(organization=world.organization, status=HoldStatus.ACTIVE).exists()
    assert wallet_of(world.organization).held == 0
    assert_money_invariants()


def assert_charged(world: World, *, input_tokens: int, output_tokens: int, outcome: str, estimated: bool) -> UsageRecord:
    (record,) = records(world)
    assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
    assert (record.metadata["outcome"], record.metadata["estimated"]) == (outcome, estimated)
    assert record.cost == world.cost(input_tokens=input_tokens, output_tokens=output_tokens)
    assert wallet_of(world.organization).balance == Decimal("10.00") - record.cost
    assert_nothing_active(world)
    return record


def raw_request(gateway: GatewayServer, head: str, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(head.encode())
    return sock


def read_until_closed(sock: socket.socket, *, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            received = sock.recv(1 << 20)
        except TimeoutError:
            return data
        if not received:
            return data
        data += received


# --- the request body: the gateway reads no more of it than its limit ------------------------------------------


@override_settings(GATEWAY_MAX_BODY_BYTES=2048)
@pytest.mark.parametrize("framing", ["chunked", "declared"])
def test_a_body_beyond_the_limit_is_refused_without_reading_it_all(gateway, fake_upstream, framing):
    """Django's ASGI handler spools the whole body (to disk past 2.5 MB) before any view runs: a client that
    sends an endless body, or declares a huge one, before any key is checked, had the gateway read and store it."""
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\nContent-Type: application/json\r\n"
    if framing == "chunked":
        head += "Transfer-Encoding: chunked\r\n\r\n" + "".join(f"400\r\n{'x' * 1024}\r\n" for _ in range(4))
    else:
        head += f"Content-Length: {10**12}\r\n\r\n" + "x" * 1024
    sock = raw_request(gateway, head)  # and never sends the rest

    answer = read_until_closed(sock, timeout=5)
    sock.close()

    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"x-request-id" in answer.lower()
    assert b"larger than 2048 bytes" in answer
    assert fake_upstream.requests == []


# --- a client that leaves at the wrong moment ------------------------------------------------------------------


def chat_request(gateway: GatewayServer, secret: str, body: dict[str, Any]) -> str:
    payload = json.dumps(body)
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload.encode())}\r\n\r\n{payload}"
    )


def lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return int(cursor.fetchone()[0])


def test_a_client_leaving_while_its_hold_is_written_leaves_no_hold_behind(gateway, fake_upstream):
    """The hold is written on a worker thread; the client leaving cancels the view, not the thread. The hold it
    wrote was then nobody's: it kept the wallet's money reserved (and the key's TPM) until it expired, an hour."""
    world = world_build(upstreams=[fake_upstream], default_max_tokens=64, tpm_limit=600)  # refills 10 tokens a second
    head = chat_request(gateway, world.live_secret, {"model": MODEL, "messages": MESSAGES})

    with transaction.atomic():
        Wallet.objects.select_for_update().get(organization=world.organization)  # the hold waits for this lock
        sock = raw_request(gateway, head)
        wait_until(lambda: lock_waiters() > 0, what="the gateway to wait for the wallet's lock")
        sock.close()
        time.sleep(0.5)  # the gateway sees the client leave and cancels the view while the hold is being written

    hold = wait_finished(world)
    assert hold.status == HoldStatus.RELEASED
    assert fake_upstream.requests == []
    assert records(world) == []
    assert_nothing_active(world)
    follow_up = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {world.live_secret}"},
        json={"model": MODEL, "messages": MESSAGES},
        timeout=10,
    )
    assert follow_up.status_code == 200
    # The first call's reservation came back: only the follow-up's own worst case is taken.
    assert int(follow_up.headers["x-ratelimit-remaining-tokens"]) == 600 - (local_prompt() + 64)


# --- SSE framing: what the SSE format allows an upstream to send -------------------------------------------------

REPORT = usage(41, 23)


def framed(framing: str, payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    if framing == "crlf":
        return f"data: {text}\r\n\r\n".encode()
    if framing == "no-space":
        return f"data:{text}\n\n".encode()
    if framing == "comments":
        return f": keep-alive\n\nevent: message\nid: 7\ndata: {text}\n\n".encode()
    if framing == "split-data-lines" and '"content"' in text:
        # One event over two `data:` lines: its data is the lines joined by "\n" (still one JSON document).
        head, tail = text.split('"content"', 1)
        return f'data: {head}\ndata: "content"{tail}\n\n'.encode()
    return event(payload)


@pytest.mark.parametrize("framing", ["crlf", "no-space", "comments", "split-data-lines", "line-separators"])
def test_every_sse_framing_reaches_the_client_whole_and_is_charged_once(gateway, scripted, framing):
    """httpx's line reader splits lines like str.splitlines: on U+2028, U+2029 and U+0085 too, which JSON carries raw
    in a string (a model can be asked to write them). SSE ends lines only at CR, LF and CRLF. And an event spread
    over several `data:` lines was relayed as one `data:` line followed by bare lines, which clients drop."""
    text = "Hello,\u2028new\u2029para\x85graph" if framing == "line-separators" else "Hello, world"
    world = scripted_world(scripted)
    pieces = [chunk({"role": "assistant", "content": ""}), chunk({"content": text}), chunk({}, finish="stop")]
    scripted.answer = lambda body: Answer(pieces=[framed(framing, piece) for piece in [*pieces, chunk(usage=REPORT), "[DONE]"]])

    with world.client(gateway) as client:
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        )

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (41, 23)
    assert_charged(world, input_tokens=41, output_tokens=23, outcome="completed", estimated=False)


# --- usage reports: counted once, and the whole one ------------------------------------------------------------


def test_usage_reported_on_every_chunk_charges_the_last_report_and_relays_every_chunk(gateway, scripted):
    """vLLM (asked with `stream_options.continuous_usage_stats`, which the client sends and the gateway passes on)
    and some other upstreams report the running usage on every chunk. The gateway kept the first report (0 output
    tokens) and dropped every later chunk that carried one, content included."""
    world = scripted_world(scripted)
    words = ["Once", " upon", " a", " time", " there", " was", " a", " gateway", "."]
    prompt = 41
    pieces = [event(chunk({"role": "assistant", "content": ""}, usage=usage(prompt, 0)))]
    pieces += [event(chunk({"content": word}, usage=usage(prompt, n))) for n, word in enumerate(words, start=1)]
    pieces += [event(chunk({}, finish="stop", usage=usage(prompt, len(words)))), event(chunk(usage=usage(prompt, len(words))))]
    scripted.answer = lambda body: Answer(pieces=[*pieces, b"data: [DONE]\n\n"])

    with world.client(gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
            )
        )

    assert scripted.requests[0]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(words)
    assert_charged(world, input_tokens=prompt, output_tokens=len(words), outcome="completed", estimated=False)


# --- estimates count every kind of text delivered ----------------------------------------------------------------

ARGUMENT_PIECES = ['{"', "city", '":"', "Paris", '","', "unit", '":"', "celsius", '","', "days", '":', "14", "}"] * 3


@pytest.mark.parametrize(
    ("first_delta", "piece_delta"),
    [
        (
            {"role": "assistant", "content": None, "function_call": {"name": "forecast", "arguments": ""}},
            lambda text: {"function_call": {"arguments": text}},
        ),
        ({"role": "assistant", "content": ""}, lambda text: {"reasoning_content": text}),
        ({"role": "assistant", "content": ""}, lambda text: {"reasoning": text}),
    ],
    ids=["legacy-function-call", "reasoning-content", "reasoning"],
)
def test_a_cancelled_stream_is_charged_for_every_kind_of_text_it_delivered(gateway, scripted, first_delta, piece_delta):
    """Under `cancel` a client that leaves is charged the local count of what it was handed. Legacy function calls
    (`functions` / `function_call`, still served by OpenAI) stream their output in `delta.function_call`, and reasoning
    upstreams (DeepSeek, vLLM's reasoning parsers, OpenRouter) in `delta.reasoning_content` / `delta.reasoning`: the
    estimate counted none of it, so a client could read all of it, leave before the usage chunk, and pay no output."""
    world = scripted_world(scripted, on_disconnect="cancel")
    pieces = [event(chunk(first_delta))]
    for text in ARGUMENT_PIECES:
        pieces += [0.02, event(chunk(piece_delta(text)))]
    scripted.answer = lambda body: Answer(
        pieces=[*pieces, event(chunk({}, finish="stop")), event(chunk(usage=usage(41, 99))), b"data: [DONE]\n\n"]
    )
    read = 12

    with world.client(gateway) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        for _ in range(read):
            next(stream)
        stream.close()

    hold = wait_finished(world)
    assert hold.status == HoldStatus.CAPTURED
    (record,) = records(world)
    assert (record.metadata["outcome"], record.metadata["estimated"]) == ("client_disconnected", True)
    delivered = count_text("".join(ARGUMENT_PIECES[: read - 1]), model=MODEL)
    assert delivered <= record.output_tokens <= count_text("".join(ARGUMENT_PIECES), model=MODEL)
    assert record.input_tokens == local_prompt()
    assert_nothing_active(world)


# --- failures in odd places ---------------------------------------------------------------------------------------


def test_a_redis_that_refuses_writes_after_the_capture_does_not_turn_a_charged_answer_into_a_500(gateway, scripted):
    """After the capture come the metrics and the TPM give-back (Redis). An error there (Redis full, or read-only
    during a failover: errors that are not "unreachable") was taken for a failed charge: the client got a 500 for an
    answer it had been charged for."""
    world = scripted_world(scripted, tpm_limit=1000)  # refills slowly: the give-back has a bucket to write
    answer = json.dumps(completion("Hello there.", usage(41, 23))).encode()
    scripted.answer = lambda body: Answer(content_type="application/json", pause_before_head=1.0, pieces=[answer])
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            with world.client(gateway) as client:
                outcome["reply"] = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        except Exception as error:  # noqa: BLE001 - the test reports it
            outcome["error"] = error

    redis_client = redis.Redis.from_url(settings.GATEWAY_REDIS_URL)
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        wait_until(lambda: bool(scripted.requests), what="the upstream to be called")
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.config_set("maxmemory", 1)  # full: every write that may grow memory is refused
        caller.join(15)
    finally:
        redis_client.config_set("maxmemory", 0)
        redis_client.config_set("maxmemory-policy", policy)
        redis_client.close()
    assert not caller.is_alive()

    assert "error" not in outcome, outcome.get("error")
    assert outcome["reply"].choices[0].message.content == "Hello there."
    assert_charged(world, input_tokens=41, output_tokens=23, outcome="completed", estimated=False)


@pytest.mark.parametrize("body", [completion("A whole answer.", usage(41, 23)), {"error": {"message": "no streams here"}}])
def test_a_stream_answered_in_json_is_not_retried_and_charges_nothing(gateway, scripted, settings, body):
    """An upstream that answers a stream with one JSON document (it ignored `stream`, or reports an error with 200)
    did the work of a whole answer, billed to us. It was read as an empty stream and retried: each retry another whole
    answer, none of it charged to anyone."""
    settings.GATEWAY_UPSTREAM_RETRIES = 2
    world = scripted_world(scripted)
    scripted.answer = lambda request: Answer(content_type="application/json", pieces=[json.dumps(body).encode()])

    with pytest.raises(openai.InternalServerError) as raised, world.client(gateway) as client:
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

    assert raised.value.status_code == 502
    assert len(scripted.requests) == 1
    assert records(world) == []
    assert Hold.objects.get(organization=world.organization).status == HoldStatus.RELEASED
    assert_nothing_active(world)


# --- a slow reader -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_disconnect", ["drain", "cancel"])
def test_a_client_that_stops_reading_does_not_make_the_gateway_hold_the_whole_answer(gateway, scripted, on_disconnect):
    """The relay read the upstream as fast as it wrote and queued every event for the client without bound: a client
    that opens streams and reads nothing (its TCP window closes) made the gateway hold each whole answer in memory.
    Now the relay reads no faster than the client, and a client that takes nothing for the upstream's idle timeout
    is treated as gone: under `drain` the upstream is read to its end without queuing, and its report is charged;
    under `cancel` the upstream is closed and what the client was handed is charged."""
    world = scripted_world(scripted, on_disconnect=on_disconnect, upstream_options={"idle_timeout_seconds": 1.0})
    big = event(chunk({"content": "y" * 8000}))
    events = 2000  # 16 MB
    scripted.answer = lambda body: Answer(
        pieces=[
            event(chunk({"role": "assistant", "content": ""})),
            *[big] * events,
            event(chunk({}, finish="stop")),
            event(chunk(usage=REPORT)),
            b"data: [DONE]\n\n",
        ]
    )
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    sock = raw_request(gateway, chat_request(gateway, world.live_secret, body), receive_buffer=65536)

    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    time.sleep(2.5)  # reads nothing: longer than the idle timeout
    received = head + read_until_closed(sock, timeout=20)
    sock.close()

    assert len(received) < events * len(big) / 2  # not queued for a client that did not read
    assert b'"code": "client_stalled"' in received
    assert b"[DONE]" not in received
    wait_finished(world)
    if on_disconnect == "drain":
        assert scripted.bytes_sent >= events * len(big)  # the upstream was read to its end
        assert_charged(world, input_tokens=41, output_tokens=23, outcome="client_disconnected", estimated=False)
    else:
        (record,) = records(world)
        handed = received.count(b'"content": "' + b"y" * 8000)
        per_event = count_text("y" * 8000, model=MODEL)
        assert per_event * (handed - 1) <= record.output_tokens <= per_event * handed  # what it was handed
        assert_charged(
            world, input_tokens=local_prompt(), output_tokens=record.output_tokens, outcome="client_disconnected", estimated=True
        )


# --- the gateway process shutting down mid-stream -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_stream_cut_by_a_shutdown_is_charged_before_the_worker_is_killed(fake_upstream, tmp_path):
    """A deploy sends SIGTERM: gunicorn waits `graceful_timeout`, then SIGKILLs the worker. uvicorn, as uvicorn_worker
    configures it, waited for every stream without limit (so a stream longer than the grace period died with the
    worker), and once it gave up it raised SIGTERM again under SIG_DFL, ending the process before the cut calls' tasks
    could charge: the hold was never captured (it expires an hour later), what was relayed never charged."""
    world = world_build(upstreams=[fake_upstream], on_disconnect="drain", default_max_tokens=1000)
    fake_upstream.push(chunks=600, chunk_delay=0.05)  # 30 s: longer than the grace period
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": "1",
        "GATEWAY_GRACEFUL_SECONDS": "4",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "gateway.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn_gateway.conf.py"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _answers(port), what="the gateway process to listen", timeout=60)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=world.live_secret, max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        read = [next(stream) for _ in range(5)]

        def read_on() -> None:  # the client reads on until the shutdown cuts it
            with contextlib.suppress(openai.APIError, httpx.HTTPError):
                list(stream)

        reader = threading.Thread(target=read_on, daemon=True)
        reader.start()

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()

    hold = Hold.objects.get(organization=world.organization)
    assert hold.status == HoldStatus.CAPTURED, (tmp_path / "gateway.log").read_text()[-3000:]
    (record,) = records(world)
    delivered = "".join(c.choices[0].delta.content or "" for c in read if c.choices)
    assert record.output_tokens >= count_text(delivered, model=MODEL)
    assert record.metadata["outcome"] == "client_disconnected"
    assert_nothing_active(world)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


# --- the hold is a true worst case ------------------------------------------------------------------------------


def test_completions_are_bounded_by_max_tokens_whatever_else_the_client_names(gateway, scripted):
    """/v1/completions has one maximum, `max_tokens`. The gateway also read `max_completion_tokens` (a chat field) as
    the call's maximum there: a client sending `max_completion_tokens: 1` got a hold for one token and an upstream
    request with no `max_tokens` at all, so the upstream's own default (unbounded on some servers) decided the
    length, and the capture could pass the hold by any amount."""
    world = scripted_world(scripted, default_max_tokens=50)
    text = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": UPSTREAM_MODEL}
    answer = {**text, "choices": [{"index": 0, "text": " once", "finish_reason": "length"}], "usage": usage(3, 1)}
    scripted.answer = lambda body: Answer(content_type="application/json", pieces=[json.dumps(answer).encode()])

    with world.client(gateway) as client:
        client.completions.create(model=MODEL, prompt="Once upon", extra_body={"max_completion_tokens": 1})

    (sent,) = scripted.requests
    assert sent["max_tokens"] == 50  # the route's default: what the hold covers
    hold = Hold.objects.get(organization=world.organization)
    prompt = count_text("Once upon", model=MODEL)
    assert hold.amount == world.cost(input_tokens=prompt, output_tokens=50)
    assert_charged(world, input_tokens=3, output_tokens=1, outcome="completed", estimated=False)


# --- bad input: a clear error, nothing changed ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "message", "usage"])
def test_json_nested_too_deep_is_a_400_or_an_upstream_error_not_a_crash(gateway, scripted, where):
    """Python's JSON decoder raises RecursionError (not ValueError) past ~1,000 levels: a client's body nested that
    deep was a 500 with a traceback in the log; from an upstream, the call's task died with it."""
    world = scripted_world(scripted)
    deep = "[" * 100_000 + "]" * 100_000
    reply = json.dumps(completion("Hi.", usage(3, 2)))
    if where == "usage":
        reply = reply.replace('"prompt_tokens": 3', f'"prompt_tokens": 3, "deep": {deep}')
    scripted.answer = lambda body: Answer(content_type="application/json", pieces=[reply.encode()])
    content = {
        "body": f'{{"model": "{MODEL}", "messages": {deep}}}',
        "message": f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": {deep}}}]}}',
        "usage": json.dumps({"model": MODEL, "messages": MESSAGES}),
    }[where]

    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {world.live_secret}", "Content-Type": "application/json"},
        content=content,
        timeout=20,
    )

    if where == "usage":
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_error"
        assert Hold.objects.get(organization=world.organization).status == HoldStatus.RELEASED
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert scripted.requests == []
    assert records(world) == []
    assert_nothing_active(world)


@pytest.mark.parametrize(
    "reported",
    [
        '{"prompt_tokens": -5, "completion_tokens": 2}',
        '{"prompt_tokens": true, "completion_tokens": 2}',
        '{"prompt_tokens": 3, "completion_tokens": false}',
        '{"prompt_tokens": 3.0, "completion_tokens": 2}',
        '{"prompt_tokens": 10000000000000, "completion_tokens": 2}',
        '{"prompt_tokens": "3", "completion_tokens": 2}',
        '{"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 900}}',
        '{"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": -1}}',
        '{"prompt_tokens": 3, "completion_tokens": 1' + "0" * 5000 + "}",
        '{"prompt_tokens": 3, "total_tokens": 3}',
    ],
    ids=[
        "negative",
        "bool",
        "false",
        "float",
        "huge",
        "string",
        "cached-over-prompt",
        "cached-negative",
        "5000-digits",
        "no-completion-tokens",
    ],
)
def test_an_odd_usage_report_is_never_charged_as_is(gateway, scripted, reported):
    """What an upstream reports is charged exactly, when it is a sound report: whole numbers from 0 to 10^12 (JSON
    `true` is not 1), cached tokens at most the prompt, and an answer's output named (else it would be charged as
    none). Anything else is charged as the local estimate, and a number
    Python refuses to read (over 4,300 digits) makes the answer unreadable: a 502, nothing charged."""
    world = scripted_world(scripted, cached_input_price="1.00")
    reply = json.dumps(completion("Hi there.", None))[:-1] + f', "usage": {reported}}}'
    scripted.answer = lambda body: Answer(content_type="application/json", pieces=[reply.encode()])

    with world.client(gateway) as client:
        if "0" * 5000 in reported:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert records(world) == []
            assert_nothing_active(world)
            return
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    (record,) = records(world)
    if "cached_tokens" in reported:
        cached = 3 if "900" in reported else 0
        assert (record.input_tokens, record.output_tokens, record.metadata["estimated"]) == (3, 2, False)
        assert record.cost == world.cost(input_tokens=3, output_tokens=2, cached=cached)
        assert_nothing_active(world)
    else:
        estimate = {"input_tokens": local_prompt(), "output_tokens": count_text("Hi there.", model=MODEL)}
        assert_charged(world, **estimate, outcome="no_usage_reported", estimated=True)


@pytest.mark.parametrize("model", ["gpt-4o-mini\r\nX-Injected: 1", "gpt-4o-mini\nX-Injected: 1", "x" * 100_000, MODEL.upper()])
def test_a_hostile_model_name_is_a_404_in_json_and_never_a_header(gateway, scripted, model):
    world = scripted_world(scripted)

    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {world.live_secret}"},
        json={"model": model, "messages": MESSAGES},
        timeout=10,
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "x-injected" not in response.headers
    assert len(response.content) < 1000  # the name is cut in the message
    assert scripted.requests == []
    assert not Hold.objects.filter(organization=world.organization).exists()
