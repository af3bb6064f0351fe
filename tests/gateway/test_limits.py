"""The gateway's per-key RPM/TPM buckets, stream caps and upstream caps (gateway/limits.py), on the suite's
real Redis: exact at the boundary under concurrency (asyncio and threads, each thread its own loop and
client), reservations given back, OpenAI's headers, refill over time, leases that end by themselves, and
what happens when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypeVar

import pytest

from gateway import limits
from gateway.limits import Admission, LimitsUnavailable, RateWindow
from tests.concurrency import run_concurrently
from tests.gateway.world import run_on_own_loop as run

T = TypeVar("T")
NOW = 1_800_000_000.0  # a fixed clock for the buckets (Unix seconds), so refill never blurs an assertion


def admit(*, key_id: int = 1, rpm: int | None = None, tpm: int | None = None, tokens: int = 0, at: float = 0.0) -> Admission:
    return run(limits.key_admit(key_id=key_id, rpm_limit=rpm, tpm_limit=tpm, tokens=tokens, now=NOW + at))


def settle(*, key_id: int = 1, tpm: int, reserved: int, actual: int, at: float = 0.0) -> None:
    run(limits.key_tokens_settle(key_id=key_id, tpm_limit=tpm, reserved=reserved, actual=actual, now=NOW + at))


@pytest.fixture
def redis_unreachable(settings, tmp_path):
    settings.GATEWAY_REDIS_URL = f"unix://{tmp_path}/none.sock"
    yield
    limits._key_outage.down = limits._upstream_outage.down = False


# --- Requests and tokens per minute -----------------------------------------------------------------------------


def test_rpm_is_exact_at_the_boundary_under_concurrency():
    async def burst(count: int) -> list[Admission]:
        return await asyncio.gather(
            *(limits.key_admit(key_id=7, rpm_limit=37, tpm_limit=None, tokens=0, now=NOW) for _ in range(count))
        )

    batches = run_concurrently(4, lambda i: run(burst(25)), reraise=True)  # 100 callers: 4 threads × 25 on each loop

    admissions = [a for batch in batches for a in batch]
    assert sum(a.allowed for a in admissions) == 37
    assert sorted(a.requests.remaining for a in admissions if a.allowed) == list(range(37))
    refused = [a for a in admissions if not a.allowed]
    assert {a.retry_after for a in refused} == {2}  # one request refills in 60 s / 37 = 1.62 s
    assert not admit(key_id=7, rpm=37).allowed


def test_tpm_is_exact_at_the_boundary_under_concurrency():
    async def burst(count: int) -> list[Admission]:
        return await asyncio.gather(
            *(limits.key_admit(key_id=8, rpm_limit=None, tpm_limit=1000, tokens=30, now=NOW) for _ in range(count))
        )

    batches = run_concurrently(4, lambda i: run(burst(20)), reraise=True)

    assert sum(a.allowed for batch in batches for a in batch) == 33  # 33 × 30 = 990 ≤ 1000 < 34 × 30
    assert admit(key_id=8, tpm=1000, tokens=10).allowed
    assert not admit(key_id=8, tpm=1000, tokens=1).allowed


def test_a_refusal_counts_nothing():
    assert admit(rpm=10, tpm=100, tokens=90).allowed

    refused = admit(rpm=10, tpm=100, tokens=20)  # the tokens do not fit: the request is not counted either

    assert not refused.allowed
    assert refused.requests == RateWindow(limit=10, remaining=9, reset_seconds=6.0)
    assert refused.tokens == RateWindow(limit=100, remaining=10, reset_seconds=54.0)
    assert refused.retry_after == 6  # 10 more tokens refill in 6 s
    allowed = admit(rpm=10, tpm=100, tokens=10)
    assert allowed.allowed
    assert (allowed.requests.remaining, allowed.tokens.remaining) == (8, 0)


def test_unused_tokens_are_given_back():
    assert admit(tpm=1000, tokens=800).tokens.remaining == 200

    settle(tpm=1000, reserved=800, actual=300)

    assert admit(tpm=1000, tokens=700).tokens.remaining == 0
    assert not admit(tpm=1000, tokens=1).allowed


def test_tokens_beyond_the_reservation_are_taken():
    assert admit(tpm=1000, tokens=100).allowed

    settle(tpm=1000, reserved=100, actual=400)

    assert admit(tpm=1000, tokens=600).tokens.remaining == 0


def test_a_give_back_never_fills_the_bucket_beyond_its_limit():
    admit(tpm=1000, tokens=500)

    settle(tpm=1000, reserved=500, actual=0, at=45)  # 45 s later the 500 have long refilled

    assert admit(tpm=1000, tokens=1000, at=45).allowed
    assert not admit(tpm=1000, tokens=1, at=45).allowed


def test_the_buckets_refill_over_the_minute():
    for _ in range(60):
        assert admit(rpm=60).allowed
    assert not admit(rpm=60).allowed

    half = admit(rpm=60, at=30)
    assert half.allowed and half.requests == RateWindow(limit=60, remaining=29, reset_seconds=31.0)
    assert admit(rpm=60, at=120).requests == RateWindow(limit=60, remaining=59, reset_seconds=1.0)


def test_retry_after_is_when_the_same_request_fits():
    assert admit(rpm=2).allowed and admit(rpm=2).allowed

    refused = admit(rpm=2, at=1)

    assert not refused.allowed and refused.retry_after == 29
    assert not admit(rpm=2, at=29.99).allowed
    assert admit(rpm=2, at=30).allowed


def test_tokens_above_the_tpm_limit_never_fit():
    refused = admit(rpm=10, tpm=100, tokens=101)

    assert not refused.allowed
    assert refused.retry_after is None
    assert admit(rpm=10, tpm=100, tokens=100).requests.remaining == 9  # the refusal counted nothing


def test_keys_are_limited_apart():
    assert admit(key_id=1, rpm=1).allowed
    assert not admit(key_id=1, rpm=1).allowed
    assert admit(key_id=2, rpm=1).allowed


def test_a_key_without_limits_is_always_admitted_and_needs_no_redis(redis_unreachable):
    admission = admit(tokens=10**9)

    assert admission == Admission(allowed=True, retry_after=None, requests=None, tokens=None)
    assert limits.ratelimit_headers(admission) == {}
    assert run(limits.stream_acquire(key_id=1, limit=None, stream_id="s", lease_seconds=5))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: admit(rpm=0), "rpm_limit"),
        (lambda: admit(tpm=-5, tokens=1), "tpm_limit"),
        (lambda: admit(rpm=10, tokens=-1), "tokens"),
        (lambda: admit(rpm=True), "rpm_limit"),
        (lambda: settle(tpm=100, reserved=-1, actual=0), "reserved"),
        (lambda: run(limits.stream_acquire(key_id=1, limit=2, stream_id="s", lease_seconds=0)), "lease_seconds"),
        (lambda: run(limits.upstream_acquire(upstream="u", limit=0, call_id="c", lease_seconds=5)), "limit"),
        (lambda: run(limits.lease_renew(lease_seconds=5, key_id=1)), "stream_id"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()

    assert admit(rpm=10).requests.remaining == 9


# --- OpenAI's headers ------------------------------------------------------------------------------------------


def test_headers_after_an_admission():
    admission = admit(rpm=60, tpm=150_000, tokens=16)

    assert limits.ratelimit_headers(admission) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "7ms",  # 16 tokens refill in 6.4 ms, rounded up to whole milliseconds
    }


def test_headers_of_an_exhausted_key():
    for _ in range(3):
        admit(rpm=3, tpm=900, tokens=300)

    headers = limits.ratelimit_headers(admit(rpm=3, tpm=900, tokens=300, at=0.5))

    assert headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59.5s",
        "x-ratelimit-limit-tokens": "900",
        "x-ratelimit-remaining-tokens": "7",  # 900 per minute refill 7.5 tokens in half a second
        "x-ratelimit-reset-tokens": "59.5s",
    }


def test_only_the_limits_a_key_has_get_headers():
    assert set(limits.ratelimit_headers(admit(tpm=100, tokens=1))) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (0.9994, "999ms"),
        (1, "1s"),
        (7.66, "7.66s"),
        (59.5, "59.5s"),
        (60, "1m0s"),
        (179.56, "2m59.56s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds, text):
    assert limits._duration(seconds) == text


# --- Concurrency caps ------------------------------------------------------------------------------------------


def test_stream_cap_is_exact_under_concurrency():
    async def burst(thread: int) -> list[bool]:
        return await asyncio.gather(
            *(limits.stream_acquire(key_id=3, limit=5, stream_id=f"s-{thread}-{n}", lease_seconds=30) for n in range(10))
        )

    batches = run_concurrently(4, lambda i: run(burst(i)), reraise=True)

    held = [f"s-{t}-{n}" for t, batch in enumerate(batches) for n, ok in enumerate(batch) if ok]
    assert len(held) == 5
    assert not run(limits.stream_acquire(key_id=3, limit=5, stream_id="late", lease_seconds=30))
    run(limits.stream_release(key_id=3, stream_id=held[0]))
    assert run(limits.stream_acquire(key_id=3, limit=5, stream_id="late", lease_seconds=30))
    assert not run(limits.stream_acquire(key_id=3, limit=5, stream_id="later", lease_seconds=30))
    assert run(limits.stream_acquire(key_id=4, limit=5, stream_id="other key", lease_seconds=30))


def test_upstream_cap_is_exact_under_concurrency():
    async def burst(thread: int) -> list[bool]:
        return await asyncio.gather(
            *(limits.upstream_acquire(upstream="openai", limit=7, call_id=f"c-{thread}-{n}", lease_seconds=30) for n in range(10))
        )

    batches = run_concurrently(4, lambda i: run(burst(i)), reraise=True)

    assert sum(ok for batch in batches for ok in batch) == 7
    assert run(limits.upstream_acquire(upstream="azure", limit=7, call_id="x", lease_seconds=30))


def test_taking_a_held_slot_again_takes_no_second_slot():
    assert run(limits.stream_acquire(key_id=1, limit=2, stream_id="a", lease_seconds=30))
    assert run(limits.stream_acquire(key_id=1, limit=2, stream_id="a", lease_seconds=30))

    assert run(limits.stream_acquire(key_id=1, limit=2, stream_id="b", lease_seconds=30))
    assert not run(limits.stream_acquire(key_id=1, limit=2, stream_id="c", lease_seconds=30))


def test_a_lease_ends_by_itself():
    assert run(limits.stream_acquire(key_id=1, limit=1, stream_id="killed", lease_seconds=1))
    assert not run(limits.stream_acquire(key_id=1, limit=1, stream_id="next", lease_seconds=1))

    time.sleep(1.2)

    assert run(limits.stream_acquire(key_id=1, limit=1, stream_id="next", lease_seconds=30))
    assert not run(limits.lease_renew(lease_seconds=30, key_id=1, stream_id="killed"))


def test_a_renewed_lease_outlives_its_first_term():
    async def scenario() -> tuple[bool, bool, bool]:
        assert await limits.stream_acquire(key_id=1, limit=1, stream_id="long", lease_seconds=1)
        assert await limits.upstream_acquire(upstream="openai", limit=1, call_id="long", lease_seconds=1)
        renewed = await limits.lease_renew(lease_seconds=30, key_id=1, stream_id="long", upstream="openai", call_id="long")
        await asyncio.sleep(1.2)
        stream_taken = await limits.stream_acquire(key_id=1, limit=1, stream_id="other", lease_seconds=1)
        call_taken = await limits.upstream_acquire(upstream="openai", limit=1, call_id="other", lease_seconds=1)
        return renewed, stream_taken, call_taken

    assert run(scenario()) == (True, False, False)


def test_a_released_slot_cannot_be_renewed():
    run(limits.upstream_acquire(upstream="openai", limit=1, call_id="done", lease_seconds=30))
    run(limits.upstream_release(upstream="openai", call_id="done"))

    assert not run(limits.lease_renew(lease_seconds=30, upstream="openai", call_id="done"))
    assert run(limits.upstream_acquire(upstream="openai", limit=1, call_id="next", lease_seconds=30))


# --- Redis unreachable -----------------------------------------------------------------------------------------


def test_without_redis_a_key_with_limits_is_refused(redis_unreachable, caplog):
    with pytest.raises(LimitsUnavailable):
        admit(rpm=10)
    with pytest.raises(LimitsUnavailable):
        admit(tpm=10, tokens=1)
    with pytest.raises(LimitsUnavailable):
        run(limits.stream_acquire(key_id=1, limit=2, stream_id="s", lease_seconds=5))

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "gateway.redis"]
    assert len(errors) == 1  # once per outage, not once per request


def test_without_redis_upstream_calls_go_through_and_clean_up_is_dropped(redis_unreachable):
    assert run(limits.upstream_acquire(upstream="openai", limit=1, call_id="a", lease_seconds=5))
    assert run(limits.upstream_acquire(upstream="openai", limit=1, call_id="b", lease_seconds=5))
    run(limits.upstream_release(upstream="openai", call_id="a"))
    run(limits.stream_release(key_id=1, stream_id="s"))
    settle(tpm=100, reserved=50, actual=10)
    assert run(limits.lease_renew(lease_seconds=5, key_id=1, stream_id="s", upstream="openai", call_id="b"))


def test_limits_work_again_when_redis_answers(settings, tmp_path, caplog):
    reachable = settings.GATEWAY_REDIS_URL
    settings.GATEWAY_REDIS_URL = f"unix://{tmp_path}/none.sock"
    with pytest.raises(LimitsUnavailable):
        admit(rpm=1)

    settings.GATEWAY_REDIS_URL = reachable

    assert admit(rpm=1).allowed
    assert not admit(rpm=1).allowed
    assert [r.levelname for r in caplog.records if r.name == "gateway.redis"] == ["ERROR", "WARNING"]
