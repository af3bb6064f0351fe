"""The gateway's resilience through the real `openai` SDK (docs/gateway.md "Resilience", docs/gateway-resilience.md):
the circuit breaker opens, sends traffic to the route's next upstream, probes and closes, and its state is shared
with another process; retries with back-off only before the first byte; the per-upstream concurrency cap; connect,
first-byte and between-chunks timeouts. Every failed attempt is checked in the fakes' request logs, and no failure
before the first byte is ever charged."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TypeVar

import openai
import pytest
from django.conf import settings as django_settings

from accounts import services as account_services
from gateway import breaker, limits
from gateway.breaker import BreakerState, breaker_state
from gateway.limits import upstream_acquire, upstream_release
from gateway.tokens import count_chat_prompt, count_text
from metering.models import Hold, HoldStatus, UsageRecord
from tests.concurrency import run_concurrently
from tests.gateway.fake_upstream import closed_port
from tests.gateway.world import MODEL, World, world_build
from tests.gateway.world import run_on_own_loop as run
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")
FAILURES = 2
COOLDOWN = 1.0  # seconds: "still open" must hold across a few calls on a busy machine
MESSAGES = [{"role": "user", "content": "Hello"}]
PEER_TIMEOUT = 60


@pytest.fixture(autouse=True)
def _resilience_settings(settings):
    settings.GATEWAY_BREAKER_FAILURES = FAILURES
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    settings.GATEWAY_UPSTREAM_RETRIES = 0
    settings.GATEWAY_RETRY_BACKOFF_SECONDS = 0.01


def chat(client: openai.OpenAI, **options):
    return client.chat.completions.create(model=options.pop("model", MODEL), messages=MESSAGES, **options)


def content_of(chunks: list) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def state(upstream: str) -> BreakerState:
    return run(breaker_state(upstream))


def wait_for_half_open(upstream: str) -> None:
    deadline = time.monotonic() + COOLDOWN + 10
    while state(upstream) != BreakerState.HALF_OPEN:
        assert time.monotonic() < deadline, "the cool-down never ended"
        time.sleep(0.05)


def records(world: World) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(organization=world.organization).order_by("id"))


def assert_nothing_active(world: World) -> None:
    assert not Hold.objects.filter(organization=world.organization, status=HoldStatus.ACTIVE).exists()
    assert wallet_of(world.organization).held == 0
    assert_money_invariants()


# --- The circuit breaker ---------------------------------------------------------------------------------------


def test_the_breaker_opens_sends_traffic_to_the_fallback_probes_and_closes(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, b = world.upstream_names
    client = world.client(gateway)
    fake_upstream.set_default(status=500)

    for _ in range(FAILURES):  # each call: A fails (counted), B answers
        assert chat(client).choices[0].message.content
    assert state(a) == BreakerState.OPEN and state(b) == BreakerState.CLOSED
    assert len(fake_upstream.requests) == FAILURES

    for _ in range(3):  # open: straight to B, A is not even tried
        assert chat(client).choices[0].message.content
    assert len(fake_upstream.requests) == FAILURES
    assert len(fake_upstream_b.requests) == FAILURES + 3

    fake_upstream.set_default()  # A recovers; after the cool-down one probe reaches it
    wait_for_half_open(a)
    probe = chat(client)
    assert len(fake_upstream.requests) == FAILURES + 1
    assert state(a) == BreakerState.CLOSED
    for _ in range(2):  # closed: traffic is back on A
        chat(client)

    assert len(fake_upstream.requests) == FAILURES + 3
    assert len(fake_upstream_b.requests) == FAILURES + 3
    assert [r.metadata["upstream"] for r in records(world)] == [b] * (FAILURES + 3) + [a] * 3
    assert all(r.metadata["outcome"] == "completed" for r in records(world))
    assert records(world)[FAILURES + 3].cost == world.cost(
        input_tokens=probe.usage.prompt_tokens, output_tokens=probe.usage.completion_tokens
    )
    assert_nothing_active(world)


def test_concurrent_calls_after_the_cool_down_send_exactly_one_probe(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, b = world.upstream_names
    fake_upstream.set_default(status=500)
    for _ in range(FAILURES):
        chat(world.client(gateway))
    fake_upstream.set_default(stall_before_first_byte=0.3)  # healthy again, and slow: the probe is still out
    wait_for_half_open(a)

    replies = run_concurrently(4, lambda i: chat(world.client(gateway)), reraise=True)

    assert all(reply.choices[0].message.content for reply in replies)
    assert len(fake_upstream.requests) == FAILURES + 1  # one probe among four callers
    assert len(fake_upstream_b.requests) == FAILURES + 3
    assert sorted(r.metadata["upstream"] for r in records(world)[FAILURES:]) == [a] + [b] * 3
    assert state(a) == BreakerState.CLOSED
    assert_nothing_active(world)


def test_a_failed_probe_opens_the_breaker_for_another_cool_down(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, _ = world.upstream_names
    client = world.client(gateway)
    fake_upstream.set_default(status=503)
    for _ in range(FAILURES):
        chat(client)
    wait_for_half_open(a)

    chat(client)  # the probe fails: B answers, A is open again
    chat(client)

    assert len(fake_upstream.requests) == FAILURES + 1
    assert state(a) == BreakerState.OPEN
    assert len(fake_upstream_b.requests) == FAILURES + 2
    assert_nothing_active(world)


def test_a_failure_that_opens_the_breaker_is_not_retried(gateway, fake_upstream, fake_upstream_b, settings):
    """Retries stop once the upstream's breaker is open: the probe is one request, not one per retry."""
    settings.GATEWAY_UPSTREAM_RETRIES = 2
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, _ = world.upstream_names
    fake_upstream.set_default(status=500)

    chat(world.client(gateway))  # closed: the first failure is retried, the second opens the breaker
    assert len(fake_upstream.requests) == FAILURES
    wait_for_half_open(a)
    chat(world.client(gateway))  # the probe fails: the breaker opens again, and that ends A's turn

    assert len(fake_upstream.requests) == FAILURES + 1
    assert state(a) == BreakerState.OPEN
    assert len(fake_upstream_b.requests) == 2
    assert_nothing_active(world)


def test_with_every_breaker_open_the_call_is_503_upstream_unavailable_and_not_charged(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    client = world.client(gateway)
    fake_upstream.set_default(status=500)
    for _ in range(FAILURES):
        with pytest.raises(openai.InternalServerError) as failed:
            chat(client)
        assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    before = money_state(world.organization)

    with pytest.raises(openai.InternalServerError) as raised:
        chat(client)

    assert raised.value.status_code == 503 and raised.value.code == "upstream_unavailable"
    assert len(fake_upstream.requests) == FAILURES
    assert records(world) == []
    state_after = money_state(world.organization)
    assert (state_after["balance"], state_after["held"]) == (before["balance"], before["held"])
    assert_nothing_active(world)


PEER_SOURCE = """
import asyncio, json, sys
import django

django.setup()
from gateway import breaker
from gateway.redis import async_redis_close


async def main():
    operation, upstream, times = getattr(breaker, "breaker_" + sys.argv[1]), sys.argv[2], int(sys.argv[3])
    try:
        print(json.dumps([await operation(upstream) for _ in range(times)]))
    finally:
        await async_redis_close()


asyncio.run(main())
"""


def peer(operation: str, upstream: str, *, times: int = 1, cooldown: float = COOLDOWN) -> list:
    """Another Python process, with its own settings and Redis client, driving the breaker on the same Redis."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
        "GATEWAY_BREAKER_FAILURES": str(FAILURES),
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": str(cooldown),
    }
    done = subprocess.run(
        [sys.executable, "-c", PEER_SOURCE, operation, upstream, str(times)],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=PEER_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_breaker_the_gateway_opened_reads_open_in_another_process(gateway, fake_upstream, fake_upstream_b, settings):
    # A cool-down far longer than a peer process takes to start on a loaded machine, so "open" cannot have
    # become "half_open" by the time the peer reads it.
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 120
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, b = world.upstream_names
    fake_upstream.set_default(status=500)
    assert peer("state", a, cooldown=120) == ["closed"]

    for _ in range(FAILURES):
        chat(world.client(gateway))

    assert peer("state", a, cooldown=120) == ["open"]
    assert peer("state", b, cooldown=120) == ["closed"]


def test_failures_another_process_recorded_make_the_gateway_skip_the_upstream(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, b = world.upstream_names

    assert peer("failure", a, times=FAILURES) == ["closed"] * (FAILURES - 1) + ["open"]
    reply = chat(world.client(gateway))

    assert reply.choices[0].message.content
    assert fake_upstream.requests == []  # the healthy-looking A is skipped: the peer saw it fail
    assert len(fake_upstream_b.requests) == 1
    assert [r.metadata["upstream"] for r in records(world)] == [b]


# --- Redis unreachable -------------------------------------------------------------------------------------------


@pytest.fixture
def gateway_redis_unreachable(settings, tmp_path):
    settings.GATEWAY_REDIS_URL = f"unix://{tmp_path}/none.sock"
    yield
    for outage in (breaker._outage, limits._key_outage, limits._upstream_outage):
        outage.down = False  # the next test's first outage is logged again


def test_without_redis_a_key_with_limits_is_refused_and_a_key_without_is_served(
    gateway, fake_upstream, gateway_redis_unreachable
):
    world = world_build(upstreams=[fake_upstream], rpm_limit=100)
    unlimited = account_services.api_key_create(organization=world.organization, name="unlimited")
    before = money_state(world.organization)

    with pytest.raises(openai.InternalServerError) as raised:
        chat(world.client(gateway))
    assert raised.value.status_code == 503 and raised.value.code == "rate_limits_unavailable"
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before

    client = openai.OpenAI(base_url=gateway.base_url, api_key=unlimited.secret, max_retries=0, timeout=10)
    plain = chat(client)  # the breaker and the upstream's cap let calls through while Redis is away
    streamed = list(chat(client, stream=True, stream_options={"include_usage": True}))

    assert content_of(streamed) and len(fake_upstream.requests) == 2
    expected = world.cost(input_tokens=plain.usage.prompt_tokens, output_tokens=plain.usage.completion_tokens)
    expected += world.cost(input_tokens=streamed[-1].usage.prompt_tokens, output_tokens=streamed[-1].usage.completion_tokens)
    assert wallet_of(world.organization).balance == before["balance"] - expected
    assert_nothing_active(world)


# --- Retries: only before the first byte -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure", [{"status": 500}, {"status": 429}, {"close_before_first_byte": True}], ids=["500", "429", "reset"]
)
def test_one_failure_before_the_first_byte_is_retried_on_the_same_upstream(
    gateway, fake_upstream, fake_upstream_b, settings, failure
):
    settings.GATEWAY_UPSTREAM_RETRIES = 1
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, _ = world.upstream_names
    fake_upstream.push(**failure)

    reply = chat(world.client(gateway))

    assert reply.choices[0].message.content
    assert len(fake_upstream.requests) == 2
    assert fake_upstream.requests[0].body == fake_upstream.requests[1].body  # the same request again
    assert fake_upstream_b.requests == []
    (record,) = records(world)
    assert (record.metadata["upstream"], record.metadata["outcome"]) == (a, "completed")
    assert record.cost == world.cost(input_tokens=reply.usage.prompt_tokens, output_tokens=reply.usage.completion_tokens)
    assert_nothing_active(world)


def test_a_stream_is_retried_before_its_first_byte_too(gateway, fake_upstream, settings):
    settings.GATEWAY_UPSTREAM_RETRIES = 1
    world = world_build(upstreams=[fake_upstream])
    fake_upstream.push(status=502)

    chunks = list(chat(world.client(gateway), stream=True))

    assert content_of(chunks)
    assert len(fake_upstream.requests) == 2
    assert [r.metadata["outcome"] for r in records(world)] == ["completed"]


def test_when_the_retries_are_spent_the_next_upstream_answers(gateway, fake_upstream, fake_upstream_b, settings):
    settings.GATEWAY_UPSTREAM_RETRIES = 1
    settings.GATEWAY_BREAKER_FAILURES = 10
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    fake_upstream.push(status=500, times=2)

    reply = chat(world.client(gateway))

    assert reply.choices[0].message.content
    assert (len(fake_upstream.requests), len(fake_upstream_b.requests)) == (2, 1)
    assert [r.metadata["upstream"] for r in records(world)] == [world.upstream_names[1]]
    assert_nothing_active(world)


def test_an_upstreams_own_refusal_of_the_request_is_passed_on_and_not_retried(gateway, fake_upstream, fake_upstream_b, settings):
    settings.GATEWAY_UPSTREAM_RETRIES = 1
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    fake_upstream.push(status=400)
    before = money_state(world.organization)

    with pytest.raises(openai.BadRequestError) as raised:
        chat(world.client(gateway))

    assert raised.value.body["message"] == "Invalid request."  # the upstream's own body
    assert (len(fake_upstream.requests), len(fake_upstream_b.requests)) == (1, 0)
    assert records(world) == []
    assert wallet_of(world.organization).balance == before["balance"]
    assert_nothing_active(world)


@pytest.mark.parametrize("failure", [{"fail_mid_stream": 3}, {"error_event_mid_stream": 3}], ids=["reset", "error-event"])
def test_a_failure_mid_stream_is_not_retried_and_charges_what_was_relayed(
    gateway, fake_upstream, fake_upstream_b, settings, failure
):
    settings.GATEWAY_UPSTREAM_RETRIES = 1
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    fake_upstream.push(**failure)
    chunks = []

    with pytest.raises(openai.APIError) as raised:
        for chunk in chat(world.client(gateway), stream=True):
            chunks.append(chunk)

    assert raised.value.body["code"] == "upstream_error"
    assert "mid-stream" in raised.value.message
    relayed = content_of(chunks)
    assert relayed
    assert len(fake_upstream.requests) == 1  # not retried ...
    assert fake_upstream_b.requests == []  # ... nor sent elsewhere: the client already had bytes
    (record,) = records(world)
    assert (record.metadata["outcome"], record.metadata["estimated"]) == ("upstream_failed", True)
    prompt = count_chat_prompt({"model": MODEL, "messages": MESSAGES}, model=MODEL)
    output = count_text(relayed, model=MODEL)  # the error's text is not counted
    assert (record.input_tokens, record.output_tokens) == (prompt, output)
    assert record.cost == world.cost(input_tokens=prompt, output_tokens=output)
    assert_nothing_active(world)


# --- The per-upstream concurrency cap ---------------------------------------------------------------------------


def test_a_full_upstream_sends_the_next_call_to_the_fallback_and_frees_its_slot(gateway, fake_upstream, fake_upstream_b):
    world = world_build(upstreams=[fake_upstream, fake_upstream_b], upstream_options={"max_concurrency": 1})
    a, b = world.upstream_names
    client = world.client(gateway)
    fake_upstream.push(chunk_delay=0.05, chunks=8)

    slow = chat(client, stream=True)
    first = [next(iter(slow))]
    during = chat(client)  # A is at its cap
    first += list(slow)
    after = chat(client)  # the slot came back when the stream ended

    assert content_of(first) and during.choices[0].message.content and after.choices[0].message.content
    assert (len(fake_upstream.requests), len(fake_upstream_b.requests)) == (2, 1)
    assert [r.metadata["upstream"] for r in records(world)] == [b, a, a]  # ordered by the end of each call
    assert_nothing_active(world)


def test_a_full_upstream_with_no_fallback_is_503_upstream_unavailable(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], upstream_options={"max_concurrency": 1})
    client = world.client(gateway)
    fake_upstream.push(chunk_delay=0.05, chunks=8)

    slow = chat(client, stream=True)
    first = [next(iter(slow))]
    with pytest.raises(openai.InternalServerError) as raised:
        chat(client)
    first += list(slow)

    assert raised.value.status_code == 503 and raised.value.code == "upstream_unavailable"
    assert content_of(first)
    assert len(fake_upstream.requests) == 1
    assert [h.status for h in Hold.objects.filter(organization=world.organization).order_by("id")] == [
        HoldStatus.CAPTURED,
        HoldStatus.RELEASED,
    ]
    assert len(records(world)) == 1
    assert_nothing_active(world)


# --- Timeouts ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt gets no answer at all (the SYN is dropped), which is
    what an unreachable host looks like. (A non-routable address is not reliable: some networks answer it.)"""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        yield port


def test_an_upstream_that_never_accepts_the_connection_times_out_and_the_next_one_answers(gateway, fake_upstream_b):
    with unanswered_port() as port:
        silent = f"http://127.0.0.1:{port}/v1"
        options = {"connect_timeout_seconds": 0.2}
        world = world_build(upstreams=[("silent", silent), fake_upstream_b], upstream_options=options)
        world_build(upstreams=[("silent-2", silent)], model="gpt-4o", upstream_options=options)
        started = time.monotonic()
        reply = chat(world.client(gateway))
        elapsed = time.monotonic() - started
        with pytest.raises(openai.InternalServerError) as alone:
            chat(world.client(gateway), model="gpt-4o")

    assert reply.choices[0].message.content
    assert elapsed < 2  # one 0.2 s connect timeout, not the default 5 s
    assert len(fake_upstream_b.requests) == 1
    assert [r.metadata["upstream"] for r in records(world)] == [world.upstream_names[1]]
    assert alone.value.status_code == 504 and alone.value.code == "upstream_timeout"
    assert_nothing_active(world)


def test_a_refused_connection_falls_back_and_alone_is_502(gateway, fake_upstream_b):
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    world = world_build(upstreams=[("refusing", refused), fake_upstream_b])
    world_build(upstreams=[("refusing-2", refused)], model="gpt-4o")
    before = money_state(world.organization)

    reply = chat(world.client(gateway))
    with pytest.raises(openai.InternalServerError) as alone:
        chat(world.client(gateway), model="gpt-4o")

    assert reply.choices[0].message.content
    assert len(fake_upstream_b.requests) == 1
    assert alone.value.status_code == 502 and alone.value.code == "upstream_error"
    (record,) = records(world)
    assert wallet_of(world.organization).balance == before["balance"] - record.cost
    assert_nothing_active(world)


def test_no_first_byte_in_time_is_504_or_the_next_upstream(gateway, fake_upstream, fake_upstream_b):
    options = {"timeout_seconds": 0.5, "idle_timeout_seconds": 0.5}
    world = world_build(upstreams=[fake_upstream, fake_upstream_b], upstream_options=options)
    world_build(upstreams=[fake_upstream], model="gpt-4o", upstream_options=options)
    fake_upstream.set_default(stall_before_first_byte=3)

    streamed = list(chat(world.client(gateway), stream=True))
    with pytest.raises(openai.InternalServerError) as alone:
        chat(world.client(gateway), model="gpt-4o")

    assert content_of(streamed)
    assert len(fake_upstream_b.requests) == 1
    assert alone.value.status_code == 504 and alone.value.code == "upstream_timeout"
    assert len(fake_upstream.requests) == 2
    for request in fake_upstream.requests:
        assert request.wait_finished(5).client_disconnected  # the gateway gave up on it
    assert [r.metadata["upstream"] for r in records(world)] == [world.upstream_names[1]]
    assert_nothing_active(world)


def test_a_stall_between_chunks_ends_the_stream_as_upstream_failed(gateway, fake_upstream, fake_upstream_b):
    world = world_build(
        upstreams=[fake_upstream, fake_upstream_b], upstream_options={"timeout_seconds": 0.5, "idle_timeout_seconds": 0.5}
    )
    fake_upstream.push(stall_mid_stream=(3, 3.0))
    chunks = []

    with pytest.raises(openai.APIError) as raised:
        for chunk in chat(world.client(gateway), stream=True):
            chunks.append(chunk)

    assert "mid-stream" in raised.value.message
    assert fake_upstream_b.requests == []
    (record,) = records(world)
    assert (record.metadata["outcome"], record.metadata["estimated"]) == ("upstream_failed", True)
    assert record.output_tokens == count_text(content_of(chunks), model=MODEL)
    assert fake_upstream.requests[0].wait_finished(5).client_disconnected
    assert_nothing_active(world)


def test_a_pause_between_chunks_shorter_than_the_idle_timeout_is_waited_out(gateway, fake_upstream):
    """The idle timeout governs the gaps of a stream, even when it is longer than the first-byte timeout."""
    world = world_build(upstreams=[fake_upstream], upstream_options={"timeout_seconds": 0.3, "idle_timeout_seconds": 3})
    fake_upstream.push(stall_mid_stream=(3, 0.8))

    chunks = list(chat(world.client(gateway), stream=True, stream_options={"include_usage": True}))

    assert content_of(chunks) == fake_upstream.requests[0].wait_finished(5).content_sent
    (record,) = records(world)
    assert record.metadata["outcome"] == "completed"
    assert (record.input_tokens, record.output_tokens) == (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
    assert_nothing_active(world)


def test_a_longer_idle_timeout_does_not_lengthen_the_wait_for_a_streams_first_byte(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], upstream_options={"timeout_seconds": 0.3, "idle_timeout_seconds": 5})
    fake_upstream.push(stall_before_first_byte=3)

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        chat(world.client(gateway), stream=True)

    assert time.monotonic() - started < 2
    assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"
    assert fake_upstream.requests[0].wait_finished(5).client_disconnected
    assert records(world) == []
    assert_nothing_active(world)


def test_a_probe_answered_with_the_upstreams_own_refusal_closes_the_breaker(gateway, fake_upstream, fake_upstream_b):
    """The upstream answered: it is healthy, whatever it thought of the request. Left unreported, the probe
    permit would keep the breaker half-open for another whole cool-down."""
    world = world_build(upstreams=[fake_upstream, fake_upstream_b])
    a, _ = world.upstream_names
    client = world.client(gateway)
    fake_upstream.set_default(status=500)
    for _ in range(FAILURES):
        chat(client)
    fake_upstream.set_default(status=400)
    wait_for_half_open(a)

    with pytest.raises(openai.BadRequestError):
        chat(client)

    assert state(a) == BreakerState.CLOSED
    assert_nothing_active(world)


def test_a_full_upstream_does_not_take_the_half_open_probe(gateway, fake_upstream, fake_upstream_b):
    """The slot is taken before the probe permit: a call that finds the upstream full leaves the probe to the
    next call that can make it."""
    world = world_build(upstreams=[fake_upstream, fake_upstream_b], upstream_options={"max_concurrency": 1})
    a, _ = world.upstream_names
    client = world.client(gateway)
    fake_upstream.set_default(status=500)
    for _ in range(FAILURES):
        chat(client)
    fake_upstream.set_default()
    wait_for_half_open(a)
    assert run(upstream_acquire(upstream=a, limit=1, call_id="someone-else", lease_seconds=30))

    chat(client)  # A is full: B answers, and A's probe permit is left alone
    assert state(a) == BreakerState.HALF_OPEN
    run(upstream_release(upstream=a, call_id="someone-else"))
    chat(client)  # the probe

    assert len(fake_upstream.requests) == FAILURES + 1
    assert state(a) == BreakerState.CLOSED
    assert_nothing_active(world)


def test_a_plain_call_waits_for_its_whole_answer_beyond_the_first_byte_timeout(gateway, fake_upstream, settings):
    """A plain answer comes after the whole generation: it has GATEWAY_PLAIN_TIMEOUT_SECONDS, not the
    first-byte timeout a stream's first event has."""
    settings.GATEWAY_PLAIN_TIMEOUT_SECONDS = 5
    world = world_build(upstreams=[fake_upstream], upstream_options={"timeout_seconds": 0.3, "idle_timeout_seconds": 0.3})
    fake_upstream.push(stall_before_first_byte=1.0)

    reply = chat(world.client(gateway))

    assert reply.choices[0].message.content and len(fake_upstream.requests) == 1
    assert records(world)[0].metadata["outcome"] == "completed"
    assert_nothing_active(world)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_timeout_after_the_request_was_sent_is_not_retried_on_that_upstream(
    gateway, fake_upstream, fake_upstream_b, settings, stream
):
    """The upstream may be generating (and billing us): a retry there would pay for a second generation. The
    route's next upstream answers. A slow plain answer says little of the upstream's health, so it does not
    count against its breaker; a stream's silence does."""
    settings.GATEWAY_UPSTREAM_RETRIES = 2
    world = world_build(
        upstreams=[fake_upstream, fake_upstream_b], upstream_options={"timeout_seconds": 0.3, "idle_timeout_seconds": 0.3}
    )
    a, b = world.upstream_names
    fake_upstream.set_default(stall_before_first_byte=2)

    for _ in range(FAILURES):
        answer = chat(world.client(gateway), stream=stream)
        assert content_of(list(answer)) if stream else answer.choices[0].message.content

    assert len(fake_upstream.requests) == FAILURES  # one try each, never a retry
    assert [r.metadata["upstream"] for r in records(world)] == [b] * FAILURES
    assert state(a) == (BreakerState.OPEN if stream else BreakerState.CLOSED)
    assert_nothing_active(world)
