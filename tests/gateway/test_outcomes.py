"""What each gateway call costs (docs/gateway.md, "Money" and "Outcomes"), driven through the real
`openai` SDK (sync and async) against the real gateway and a real fake upstream. Every charge is compared with
an exact oracle: the upstream's report (World.cost), or for an estimate the local count of what the fake says
it sent."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.conf import settings
from django.test import override_settings
from prometheus_client import REGISTRY

from billing_site.money import MONEY_QUANTUM
from gateway import tokens
from metering.models import CalcMethod, Hold, HoldStatus, UsageRecord
from payments.models import Wallet
from tests.concurrency import run_concurrently
from tests.factories import wallet_fund
from tests.gateway.fake_upstream import FakeUpstream, closed_port, embedding_vector, run_async
from tests.gateway.gateway_server import GatewayServer
from tests.gateway.world import MODEL, World, wait_hold_finished, world_build
from tests.payments.helpers import assert_money_invariants, wallet_of

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about metered billing, please."}]
UPSTREAM_MODEL = f"{MODEL}-upstream"
DEFAULT_MAX_TOKENS = 64
# Usage the fake reports instead of its own count, so that a charge equal to it cannot come from a local count.
REPORTED_PROMPT = 41
REPORTED_COMPLETION = 23


def local_prompt_tokens() -> int:
    return tokens.count_chat_prompt({"messages": MESSAGES}, model=MODEL)


def local_output_tokens(text: str) -> int:
    return tokens.count_text(text, model=MODEL)


def the_record(world: World) -> UsageRecord:
    return UsageRecord.objects.get(organization=world.organization)


def the_hold(world: World) -> Hold:
    return Hold.objects.get(organization=world.organization)


def estimated_total(outcome: str) -> float:
    value = REGISTRY.get_sample_value("tollgate_gateway_estimated_usage_total", {"model": MODEL, "outcome": outcome})
    return value or 0.0


def assert_nothing_charged(world: World) -> None:
    assert not UsageRecord.objects.filter(organization=world.organization).exists()
    assert the_hold(world).status == HoldStatus.RELEASED
    wallet = wallet_of(world.organization)
    assert (wallet.balance, wallet.held) == (Decimal("10.00"), Decimal(0))
    assert_money_invariants()


def assert_charged(world: World, *, input_tokens: int, output_tokens: int, cached: int = 0) -> UsageRecord:
    record = the_record(world)
    assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
    assert (record.api_key_id, record.test, record.hold_id) == (world.live_key_id, False, the_hold(world).pk)
    assert record.cost == world.cost(input_tokens=input_tokens, output_tokens=output_tokens, cached=cached)
    assert the_hold(world).status == HoldStatus.CAPTURED
    wallet = wallet_of(world.organization)
    assert (wallet.balance, wallet.held) == (Decimal("10.00") - record.cost, Decimal(0))
    assert_money_invariants()
    return record


def chat_stream_text(chunks: list[Any]) -> str:
    return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)


def stream_chat(world: World, gateway: GatewayServer, *, use_async: bool, **params: Any) -> list[Any]:
    """A whole streamed chat through the SDK: its chunks."""
    params = {"model": MODEL, "messages": MESSAGES, "stream": True, **params}
    if not use_async:
        with world.client(gateway) as client:
            return list(client.chat.completions.create(**params))

    async def collect() -> list[Any]:
        async with world.async_client(gateway) as client:
            return [chunk async for chunk in await client.chat.completions.create(**params)]

    return run_async(collect())


def plain_chat(world: World, gateway: GatewayServer, *, use_async: bool, **params: Any) -> Any:
    params = {"model": MODEL, "messages": MESSAGES, **params}
    if not use_async:
        with world.client(gateway) as client:
            return client.chat.completions.create(**params)

    async def call() -> Any:
        async with world.async_client(gateway) as client:
            return await client.chat.completions.create(**params)

    return run_async(call())


def read_stream_until_error(world: World, gateway: GatewayServer, *, use_async: bool) -> tuple[str, openai.APIError]:
    """Read a streamed chat until the SDK raises: the text it got before, and the error."""
    received: list[Any] = []
    params = {"model": MODEL, "messages": MESSAGES, "stream": True}
    if not use_async:
        with pytest.raises(openai.APIError) as raised:
            for chunk in world.client(gateway).chat.completions.create(**params):
                received.append(chunk)
        return chat_stream_text(received), raised.value

    async def read() -> openai.APIError:
        async with world.async_client(gateway) as client:
            try:
                async for chunk in await client.chat.completions.create(**params):
                    received.append(chunk)
            except openai.APIError as error:
                return error
        raise AssertionError("the stream ended without an error")

    error = run_async(read())
    return chat_stream_text(received), error


# --- completed ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("client_max", [None, 20], ids=["route-default-max", "client-max"])
def test_completed_plain_chat_charges_the_upstream_report(gateway, fake_upstream, use_async, client_max):
    world = world_build(upstreams=[fake_upstream], default_max_tokens=DEFAULT_MAX_TOKENS)
    fake_upstream.push(prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)
    extra = {} if client_max is None else {"max_tokens": client_max}

    reply = plain_chat(world, gateway, use_async=use_async, **extra)

    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (REPORTED_PROMPT, REPORTED_COMPLETION)
    (received,) = fake_upstream.requests
    assert received.body["model"] == UPSTREAM_MODEL
    assert received.body["messages"] == MESSAGES
    assert "stream_options" not in received.body
    if client_max is None:
        assert received.body["max_completion_tokens"] == DEFAULT_MAX_TOKENS
        assert "max_tokens" not in received.body
    else:
        assert received.body["max_tokens"] == client_max
        assert "max_completion_tokens" not in received.body
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata == {
        "request_id": record.metadata["request_id"],
        "model": MODEL,
        "endpoint": "chat/completions",
        "upstream": world.upstream_names[0],
        "stream": False,
        "outcome": "completed",
        "estimated": False,
    }
    assert len(record.metadata["request_id"]) == 32
    worst = client_max or DEFAULT_MAX_TOKENS
    assert the_hold(world).amount == world.cost(input_tokens=local_prompt_tokens(), output_tokens=worst)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-not-asked", "usage-asked"])
@pytest.mark.parametrize("client_max", [None, 12], ids=["route-default-max", "client-max"])
def test_completed_stream_charges_the_upstream_report(gateway, fake_upstream, use_async, include_usage, client_max):
    world = world_build(upstreams=[fake_upstream], default_max_tokens=DEFAULT_MAX_TOKENS)
    fake_upstream.push(prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    if client_max is not None:
        extra["max_completion_tokens"] = client_max

    chunks = stream_chat(world, gateway, use_async=use_async, **extra)

    (received,) = fake_upstream.requests
    assert received.body["model"] == UPSTREAM_MODEL
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}
    assert received.body["max_completion_tokens"] == (client_max or DEFAULT_MAX_TOKENS)
    assert "max_tokens" not in received.body
    assert chat_stream_text(chunks) == received.content_sent
    assert received.content_sent and not received.client_disconnected
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    if include_usage:
        (usage_chunk,) = usage_chunks
        assert usage_chunk.choices == []
        assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (REPORTED_PROMPT, REPORTED_COMPLETION)
    else:
        assert usage_chunks == []
    # The stream's end follows its charge: no waiting needed.
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata["outcome"] == "completed"
    assert record.metadata["stream"] is True
    assert record.metadata["estimated"] is False


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("cached_input_price", ["1.25", None], ids=["cached-price", "no-cached-price"])
def test_cached_tokens_are_charged_at_the_cached_input_price(gateway, fake_upstream, stream, cached_input_price):
    world = world_build(upstreams=[fake_upstream], cached_input_price=cached_input_price)
    fake_upstream.push(prompt_tokens=1000, completion_tokens=30, cached_tokens=600)

    if stream:
        stream_chat(world, gateway, use_async=False)
    else:
        plain_chat(world, gateway, use_async=False)

    record = assert_charged(world, input_tokens=1000, output_tokens=30, cached=600)
    assert record.cached_input_tokens == 600
    expected_rate = Decimal(cached_input_price or "2.50")
    assert record.cached_input_price == expected_rate
    # 400 uncached and 600 cached input tokens, 30 output tokens, per million.
    assert record.cost == (400 * Decimal("2.50") + 600 * expected_rate + 30 * Decimal("10.00")) / 1_000_000


@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-not-asked", "usage-asked"])
def test_a_repeated_usage_chunk_is_counted_once(gateway, fake_upstream, include_usage):
    world = world_build(upstreams=[fake_upstream])
    fake_upstream.push(repeat_usage=True, prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}

    chunks = stream_chat(world, gateway, use_async=True, **extra)

    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == (1 if include_usage else 0)
    (received,) = fake_upstream.requests
    # The fake did send it twice: role, content, finish, usage, usage.
    assert received.chunks_sent == len(chunks) + (1 if include_usage else 2)
    assert UsageRecord.objects.filter(organization=world.organization).count() == 1
    assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)


# --- no usage reported ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_no_usage_reported_charges_the_local_count(gateway, fake_upstream, stream):
    world = world_build(upstreams=[fake_upstream])
    fake_upstream.push(omit_usage=True, chunks=17)
    before = estimated_total("no_usage_reported")

    if stream:
        chunks = stream_chat(world, gateway, use_async=False, stream_options={"include_usage": True})
        assert all(chunk.usage is None for chunk in chunks)
        text = chat_stream_text(chunks)
        assert text == fake_upstream.requests[0].content_sent
    else:
        reply = plain_chat(world, gateway, use_async=False)
        assert reply.usage is None
        text = reply.choices[0].message.content

    assert local_output_tokens(text) == 17
    record = assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=17)
    assert record.metadata["outcome"] == "no_usage_reported"
    assert record.metadata["estimated"] is True
    assert estimated_total("no_usage_reported") == before + 1


# --- upstream failed before the first byte ----------------------------------------------------------------------

FAILURES_BEFORE_FIRST_BYTE = {
    "status-500": {"status": 500},
    "status-429": {"status": 429},
    "connection-reset": {"close_before_first_byte": True},
    "reset-after-headers": {"fail_mid_stream": 0},  # a plain answer: half its body
    "connection-refused": None,  # a route to a port nothing listens on
}


def failing_upstream(fake: FakeUpstream, failure: str) -> FakeUpstream | tuple[str, str]:
    behaviour = FAILURES_BEFORE_FIRST_BYTE[failure]
    if behaviour is None:
        return ("refusing", f"http://127.0.0.1:{closed_port()}/v1")
    fake.set_default(**behaviour)
    return fake


def attempts_per_upstream() -> int:
    return 1 + settings.GATEWAY_UPSTREAM_RETRIES


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failure", list(FAILURES_BEFORE_FIRST_BYTE))
def test_upstream_failed_before_the_first_byte_charges_nothing(gateway, fake_upstream, failure, stream):
    world = world_build(upstreams=[failing_upstream(fake_upstream, failure)])

    with pytest.raises(openai.InternalServerError) as raised:
        if stream:
            stream_chat(world, gateway, use_async=False)
        else:
            plain_chat(world, gateway, use_async=False)

    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_error"
    expected = 0 if failure == "connection-refused" else attempts_per_upstream()
    assert len(fake_upstream.wait_for_requests(expected)) == expected
    assert_nothing_charged(world)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failure", list(FAILURES_BEFORE_FIRST_BYTE))
def test_upstream_failed_before_the_first_byte_falls_back_and_charges_once(
    gateway, fake_upstream, fake_upstream_b, failure, stream, use_async
):
    world = world_build(upstreams=[failing_upstream(fake_upstream, failure), fake_upstream_b])
    fake_upstream_b.push(prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)

    if stream:
        chunks = stream_chat(world, gateway, use_async=use_async)
        assert chat_stream_text(chunks) == fake_upstream_b.requests[0].content_sent
    else:
        reply = plain_chat(world, gateway, use_async=use_async)
        assert reply.usage.completion_tokens == REPORTED_COMPLETION

    expected = 0 if failure == "connection-refused" else attempts_per_upstream()
    assert len(fake_upstream.requests) == expected
    (served,) = fake_upstream_b.requests
    assert served.body["model"] == UPSTREAM_MODEL
    assert UsageRecord.objects.filter(organization=world.organization).count() == 1
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata["upstream"] == world.upstream_names[1]
    assert record.metadata["outcome"] == "completed"


# --- upstream failed mid-stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("on_disconnect", ["drain", "cancel"])
@pytest.mark.parametrize("failure", ["fail_mid_stream", "error_event_mid_stream"])
def test_upstream_failed_mid_stream_charges_what_was_relayed(gateway, fake_upstream, failure, on_disconnect, use_async):
    world = world_build(upstreams=[fake_upstream], on_disconnect=on_disconnect)
    # A short pause between chunks lets the gateway read each one before the connection is reset.
    fake_upstream.push(chunks=30, chunk_delay=0.01, **{failure: 6})
    before = estimated_total("upstream_failed")

    text, error = read_stream_until_error(world, gateway, use_async=use_async)

    assert "mid-stream" in error.message
    (received,) = fake_upstream.requests
    received.wait_finished()
    assert received.chunks_sent == 6  # the role chunk and five pieces of the reply
    assert text == received.content_sent
    hold = wait_hold_finished(world)
    assert hold.status == HoldStatus.CAPTURED
    record = assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=local_output_tokens(received.content_sent))
    # The error event's text is not output.
    assert record.output_tokens < local_output_tokens(received.content_sent + error.message)
    assert record.metadata["outcome"] == "upstream_failed"
    assert record.metadata["estimated"] is True
    assert estimated_total("upstream_failed") == before + 1


# --- timeouts ---------------------------------------------------------------------------------------------------

SHORT_TIMEOUTS = {"timeout_seconds": 0.5, "idle_timeout_seconds": 0.5}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@override_settings(GATEWAY_UPSTREAM_RETRIES=0)
def test_a_stall_before_the_first_byte_is_a_timeout_and_charges_nothing(gateway, fake_upstream, stream):
    world = world_build(upstreams=[fake_upstream], upstream_options=SHORT_TIMEOUTS)
    fake_upstream.push(stall_before_first_byte=5.0)

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        if stream:
            stream_chat(world, gateway, use_async=False)
        else:
            plain_chat(world, gateway, use_async=False)

    assert time.monotonic() - started < 3
    assert raised.value.status_code == 504
    assert raised.value.code == "upstream_timeout"
    (received,) = fake_upstream.requests
    assert received.wait_finished().client_disconnected  # the gateway hung up on it
    assert_nothing_charged(world)


def test_a_stall_mid_stream_beyond_the_idle_timeout_is_upstream_failed(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], upstream_options=SHORT_TIMEOUTS)
    fake_upstream.push(chunks=30, stall_mid_stream=(8, 5.0))

    text, error = read_stream_until_error(world, gateway, use_async=False)

    assert "mid-stream" in error.message
    (received,) = fake_upstream.requests
    assert received.wait_finished().client_disconnected
    assert received.chunks_sent == 8
    assert text == received.content_sent
    wait_hold_finished(world)
    record = assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=local_output_tokens(received.content_sent))
    assert record.metadata["outcome"] == "upstream_failed"
    assert record.metadata["estimated"] is True


# --- the client disconnects mid-stream --------------------------------------------------------------------------


class RawStream:
    """A streamed chat over a plain socket, so the test decides when the TCP connection closes."""

    def __init__(self, gateway: GatewayServer, *, secret: str, body: dict[str, Any]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        payload = json.dumps(body).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{gateway.port}\r\n"
            f"Authorization: Bearer {secret}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: text/event-stream\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + payload)
        self._buffer = b""
        self._body = b""
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head_bytes, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        self.status = int(head_bytes.split(b" ", 2)[1])
        assert b"transfer-encoding: chunked" in head_bytes.lower()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the gateway closed the connection")
        self._buffer += data

    def _read_chunk(self) -> None:
        while b"\r\n" not in self._buffer:
            self._fill()
        size_line, rest = self._buffer.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            self._fill()
            size_line, rest = self._buffer.split(b"\r\n", 1)
        self._body += rest[:size]
        self._buffer = rest[size + 2 :]

    def read_events(self, count: int) -> list[dict[str, Any]]:
        """The next `count` events' JSON payloads."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            while b"\n\n" not in self._body:
                self._read_chunk()
            event, self._body = self._body.split(b"\n\n", 1)
            events.append(json.loads(event.removeprefix(b"data: ")))
        return events

    def close(self) -> None:
        self.sock.close()


def content_of(events: list[dict[str, Any]]) -> str:
    return "".join(choice["delta"].get("content") or "" for event in events for choice in event["choices"])


def leave_mid_stream(world: World, gateway: GatewayServer, *, closer: str, events: int) -> str:
    """Start a streamed chat, read `events` events, close the connection: the text the client got."""
    if closer == "socket":
        raw = RawStream(gateway, secret=world.live_secret, body={"model": MODEL, "messages": MESSAGES, "stream": True})
        assert raw.status == 200
        text = content_of(raw.read_events(events))
        raw.close()
        return text
    stream = world.client(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [next(stream) for _ in range(events)]
    stream.close()  # closes the unfinished response, and with it its connection
    return chat_stream_text(chunks)


@pytest.mark.parametrize("closer", ["socket", "sdk"])
def test_client_disconnect_under_drain_charges_the_upstream_report(gateway, fake_upstream, closer):
    world = world_build(upstreams=[fake_upstream], on_disconnect="drain")
    fake_upstream.push(chunks=40, chunk_delay=0.01, prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)

    text = leave_mid_stream(world, gateway, closer=closer, events=4)

    (received,) = fake_upstream.requests
    received.wait_finished()
    assert not received.client_disconnected  # the gateway read the stream to its end
    assert received.chunks_sent == 1 + 40 + 1 + 1  # role, pieces, finish, usage
    assert text and received.content_sent.startswith(text) and received.content_sent != text
    wait_hold_finished(world)
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata["outcome"] == "client_disconnected"
    assert record.metadata["estimated"] is False


@pytest.mark.parametrize("closer", ["socket", "sdk"])
def test_client_disconnect_under_cancel_charges_what_was_delivered(gateway, fake_upstream, closer):
    world = world_build(upstreams=[fake_upstream], on_disconnect="cancel")
    fake_upstream.push(chunks=60, chunk_delay=0.02)
    before = estimated_total("client_disconnected")

    text = leave_mid_stream(world, gateway, closer=closer, events=4)

    (received,) = fake_upstream.requests
    received.wait_finished()
    assert received.client_disconnected  # the gateway closed the upstream at once
    assert received.chunks_sent < 20
    hold = wait_hold_finished(world)
    assert hold.status == HoldStatus.CAPTURED
    record = the_record(world)
    # Delivered: at least what the client read, at most what the upstream sent.
    assert local_output_tokens(text) <= record.output_tokens <= local_output_tokens(received.content_sent)
    assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=record.output_tokens)
    assert record.metadata["outcome"] == "client_disconnected"
    assert record.metadata["estimated"] is True
    assert estimated_total("client_disconnected") == before + 1


@override_settings(GATEWAY_DRAIN_SECONDS=0.3)
def test_drain_of_a_stalled_upstream_is_bounded_and_charges_what_was_received(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], on_disconnect="drain", upstream_options={"idle_timeout_seconds": 8.0})
    fake_upstream.push(chunks=40, stall_mid_stream=(10, 8.0))

    text = leave_mid_stream(world, gateway, closer="socket", events=4)
    left = time.monotonic()

    hold = wait_hold_finished(world)
    assert time.monotonic() - left < 2.0  # the drain's bound, not the idle timeout
    assert hold.status == HoldStatus.CAPTURED
    (received,) = fake_upstream.requests
    assert received.wait_finished().client_disconnected  # closed by the gateway after draining
    assert received.chunks_sent == 10
    assert received.content_sent.startswith(text)
    record = assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=local_output_tokens(received.content_sent))
    assert record.metadata["outcome"] == "client_disconnected"
    assert record.metadata["estimated"] is True
    # The drain's bound ended it, not a failure of the upstream (whose name is new to this test).
    assert (
        REGISTRY.get_sample_value(
            "tollgate_gateway_upstream_errors_total", {"upstream": world.upstream_names[0], "kind": "mid_stream"}
        )
        is None
    )


# --- concurrency: the wallet affords exactly K worst cases ------------------------------------------------------


def test_concurrent_streams_on_a_wallet_that_affords_k_holds(gateway, fake_upstream):
    calls, affordable = 32, 5
    world = world_build(upstreams=[fake_upstream], balance="0")
    worst_case = world.cost(input_tokens=local_prompt_tokens(), output_tokens=DEFAULT_MAX_TOKENS)
    # K worst cases fit, K + 1 do not (by one quantum).
    balance = (affordable + 1) * worst_case - MONEY_QUANTUM
    wallet_fund(world.organization, balance)
    # Each call reports exactly its worst case, so a capture frees nothing a waiting call could use.
    fake_upstream.set_default(
        prompt_tokens=local_prompt_tokens(), completion_tokens=DEFAULT_MAX_TOKENS, chunks=10, chunk_delay=0.02
    )
    lowest = [balance]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            wallet = Wallet.objects.get(organization=world.organization)
            lowest.append(wallet.balance - wallet.held)
            time.sleep(0.005)

    def call(_: int) -> str:
        try:
            chunks = list(world.client(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        except openai.APIStatusError as error:
            assert (error.status_code, error.code) == (402, "insufficient_balance")
            return "refused"
        assert chat_stream_text(chunks)
        return "served"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = run_concurrently(calls, call, reraise=True)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert not watcher.is_alive()

    assert results.count("served") == affordable
    assert results.count("refused") == calls - affordable
    assert len(fake_upstream.requests) == affordable
    assert min(lowest) >= 0
    records = UsageRecord.objects.filter(organization=world.organization)
    assert records.count() == affordable
    assert all(record.cost == worst_case for record in records)
    wallet = wallet_of(world.organization)
    assert (wallet.balance, wallet.held) == (balance - affordable * worst_case, Decimal(0))
    assert Hold.objects.filter(organization=world.organization, status=HoldStatus.CAPTURED).count() == affordable
    assert_money_invariants()


# --- embeddings and images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_embeddings_pass_base64_through_and_charge_the_prompt_tokens(gateway, fake_upstream, use_async):
    model = "text-embedding-3-small"
    world = world_build(upstreams=[fake_upstream], model=model)
    fake_upstream.push(prompt_tokens=REPORTED_PROMPT)
    inputs = ["the first text", "and a second one"]

    if use_async:

        async def embed() -> Any:
            async with world.async_client(gateway) as client:
                return await client.embeddings.create(model=model, input=inputs)

        result = run_async(embed())
    else:
        result = world.client(gateway).embeddings.create(model=model, input=inputs)

    (received,) = fake_upstream.requests
    assert received.body["encoding_format"] == "base64"  # the SDK's default, passed through
    assert received.body["model"] == f"{model}-upstream"
    assert [item.embedding for item in result.data] == [embedding_vector(text, dimensions=8) for text in inputs]
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=0)
    assert record.metadata["endpoint"] == "embeddings"
    assert record.metadata["outcome"] == "completed"
    local = tokens.count_embedding_input(inputs, model=model)
    assert the_hold(world).amount == world.cost(input_tokens=local, output_tokens=0)


def test_image_resolution_charges_tiles_of_each_image_returned(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], model="dall-e-3", calc_method=CalcMethod.IMAGE_RESOLUTION, unit_price="0.04")

    result = world.client(gateway).images.generate(model="dall-e-3", prompt="a lighthouse", n=2, size="1024x1792")

    assert len(result.data) == 2
    (received,) = fake_upstream.requests
    assert (received.body["model"], received.body["n"], received.body["size"]) == ("dall-e-3-upstream", 2, "1024x1792")
    record = the_record(world)
    tiles = 2 * 4  # ceil(1024 / 512) × ceil(1792 / 512)
    assert record.quantity == 2 * tiles
    assert record.cost == 2 * tiles * Decimal("0.04")
    assert record.metadata["endpoint"] == "images/generations"
    assert record.metadata["outcome"] == "completed"
    assert the_hold(world).status == HoldStatus.CAPTURED
    assert_money_invariants()


def test_request_priced_images_charge_one_request(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], model="dall-e-3", calc_method=CalcMethod.REQUEST, unit_price="0.04")

    async def generate() -> Any:
        async with world.async_client(gateway) as client:
            return await client.images.generate(model="dall-e-3", prompt="a lighthouse", n=3, response_format="b64_json")

    result = run_async(generate())

    assert len(result.data) == 3
    assert all(base64.b64decode(image.b64_json).startswith(b"\x89PNG") for image in result.data)
    assert len(fake_upstream.requests) == 1
    record = the_record(world)
    assert (record.quantity, record.cost) == (1, Decimal("0.04"))
    assert the_hold(world).status == HoldStatus.CAPTURED
    assert_money_invariants()


def test_a_pause_between_chunks_within_the_idle_timeout_does_not_end_the_stream(gateway, fake_upstream):
    # The first-byte timeout is the shorter one here: it must not govern the wait between two chunks.
    world = world_build(upstreams=[fake_upstream], upstream_options={"timeout_seconds": 0.3, "idle_timeout_seconds": 3.0})
    fake_upstream.push(chunks=8, stall_mid_stream=(4, 0.8), prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)

    chunks = stream_chat(world, gateway, use_async=False)

    (received,) = fake_upstream.requests
    assert not received.wait_finished().client_disconnected
    assert chat_stream_text(chunks) == received.content_sent
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata["outcome"] == "completed"


def test_an_error_event_before_any_content_falls_back(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    fake_upstream.set_default(error_event_mid_stream=0)
    fake_upstream_b.push(prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)

    chunks = stream_chat(world, gateway, use_async=False)

    assert len(fake_upstream.requests) == attempts_per_upstream()
    assert chat_stream_text(chunks) == fake_upstream_b.requests[0].content_sent
    record = assert_charged(world, input_tokens=REPORTED_PROMPT, output_tokens=REPORTED_COMPLETION)
    assert record.metadata["upstream"] == world.upstream_names[1]


def test_an_upstream_refusing_the_request_is_passed_on_and_charges_nothing(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    fake_upstream.push(status=400)

    with pytest.raises(openai.BadRequestError) as raised:
        plain_chat(world, gateway, use_async=False)

    assert raised.value.body == {"message": "Invalid request.", "type": "invalid_request_error", "param": None, "code": None}
    assert len(fake_upstream.requests) == 1  # not retried, and not sent elsewhere: the request itself is refused
    assert fake_upstream_b.requests == []
    assert_nothing_charged(world)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_completions_charge_the_report_or_the_local_count_of_their_text(gateway, fake_upstream, stream):
    model = "gpt-3.5-turbo-instruct"
    world = world_build(upstreams=[fake_upstream], model=model, default_max_tokens=DEFAULT_MAX_TOKENS)
    fake_upstream.push(omit_usage=True, chunks=9)
    prompt = "Write a haiku about ledgers."
    client = world.client(gateway)

    if stream:
        pieces = list(client.completions.create(model=model, prompt=prompt, stream=True))
        text = "".join(choice.text for piece in pieces for choice in piece.choices)
    else:
        text = client.completions.create(model=model, prompt=prompt).choices[0].text

    (received,) = fake_upstream.requests
    assert received.body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert received.body["model"] == f"{model}-upstream"
    output = tokens.count_text(text, model=model)
    assert output == 9
    record = assert_charged(world, input_tokens=tokens.count_completion_prompt(prompt, model=model), output_tokens=output)
    assert record.metadata["outcome"] == "no_usage_reported"
    assert record.metadata["endpoint"] == "completions"


@pytest.mark.parametrize("on_disconnect", ["drain", "cancel"])
def test_a_long_streams_estimate_is_the_same_once_its_events_are_kept_as_text(gateway, fake_upstream, monkeypatch, on_disconnect):
    """Past RECEIVED_JSON_BYTES a stream keeps its events' text, not their JSON: the estimate must not change."""
    from gateway import calls

    monkeypatch.setattr(calls, "RECEIVED_JSON_BYTES", 300)  # crossed after a few events, several times over
    world = world_build(upstreams=[fake_upstream], on_disconnect=on_disconnect)
    fake_upstream.push(chunks=40, chunk_delay=0.005, error_event_mid_stream=30)

    text, error = read_stream_until_error(world, gateway, use_async=False)

    (received,) = fake_upstream.requests
    received.wait_finished()
    assert text == received.content_sent and "mid-stream" in error.message
    wait_hold_finished(world)
    record = assert_charged(world, input_tokens=local_prompt_tokens(), output_tokens=local_output_tokens(received.content_sent))
    assert record.metadata["outcome"] == "upstream_failed" and record.metadata["estimated"] is True
