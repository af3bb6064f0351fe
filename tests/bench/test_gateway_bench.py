"""The gateway case's plumbing (bench/gateway.py, bench/gateway_profile.py), not its timings: its setup through the
services, the fake upstream as a process, streams through the real gateway counted and checked as charged, the
in-process profile's phases, and the summary's arithmetic and verdicts. The case itself runs with `make bench`."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from accounts.models import User
from bench import gateway as gateway_case
from bench import gateway_profile
from bench.fixtures import OWNER_EMAIL
from bench.run import parse_args
from metering.models import Hold
from tests.gateway.gateway_server import GatewayServer

pytestmark = pytest.mark.django_db(transaction=True)

CHUNKS = 5


@pytest.fixture
def fakes(tmp_path):
    fast = gateway_case.FakeUpstreamProcess(log_path=tmp_path / "fast.log").start()
    slow = gateway_case.FakeUpstreamProcess(log_path=tmp_path / "slow.log", chunk_delay=0.02, chunks=CHUNKS).start()
    yield fast, slow
    fast.stop()
    slow.stop()
    assert fast.process.poll() is not None and slow.process.poll() is not None


@pytest.fixture
def gateway_data(fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(gateway_case, "RESULTS_DIR", tmp_path)  # key files stay out of the repository
    User.objects.create_user(email=OWNER_EMAIL, password=None)
    fast, slow = fakes
    return gateway_case.ensure_gateway(fast_url=fast.url, slow_url=slow.url)


@pytest.fixture
def gateway_server():
    server = GatewayServer().start()
    yield server
    server.stop()


def _in_thread(coroutine):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


def test_setup_is_idempotent_and_points_the_upstreams_at_this_runs_fakes(gateway_data, fakes, tmp_path):
    from gateway.models import Upstream

    fast, slow = fakes
    again = gateway_case.ensure_gateway(fast_url=fast.url, slow_url=slow.url)

    assert (again.secret, again.limited_secret) == (gateway_data.secret, gateway_data.limited_secret)
    assert Upstream.objects.get(name=gateway_case.FAST_UPSTREAM).base_url == fast.url + "/v1"
    assert Upstream.objects.get(name=gateway_case.SLOW_UPSTREAM).base_url == slow.url + "/v1"
    assert (tmp_path / ".wrk-keys-gateway.txt").read_text() == gateway_data.secret + "\n"


def test_streams_through_the_gateway_are_timed_and_found_charged_exactly(gateway_data, gateway_server):
    body = gateway_case.chat_body(model=gateway_case.SLOW_MODEL, stream=True, max_tokens=CHUNKS)

    async def three_streams():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    gateway_case.stream_once(
                        client, url=gateway_server.base_url + "/chat/completions", secret=gateway_data.secret, body=body
                    )
                    for _ in range(3)
                )
            )

    results = _in_thread(three_streams())

    assert [(r.status, r.done, r.error) for r in results] == [(200, True, "")] * 3
    assert all(r.ttfb is not None and r.seconds >= r.ttfb for r in results)
    charged = gateway_case.streams_charged(
        organization_id=gateway_data.organization_id, results=results, body=body, output_tokens=CHUNKS
    )
    assert charged["ok"], charged
    assert charged["records_exact"] == charged["holds_captured"] == 3
    assert Decimal(charged["expected"]["cost"]) > 0
    # The check can fail: other token counts than the fake wrote are not what was charged.
    assert not gateway_case.streams_charged(
        organization_id=gateway_data.organization_id, results=results, body=body, output_tokens=CHUNKS - 1
    )["ok"]
    assert gateway_case.holds_check(organization_id=gateway_data.organization_id, since=_epoch())["ok"]


def test_a_hold_left_active_fails_the_holds_check(gateway_data):
    from accounts.models import ApiKey
    from accounts.tenancy import Tenant
    from gateway.billing import call_hold

    api_key = ApiKey.objects.get(organization_id=gateway_data.organization_id, rpm_limit__isnull=True)
    tenant = Tenant(organization=api_key.organization, user=None, api_key=api_key, role=None)
    hold = call_hold(
        tenant=tenant,
        service=gateway_case.SERVICE_SLUG,
        request_id="left-active",
        maxima={"input_tokens": 10, "output_tokens": 10},
        param=None,
    )

    check = gateway_case.holds_check(organization_id=gateway_data.organization_id, since=_epoch())

    assert not check["ok"]
    assert check["active_holds"] == check["active_holds_this_run"] == 1
    assert Decimal(check["wallet_held"]) == Decimal(check["active_amount"]) == Hold.objects.get(pk=hold.pk).amount


def test_the_profile_times_every_phase_of_a_call_in_process(gateway_data, fakes, tmp_path):
    fast, _ = fakes
    with ThreadPoolExecutor(max_workers=1) as pool:
        profile = pool.submit(
            gateway_profile.profile_gateway, data=gateway_data, fake_url=fast.url, requests=3, out_prefix=tmp_path / "p"
        ).result(timeout=120)

    for variant in ("no key limits", "RPM and TPM limits"):
        result = profile[variant]
        assert result["statuses"] == result["profiled_statuses"] == {200: 3}
        for phase in ("admission (key, route, plan), awaited", "hold, in the thread", "capture, in the thread"):
            assert result["phases_ms"][phase] > 0
        assert {s["phase"] for s in result["statements"]} >= {"hold", "capture"}
        assert result["redis_commands_per_call"].get("evalsha", 0) >= 2  # the breaker and the upstream slot
        assert result["top_own"] and result["threads_profiled"] > 0
        assert 0 < result["entry_points_cumulative_share"]["the capture in its thread (metering)"] < 1
    assert "key limits: admit (Redis)" in profile["RPM and TPM limits"]["phases_ms"]
    assert (tmp_path / "p-no-key-limits.prof").exists()


def _epoch():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


def _cell(path, clients, p50, p99, throughput, errors=0):
    return {
        "path": path,
        "clients": clients,
        "p50_ms": p50,
        "p99_ms": p99,
        "throughput": throughput,
        "errors": errors,
        "attempts": 1000,
        "cpu_cores": {"gateway": 0.5, "upstream": 0.2},
    }


def test_summary_and_aims_compare_each_client_count_with_its_direct_cells():
    args = parse_args(["--cases", "gateway", "--quick"])
    cells = [
        _cell("direct", 1, 1.0, 2.0, 900.0),
        _cell("gateway", 1, 3.5, 6.0, 250.0),
        _cell("direct", 16, 2.0, 5.0, 4000.0),
        _cell("gateway", 16, 40.0, 90.0, 400.0, errors=50),
    ]
    rows = gateway_case.summarize(cells, [1, 16, 64])

    assert [row["clients"] for row in rows] == [1, 16, 64]
    assert rows[0]["added_p50_ms"] == 2.5 and rows[0]["added_p99_ms"] == 4.0
    assert rows[0]["throughput_ratio"] == pytest.approx(250 / 900)
    assert rows[0]["gateway_cpu_ms_per_call"] == 2.0  # 0.5 cores at 250 calls/s
    assert "added_p50_ms" not in rows[2]
    streams = {
        "usage_ratio": 1.6,
        "usage_during": {"errors": 0, "attempts": 100},
        "open_throughout_window": 200,
        "completed": 200,
        "charged": {"ok": True, "records_exact": 200},
    }
    verdicts = {aim["aim"]: aim for aim in gateway_case.aims({"rows": rows, "streams": streams}, args)}

    added, usage, charged = verdicts.values()
    assert (added["ok"], added["text"]) == (True, "+2.50 ms")
    assert usage["ok"] is False  # 1.6x > 1.5x
    assert charged["ok"] is True
    assert gateway_case.aims({"rows": [], "streams": {}}, args)[0]["ok"] is None


def test_arguments_default_per_mode_and_refuse_streams_shorter_than_the_cell_beside_them():
    quick = parse_args(["--cases", "gateway", "--quick"])
    full = parse_args(["--cases", "gateway"])

    assert (quick.stream_seconds, quick.ttfb_rounds, quick.gateway_profile_requests) == (10.0, 2, 100)
    assert (full.stream_seconds, full.ttfb_rounds, full.streams, full.ttfb_streams) == (25.0, 5, 200, [1, 16])
    with pytest.raises(SystemExit):
        parse_args(["--cases", "gateway", "--stream-seconds", "5"])
