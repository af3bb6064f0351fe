"""The per-upstream circuit breaker (gateway/breaker.py) on the suite's real Redis: it opens after the
configured consecutive failures, refuses while open, gives exactly one probe to many concurrent callers
(asyncio and threads, and across two processes), closes on the probe's success, opens again on its
failure, frees the probe slot of a holder that died, and lets calls through when Redis is unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings as django_settings

from gateway import breaker
from gateway.breaker import BreakerState, breaker_allow, breaker_failure, breaker_state, breaker_success
from tests.concurrency import run_concurrently
from tests.gateway.world import run_on_own_loop as run

T = TypeVar("T")
FAILURES = 3
COOLDOWN = 1.5  # seconds: long enough that "still open" holds on a busy machine, short enough to wait out
UPSTREAM = "openai"


@pytest.fixture(autouse=True)
def _breaker_settings(settings):
    settings.GATEWAY_BREAKER_FAILURES = FAILURES
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = COOLDOWN


def fail(times: int, upstream: str = UPSTREAM) -> list[BreakerState]:
    return [run(breaker_failure(upstream)) for _ in range(times)]


def state(upstream: str = UPSTREAM) -> BreakerState:
    return run(breaker_state(upstream))


def wait_for_half_open(upstream: str = UPSTREAM) -> None:
    deadline = time.monotonic() + COOLDOWN + 10
    while state(upstream) != BreakerState.HALF_OPEN:
        assert time.monotonic() < deadline, "the cool-down never ended"
        time.sleep(0.05)


def allow_many(count: int, upstream: str = UPSTREAM) -> list[bool]:
    async def burst() -> list[bool]:
        return list(await asyncio.gather(*(breaker_allow(upstream) for _ in range(count))))

    return run(burst())


def test_a_new_breaker_is_closed_and_allows():
    assert state() == BreakerState.CLOSED
    assert all(allow_many(5))


def test_opens_after_the_configured_consecutive_failures_and_refuses_while_open():
    assert fail(FAILURES) == [BreakerState.CLOSED] * (FAILURES - 1) + [BreakerState.OPEN]

    assert state() == BreakerState.OPEN
    assert not any(allow_many(20))
    assert fail(1) == [BreakerState.OPEN]  # a late failure while open changes nothing


def test_a_success_while_closed_resets_the_consecutive_count():
    fail(FAILURES - 1)
    run(breaker_success(UPSTREAM))

    assert fail(FAILURES - 1) == [BreakerState.CLOSED] * (FAILURES - 1)
    assert fail(1) == [BreakerState.OPEN]


def test_each_upstream_has_its_own_breaker():
    fail(FAILURES, "openai")

    assert state("openai") == BreakerState.OPEN
    assert state("azure") == BreakerState.CLOSED
    assert all(allow_many(3, "azure"))


def test_a_success_during_the_cool_down_does_not_close_the_breaker():
    fail(FAILURES)

    run(breaker_success(UPSTREAM))  # a call that began before the breaker opened

    assert state() == BreakerState.OPEN


def test_exactly_one_probe_among_many_concurrent_callers():
    fail(FAILURES)
    wait_for_half_open()

    batches = run_concurrently(5, lambda i: allow_many(50), reraise=True)  # 250 callers: 5 threads × 50 on each loop

    assert sum(ok for batch in batches for ok in batch) == 1
    assert state() == BreakerState.HALF_OPEN
    assert not any(allow_many(10))  # while the probe is out


def test_the_probes_success_closes_the_breaker_and_resets_the_count():
    fail(FAILURES)
    wait_for_half_open()
    assert allow_many(1) == [True]

    run(breaker_success(UPSTREAM))

    assert state() == BreakerState.CLOSED
    assert all(allow_many(10))
    assert fail(FAILURES - 1) == [BreakerState.CLOSED] * (FAILURES - 1)


def test_the_probes_failure_opens_the_breaker_for_another_cool_down():
    fail(FAILURES)
    wait_for_half_open()
    assert allow_many(1) == [True]

    assert fail(1) == [BreakerState.OPEN]

    assert state() == BreakerState.OPEN
    assert not any(allow_many(10))
    wait_for_half_open()
    assert sum(allow_many(10)) == 1  # a new probe after the new cool-down


def test_a_dead_probe_holders_slot_expires():
    fail(FAILURES)
    wait_for_half_open()
    assert allow_many(1) == [True]  # the probe holder now dies without reporting
    assert not any(allow_many(10))

    deadline = time.monotonic() + COOLDOWN + 10
    while not (verdicts := allow_many(10)).count(True):
        assert time.monotonic() < deadline, "the dead probe's slot never expired"
        time.sleep(0.05)

    assert verdicts.count(True) == 1
    assert state() == BreakerState.HALF_OPEN


# --- Shared between processes -----------------------------------------------------------------------------------

PEER_SOURCE = """
import asyncio, json, sys
import django

django.setup()
from gateway import breaker
from gateway.redis import async_redis_close


async def serve():
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        request = json.loads(line)
        operation = getattr(breaker, "breaker_" + request["op"])
        results = await asyncio.gather(*(operation(request["upstream"]) for _ in range(request.get("times", 1))))
        print(json.dumps({"results": results}), flush=True)
    await async_redis_close()


asyncio.run(serve())
"""
ANSWER_TIMEOUT = 60


class BreakerPeer:
    """A second Python process with its own Redis client, driving the breaker on the same Redis."""

    def __init__(self, log_path: Path) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
            "GATEWAY_BREAKER_FAILURES": str(FAILURES),
            "GATEWAY_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = log_path.open("w")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER_SOURCE],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._answer() == {"ready": True}

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=ANSWER_TIMEOUT):
                raise AssertionError(f"the breaker peer did not answer in {ANSWER_TIMEOUT} s; see {self.log_path}")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the breaker peer exited ({self.process.poll()}); see {self.log_path}")
        return json.loads(line)

    def send(self, op: str, *, times: int = 1) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "upstream": UPSTREAM, "times": times}) + "\n")
        self.process.stdin.flush()

    def results(self) -> list[Any]:
        return self._answer()["results"]

    def call(self, op: str, *, times: int = 1) -> list[Any]:
        self.send(op, times=times)
        return self.results()

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
def peer(tmp_path) -> Iterator[BreakerPeer]:
    process = BreakerPeer(tmp_path / "breaker-peer.log")
    yield process
    process.stop()


def test_the_state_is_shared_between_two_processes(peer):
    fail(FAILURES - 1)

    assert peer.call("failure") == ["open"]  # the peer's failure is the last one of the count

    assert state() == BreakerState.OPEN
    assert not any(allow_many(5))
    wait_for_half_open()
    assert peer.call("allow") == [True]  # the peer takes the probe ...
    assert not any(allow_many(20))  # ... so this process gets none
    assert peer.call("success") == [None]
    assert state() == BreakerState.CLOSED
    assert all(allow_many(5))


def test_exactly_one_probe_across_two_processes(peer):
    fail(FAILURES)
    wait_for_half_open()

    peer.send("allow", times=100)  # the peer's 100 callers race this process's 100
    here = allow_many(100)
    there = peer.results()

    assert here.count(True) + there.count(True) == 1


# --- Redis unreachable -----------------------------------------------------------------------------------------


@pytest.fixture
def redis_unreachable(settings, tmp_path):
    settings.GATEWAY_REDIS_URL = f"unix://{tmp_path}/none.sock"
    yield
    breaker._outage.down = False


def test_without_redis_every_call_is_allowed_and_the_outage_logged_once(redis_unreachable, caplog):
    assert all(allow_many(5))
    assert fail(FAILURES + 2) == [BreakerState.CLOSED] * (FAILURES + 2)
    run(breaker_success(UPSTREAM))
    assert state() == BreakerState.CLOSED
    assert all(allow_many(5))

    errors = [r for r in caplog.records if r.name == "gateway.redis" and r.levelno >= logging.ERROR]
    assert len(errors) == 1


def test_the_breaker_works_again_when_redis_answers(settings, tmp_path, caplog):
    reachable = settings.GATEWAY_REDIS_URL
    settings.GATEWAY_REDIS_URL = f"unix://{tmp_path}/none.sock"
    assert fail(FAILURES) == [BreakerState.CLOSED] * FAILURES  # not recorded anywhere

    settings.GATEWAY_REDIS_URL = reachable

    assert state() == BreakerState.CLOSED
    assert fail(FAILURES)[-1] == BreakerState.OPEN
    assert [r.levelname for r in caplog.records if r.name == "gateway.redis"] == ["ERROR", "WARNING"]
