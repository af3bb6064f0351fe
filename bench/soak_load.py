"""The soak's load generator: a fixed arrival rate (open loop), and the per-minute bucketing of what it saw.

Open loop, as wrk2 does it: request i is *due* at start + i / rate whatever happened to the ones before,
and its latency is measured from when it was due, not from when a free client got round to sending it.
A closed loop (each client sends its next request when the last one answers, as wrk does) slows down
exactly when the server does, so a stall shows as a few slow requests instead of the queue it really
causes (coordinated omission). Here a scheduler thread hands due jobs to a pool of sender threads; a
job that waits for a free sender, or a scheduler that wakes late, is charged to the request's latency.

A job still unsent `max_lag` seconds after it was due is dropped and counted as an error ("not sent"):
the server has fallen that far behind, and sending it anyway would only stretch the run without end.

A job may answer follow-ups (a hold's capture after a while, a recharge's webhook): they are scheduled
at their own due time, on the same clock, and measured the same way.
"""

from __future__ import annotations

import heapq
import itertools
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.run import percentile

NOT_SENT = "not sent"


@dataclass(frozen=True)
class Job:
    due: float  # seconds since the soak's start (monotonic clock) at which the request is due
    kind: str
    payload: Any = None


@dataclass
class Outcome:
    """What a handler answers: whether the request met its expectation, and what to do next."""

    ok: bool
    status: int | None = None
    error: str = ""
    follow_ups: list[Job] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    kind: str
    due: float
    started: float
    finished: float
    ok: bool
    status: int | None
    error: str

    @property
    def latency(self) -> float:
        """From due to answered: includes any wait for a free sender (open-loop latency)."""
        return self.finished - self.due

    @property
    def service(self) -> float:
        """From sent to answered: the server's time, including its own queue."""
        return self.finished - self.started

    @property
    def lag(self) -> float:
        """From due to sent: how late the generator itself was."""
        return self.started - self.due


def arrivals(*, rate: float, start: float, end: float, mix: dict[str, float], rng: random.Random) -> Iterator[Job]:
    """Jobs evenly spaced at `rate` per second over [start, end), each of a kind drawn by `mix`'s weights."""
    kinds, weights = list(mix), list(mix.values())
    interval = 1.0 / rate
    for i in itertools.count():
        due = start + i * interval
        if due >= end:
            return
        yield Job(due=due, kind=rng.choices(kinds, weights)[0])


def arrival_rate(*, request_rate: float, mix: dict[str, float], requests_per_arrival: dict[str, float]) -> float:
    """The arrival rate that makes `request_rate` requests per second once follow-ups are counted."""
    total = sum(mix.values())
    per_arrival = sum(weight / total * requests_per_arrival.get(kind, 1) for kind, weight in mix.items())
    return request_rate / per_arrival


class OpenLoop:
    """Run `plan` (jobs in due order) plus the follow-ups the handlers answer, each at its due time."""

    def __init__(
        self, *, handlers: dict[str, Callable[[Job], Outcome]], senders: int, clock: Callable[[], float], max_lag: float = 30.0
    ):
        self.handlers = handlers
        self.senders = senders
        self.clock = clock  # seconds since the soak's start
        self.max_lag = max_lag
        self.samples: list[Sample] = []
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._work: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # jobs scheduled or running; the run ends when the plan is spent and this is 0
        self.max_in_flight = 0

    def _push(self, job: Job) -> None:
        with self._wake:
            heapq.heappush(self._heap, (job.due, next(self._seq), job))
            self._pending += 1
            self._wake.notify()

    def _sender(self) -> None:
        while (job := self._work.get()) is not None:
            started = self.clock()
            try:
                if started - job.due > self.max_lag:
                    outcome = Outcome(ok=False, error=f"{NOT_SENT}: {started - job.due:.0f} s late (the server fell behind)")
                else:
                    outcome = self.handlers[job.kind](job)
            except Exception as exc:  # noqa: BLE001 - every failure is a sample, never a dead sender
                outcome = Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            finished = self.clock()
            self.samples.append(Sample(job.kind, job.due, started, finished, outcome.ok, outcome.status, outcome.error))
            for follow_up in outcome.follow_ups:
                self._push(follow_up)
            with self._wake:
                self._pending -= 1
                self._wake.notify()

    def run(self, plan: Iterator[Job]) -> None:
        threads = [threading.Thread(target=self._sender, name=f"soak-sender-{i}", daemon=True) for i in range(self.senders)]
        for thread in threads:
            thread.start()
        upcoming = next(plan, None)
        try:
            while True:
                with self._wake:
                    if upcoming is None and self._pending == 0:
                        break
                    heap_due = self._heap[0][0] if self._heap else math.inf
                    due = min(heap_due, upcoming.due if upcoming else math.inf)
                    wait = due - self.clock()
                    if wait > 0:
                        self._wake.wait(timeout=min(wait, 0.5) if due != math.inf else 0.5)
                        continue
                    if upcoming is not None and upcoming.due <= heap_due:
                        job, upcoming = upcoming, next(plan, None)
                        self._pending += 1
                    else:
                        job = heapq.heappop(self._heap)[2]
                    in_flight = self._pending - len(self._heap)
                self.max_in_flight = max(self.max_in_flight, in_flight)
                self._work.put(job)
        finally:
            for _ in threads:
                self._work.put(None)
            for thread in threads:
                thread.join(timeout=120)


# --- per-minute buckets --------------------------------------------------------------------------------


def bucket_of(due: float, *, warmup: float, minutes: int, minute: float = 60.0) -> int:
    """-1 for the warm-up, then 0 … minutes - 1 by when a request was due; the follow-ups due after the
    last minute (a capture, a webhook) count in the last one."""
    return -1 if due < warmup else min(int((due - warmup) // minute), minutes - 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summarize_kind(samples: list[Sample]) -> dict[str, Any]:
    latencies = sorted(s.latency for s in samples)
    lags = sorted(s.lag for s in samples)
    services = sorted(s.service for s in samples)
    errors = [s for s in samples if not s.ok]
    return {
        "requests": len(samples),
        "errors": len(errors),
        "not_sent": sum(1 for s in errors if s.error.startswith(NOT_SENT)),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "service_p50_ms": _ms(percentile(services, 50)),
        "send_lag_p99_ms": _ms(percentile(lags, 99)),
        "first_errors": sorted({f"{s.status}: {s.error}"[:200] for s in errors})[:5],
    }


def by_minute(samples: list[Sample], *, warmup: float, minutes: int, minute: float = 60.0) -> list[dict[str, Any]]:
    """One row per bucket (warm-up first), each with its totals and a summary per kind."""
    buckets: dict[int, list[Sample]] = {}
    for sample in samples:
        buckets.setdefault(bucket_of(sample.due, warmup=warmup, minutes=minutes, minute=minute), []).append(sample)
    rows = []
    for index in sorted(buckets):
        bucket = buckets[index]
        kinds: dict[str, list[Sample]] = {}
        for sample in bucket:
            kinds.setdefault(sample.kind, []).append(sample)
        total = summarize_kind(bucket)
        rows.append(
            {
                "minute": "warm-up" if index < 0 else index + 1,
                **total,
                "kinds": {k: summarize_kind(v) for k, v in sorted(kinds.items())},
            }
        )
    return rows


def clock_from(origin: float) -> Callable[[], float]:
    return lambda: time.monotonic() - origin
