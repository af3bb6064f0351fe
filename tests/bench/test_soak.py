"""The soak's own logic (bench/soak*.py): the open-loop scheduling, the per-minute buckets and percentiles, the
sandbox signer, the memory verdict and the money checks. The soak itself runs with `make soak`, not here."""

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from bench import soak_memory, soak_setup
from bench.soak_load import Job, OpenLoop, Outcome, Sample, arrival_rate, arrivals, bucket_of, by_minute, clock_from
from bench.soak_traffic import sandbox_signature
from payments.providers import sandbox
from payments.providers.base import WebhookRefused
from tests.payments.payment_helpers import sandbox_payment, settled_sandbox_payment

MIB = soak_memory.MIB


# --- buckets and percentiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "bucket"),
    [(0.0, -1), (14.999, -1), (15.0, 0), (74.999, 0), (75.0, 1), (194.9, 2), (195.0, 2), (400.0, 2)],
)
def test_bucket_of_puts_the_warm_up_apart_and_late_follow_ups_in_the_last_minute(due, bucket):
    assert bucket_of(due, warmup=15.0, minutes=3) == bucket


def _sample(kind: str, due: float, latency_ms: float, *, ok: bool = True) -> Sample:
    return Sample(kind=kind, due=due, started=due, finished=due + latency_ms / 1000, ok=ok, status=201 if ok else 402, error="")


def test_by_minute_reports_nearest_rank_percentiles_and_errors_per_kind():
    samples = [_sample("usage", 10.0 + i * 0.1, latency_ms=i) for i in range(1, 101)]  # minute 1: 1 … 100 ms
    samples += [_sample("balance", 70.0, latency_ms=7.0), _sample("balance", 71.0, latency_ms=9.0, ok=False)]  # minute 2
    samples += [_sample("usage", 2.0, latency_ms=500.0)]  # warm-up

    rows = by_minute(samples, warmup=5.0, minutes=2)

    assert [row["minute"] for row in rows] == ["warm-up", 1, 2]
    warmup, first, second = rows
    assert warmup["requests"] == 1 and warmup["kinds"]["usage"]["p50_ms"] == 500.0
    assert (first["kinds"]["usage"]["p50_ms"], first["kinds"]["usage"]["p99_ms"], first["kinds"]["usage"]["max_ms"]) == (
        50.0,
        99.0,
        100.0,
    )
    assert first["errors"] == 0 and first["requests"] == 100
    assert second["kinds"]["balance"]["requests"] == 2
    assert second["errors"] == second["kinds"]["balance"]["errors"] == 1
    assert second["not_sent"] == 0
    assert second["kinds"]["balance"]["p50_ms"] == 7.0 and second["kinds"]["balance"]["p99_ms"] == 9.0


# --- the arrival schedule ---------------------------------------------------------------------------------


def test_arrival_rate_counts_the_follow_ups_of_each_kind():
    # Half the arrivals are holds, each answered by a capture or release: 1.5 requests per arrival.
    assert arrival_rate(request_rate=150.0, mix={"usage": 1, "hold": 1}, requests_per_arrival={"hold": 2}) == 100.0


def test_arrivals_are_evenly_spaced_whatever_the_kind():
    import random

    jobs = list(arrivals(rate=10.0, start=5.0, end=6.0, mix={"a": 1, "b": 3}, rng=random.Random(1)))

    assert [round(j.due, 6) for j in jobs] == [round(5.0 + i / 10, 6) for i in range(10)]
    assert {j.kind for j in jobs} <= {"a", "b"}


def test_latency_is_measured_from_the_due_time_not_from_the_send():
    """One sender, three jobs due together, each taking 50 ms: the third waits for the first two, and the open
    loop charges that wait to it (a closed loop would report 50 ms for all three)."""

    def slow(job: Job) -> Outcome:
        time.sleep(0.05)
        return Outcome(ok=True, status=200)

    loop = OpenLoop(handlers={"slow": slow}, senders=1, clock=clock_from(time.monotonic()))
    loop.run(iter([Job(due=0.0, kind="slow"), Job(due=0.0, kind="slow"), Job(due=0.0, kind="slow")]))

    latencies = sorted(s.latency for s in loop.samples)
    assert len(latencies) == 3
    assert latencies[2] >= 0.15
    assert all(s.service >= 0.05 for s in loop.samples)
    assert latencies[2] - max(s.service for s in loop.samples) >= 0.1 - 0.01


def test_follow_ups_run_and_a_job_left_waiting_past_the_lag_limit_is_an_error_not_a_request():
    sent: list[str] = []
    gate = threading.Event()

    def first(job: Job) -> Outcome:
        sent.append(job.kind)
        gate.wait(timeout=5)
        return Outcome(ok=True, status=201, follow_ups=[Job(due=job.due, kind="follow")])

    def record(job: Job) -> Outcome:
        sent.append(job.kind)
        return Outcome(ok=True, status=200)

    loop = OpenLoop(
        handlers={"first": first, "late": record, "follow": record}, senders=1, clock=clock_from(time.monotonic()), max_lag=0.1
    )
    threading.Timer(0.3, gate.set).start()
    loop.run(iter([Job(due=0.0, kind="first"), Job(due=0.0, kind="late")]))

    by_kind = {s.kind: s for s in loop.samples}
    assert sent == ["first"]  # "late" waited 0.3 s for the only sender: dropped; so was the follow-up, due at 0
    assert not by_kind["late"].ok and by_kind["late"].error.startswith("not sent")
    assert not by_kind["follow"].ok
    assert by_kind["first"].ok


def test_a_handler_that_raises_is_an_error_sample():
    def broken(job: Job) -> Outcome:
        raise ConnectionResetError("peer closed")

    loop = OpenLoop(handlers={"x": broken}, senders=2, clock=clock_from(time.monotonic()))
    loop.run(iter([Job(due=0.0, kind="x")]))

    assert [(s.ok, s.error) for s in loop.samples] == [(False, "ConnectionResetError: peer closed")]


# --- the sandbox signer ------------------------------------------------------------------------------------


def test_the_signer_matches_a_known_vector():
    signature = sandbox_signature(b'{"id":"evt_1"}', secret="whsec_test", timestamp=1700000000)

    assert signature == "t=1700000000,v1=c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925"


def test_the_app_accepts_the_soak_signature_and_refuses_it_on_another_body():
    body = b'{"id":"evt_2","type":"payment.succeeded"}'
    signature = sandbox_signature(body, secret="s3cret", timestamp=int(time.time()))

    sandbox.verify(body, signature, secret="s3cret")
    with pytest.raises(WebhookRefused):
        sandbox.verify(body + b" ", signature, secret="s3cret")


# --- the memory verdict ------------------------------------------------------------------------------------


def _proc(pid: int, role: str, anon_mib: float) -> dict:
    anon = round(anon_mib * MIB)
    return {"pid": pid, "created": 1.0, "role": role, "rss": anon + 10 * MIB, "pss": anon, "anon": anon}


def test_memory_is_flat_below_ten_percent_or_two_mib():
    start = [_proc(1, "gunicorn worker", 100), _proc(2, "redis", 3), _proc(3, "celery worker", 100)]
    end = [_proc(1, "gunicorn worker", 109.9), _proc(2, "redis", 4.9), _proc(3, "celery worker", 100)]

    assert soak_memory.verdict(start, end)["ok"]


@pytest.mark.parametrize(
    ("end", "failure"),
    [
        ([_proc(1, "gunicorn worker", 110), _proc(2, "redis", 3)], "gunicorn worker 1: anonymous RSS"),
        ([_proc(1, "gunicorn worker", 100), _proc(2, "redis", 5)], "redis 2: anonymous RSS"),
        ([_proc(2, "redis", 3), _proc(9, "gunicorn worker", 100)], "gunicorn worker 1 is gone"),
    ],
)
def test_memory_growth_or_a_replaced_worker_fails(end, failure):
    start = [_proc(1, "gunicorn worker", 100), _proc(2, "redis", 3)]

    result = soak_memory.verdict(start, end)

    assert not result["ok"]
    assert any(f.startswith(failure) for f in result["failures"]), result["failures"]


def test_the_load_generator_and_postgres_helpers_are_shown_but_not_judged():
    start = [_proc(1, "soak", 50), _proc(2, "postgres worker", 4)]
    end = [_proc(1, "soak", 90)]

    result = soak_memory.verdict(start, end)

    assert result["ok"]
    assert [(r["role"], r["judged"], r["grown"]) for r in result["rows"]] == [("soak", False, None)]


def test_recycled_database_backends_are_judged_by_their_mean():
    start = [_proc(10, "postgres backend", 4), _proc(11, "postgres backend", 4)]
    replaced = [_proc(20, "postgres backend", 4.5), _proc(21, "postgres backend", 4)]
    bloated = [_proc(20, "postgres backend", 9), _proc(21, "postgres backend", 9)]

    assert soak_memory.verdict(start, replaced)["ok"]
    assert not soak_memory.verdict(start, bloated)["ok"]


# --- the money checks can fail ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_payment_check_flags_a_recharge_that_was_never_credited(organization):
    since = timezone.now()
    settled = settled_sandbox_payment(organization, "12.34")
    pending = sandbox_payment(organization, "5.00")
    expected = {settled.pk: ("succeeded", Decimal("12.34"))}

    clean = soak_setup.check_payments(organization_ids=[organization.pk], expected=expected, unnotified=set(), since=since)
    assert [c["violations"] for c in clean] == [0, 0, 1]  # the pending one is left over
    explained = soak_setup.check_payments(
        organization_ids=[organization.pk], expected=expected, unnotified={pending.pk}, since=since
    )
    assert [c["violations"] for c in explained] == [0, 0, 0]  # … unless the soak never sent its notification

    expected[pending.pk] = ("succeeded", Decimal("5.00"))
    flagged = soak_setup.check_payments(organization_ids=[organization.pk], expected=expected, unnotified=set(), since=since)
    assert [c["violations"] for c in flagged] == [1, 1, 1]
    assert flagged[0]["sample"] == flagged[1]["sample"] == [pending.pk]


@pytest.mark.django_db
def test_hold_check_flags_a_hold_left_active_past_its_expiry_and_one_not_ended_as_asked(funded, live_client):
    since = timezone.now()
    captured = live_client.post("/api/v1/holds/", {"service": "gpt", "idempotency_key": "c", "amount": "1"}, format="json")
    forgotten = live_client.post("/api/v1/holds/", {"service": "gpt", "idempotency_key": "f", "amount": "2"}, format="json")
    assert captured.status_code == forgotten.status_code == 201
    capture = live_client.post(
        f"/api/v1/holds/{captured.json()['id']}/capture/", {"input_tokens": 10, "output_tokens": 5}, format="json"
    )
    assert capture.status_code == 201, capture.content
    after_expiry = timezone.now() + timedelta(days=2)

    checks = soak_setup.check_holds(
        organization_ids=[funded.pk],
        since=since,
        now=after_expiry,
        ended={captured.json()["id"]: "captured", forgotten.json()["id"]: "released"},
    )

    assert [c["violations"] for c in checks] == [1, 1, 0]  # the wallet's held still matches its one active hold
    assert checks[1]["sample"] == [forgotten.json()["id"]]
