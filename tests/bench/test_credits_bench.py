"""The credits case of `make bench` (bench/credits.py) in its smoke size: its setup through the services (three
grants and a hard monthly budget per organization, idempotent), then real cells of POST usage/ through a real
gunicorn on this test database loaded by wrk, each window's money checked (and a budget made to refuse, its
refusals counted); the checks fail on tampered money; the summary's ratio and verdicts. The timings themselves
are `make bench BENCH_ARGS="--cases http,credits"`'s."""

import argparse
import os
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from bench import credits as credits_case
from bench import env as bench_env
from bench import fixtures, web
from bench.run import run_http_cell
from payments.models import Budget, BudgetSpend, CreditGrant

pytestmark = pytest.mark.django_db(transaction=True)

SPREAD = 3
METRICS_TOKEN = "bench-credits-test-token"


@pytest.fixture
def credits(tmp_path, monkeypatch):
    monkeypatch.setattr(fixtures, "RESULTS_DIR", tmp_path)  # key files stay out of the repository
    User.objects.create_user(email=fixtures.OWNER_EMAIL, password=None)
    return credits_case.ensure(spread_count=SPREAD)


@pytest.fixture
def gunicorn(credits, tmp_path, monkeypatch):
    """The app under gunicorn (2 sync workers) on this test database, with a multiprocess metrics directory
    and a metrics token (the probe reads the refusals from /metrics)."""
    monkeypatch.setenv("METRICS_TOKEN", METRICS_TOKEN)
    (tmp_path / "metrics").mkdir()
    app_env = {
        **os.environ,
        **bench_env.THROTTLE_OVERRIDES,
        "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "METRICS_TOKEN": METRICS_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    server = web.Gunicorn(env=app_env, workers=2, config=web.PLAIN_CONFIG, log_path=tmp_path / "gunicorn.log")
    server.start()
    yield server
    server.stop()
    assert server.process is not None and server.process.poll() is not None


def _cell(credits, gunicorn, mode: str, run_id: str) -> dict:
    web.ensure_wrk()  # the smoke run needs wrk like the bench does: missing, it fails here
    args = argparse.Namespace(warmup=1.0, duration=1.0, batch_size=10)
    target = bench_env.Target(description="test", dedicated=False, postmaster_pid=None, database=connection.settings_dict["NAME"])
    probe = credits_case.probe_for(credits=credits, mode=mode, gunicorn=gunicorn)
    return run_http_cell(
        case="credits",
        mode=mode,
        clients=2,
        args=args,
        data=credits.data,
        target=target,
        gunicorn=gunicorn,
        run_id=run_id,
        key_files=credits.key_files,
        probe=probe,
    )


def _grants(org: int) -> list[CreditGrant]:
    return list(CreditGrant.objects.filter(organization_id=org).order_by("priority"))


def test_setup_gives_each_organization_three_grants_and_a_hard_monthly_budget_once(credits):
    orgs = credits.data.organization_ids
    assert len(orgs) == SPREAD + 1

    assert credits_case.grants_ensure(credits.data) == 0  # idempotent
    credits_case.budgets_ensure(credits.data)
    for org in orgs:
        grants = _grants(org)
        assert [g.priority for g in grants] == [10, 20, 30]
        assert all(g.remaining == g.amount and g.category == "promotional" for g in grants)
        assert [g.expires_at is not None for g in grants] == [True, False, False]
        assert timedelta(days=29) < grants[0].expires_at - timezone.now() <= timedelta(days=30)
        (budget,) = Budget.objects.filter(organization_id=org)
        assert (budget.period, budget.mode, budget.api_key_id) == ("month", "hard", None)
        hot = org == credits.data.hot.organization_id
        assert budget.amount == (credits_case.BUDGET_HOT if hot else credits_case.BUDGET_SPREAD)
        assert [g.amount for g in grants] == [spec[2] if hot else spec[3] for spec in credits_case.GRANTS]

    # A grant run low is topped up by a new one at its priority; the old one stays in burn order.
    first = _grants(credits.data.hot.organization_id)[0]
    CreditGrant.objects.filter(pk=first.pk).update(remaining=Decimal("1"))
    assert credits_case.grants_ensure(credits.data) == 1
    assert [g.priority for g in _grants(credits.data.hot.organization_id)] == [10, 10, 20, 30]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hot", "spread"])
def test_a_smoke_cell_draws_every_debit_from_the_first_grant_and_counts_it_against_the_budget(credits, gunicorn, mode):
    before = {org: _grants(org) for org in credits.data.organization_ids}

    cell = _cell(credits, gunicorn, mode, run_id=f"smoke-{mode}")

    window = cell["credits"]
    assert cell["errors"] == 0, cell["error_detail"]
    assert window["ok"], window["checks"]
    assert window["records"] > 0 and window["budget_refused"] == 0 and window["insufficient_balance"] == 0
    assert len(window["checks"]) == 8 and all(check["violations"] == 0 for check in window["checks"])
    # The exact oracle: every event (warm-up and window) cost 1e-6, all of it from each
    # organization's priority-10 grant; the other grants are untouched.
    tenants = [credits.data.hot] if mode == "hot" else credits.data.spread
    total = Fraction(0)
    for tenant in tenants:
        org = tenant.organization_id
        events = connection.cursor()
        events.execute("SELECT count(*) FROM metering_usagerecord WHERE organization_id = %s AND NOT test", [org])
        (count,) = events.fetchone()
        after = _grants(org)
        taken = [Fraction(b.remaining - a.remaining) for b, a in zip(before[org], after, strict=True)]
        assert taken == [count * Fraction(fixtures.UNIT_PRICE), 0, 0]
        spend = BudgetSpend.objects.get(organization_id=org)
        assert Fraction(spend.spent) == count * Fraction(fixtures.UNIT_PRICE)
        total += taken[0]
    assert total >= window["records"] * Fraction(fixtures.UNIT_PRICE)  # the window's, plus its warm-up's


@pytest.mark.slow
def test_a_budget_that_refuses_is_counted_and_never_passed(credits, gunicorn):
    hot = credits.data.hot.organization_id
    allowed = 5
    # The warm-up spends some of the budget; before its window the budget is set to what is spent plus five
    # events, so the window takes exactly five and refuses the rest.
    probe = credits_case.probe_for(credits=credits, mode="hot", gunicorn=gunicorn)
    before_measure = probe.before_measure

    def tight_budget() -> None:
        gunicorn.wait_idle()
        spent = BudgetSpend.objects.get(organization_id=hot).spent
        Budget.objects.filter(organization_id=hot).update(amount=spent + allowed * fixtures.UNIT_PRICE)
        before_measure()

    probe.before_measure = tight_budget
    web.ensure_wrk()
    cell = run_http_cell(
        case="credits",
        mode="hot",
        clients=2,
        args=argparse.Namespace(warmup=1.0, duration=1.0, batch_size=10),
        data=credits.data,
        target=bench_env.Target(description="test", dedicated=False, postmaster_pid=None, database="x"),
        gunicorn=gunicorn,
        run_id="tight",
        key_files=credits.key_files,
        probe=probe,
    )

    window = cell["credits"]
    assert window["ok"], window["checks"]
    assert window["records"] == allowed
    assert window["budget_refused"] > 0
    # wrk does not count the requests still in flight when it stops; the server counted every refusal
    assert window["budget_refused"] >= int(cell["statuses"].get("402", 0)) == cell["errors"] > 0
    spend = BudgetSpend.objects.get(organization_id=hot)
    assert spend.spent == Budget.objects.get(organization_id=hot).amount  # reached exactly, never passed


def test_the_money_checks_fail_on_tampered_money(credits):
    orgs = credits.data.organization_ids
    now = timezone.now()
    since = now - timedelta(minutes=1)
    assert all(check["violations"] == 0 for check in credits_case.money_checks(orgs, since=since, now=now))

    grant = _grants(orgs[0])[1]
    CreditGrant.objects.filter(pk=grant.pk).update(remaining=grant.remaining - Decimal("0.01"))
    budget = Budget.objects.get(organization_id=orgs[1])
    BudgetSpend.objects.create(
        organization_id=orgs[1],
        budget=budget,
        period_start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        spent=Decimal("0.5"),
        amount=budget.amount,
        ceiling=budget.amount,
    )

    violations = {check["name"]: check["violations"] for check in credits_case.money_checks(orgs, since=since, now=now)}
    assert violations["each grant's remaining == amount - sum of its allocations"] == 1
    assert violations["each budget's spend this period == its organization's live usage cost this period"] == 1


def test_summary_gives_the_ratio_at_16_clients_and_a_verdict_on_every_windows_money():
    def cell(case, mode, throughput, ok=True):
        out = {"case": case, "mode": mode, "clients": 16, "throughput": throughput, "statuses": {"201": 10}}
        if case == "credits":
            out["credits"] = {
                "records": 100,
                "cost": "0.0001",
                "budget_refused": 0,
                "ok": ok,
                "checks": [{"name": "x", "violations": 0 if ok else 2}],
            }
        return out

    cells = [
        cell("http", "hot", 200.0),
        cell("credits", "hot", 170.0),
        cell("http", "spread", 100.0),
        cell("credits", "spread", 70.0, ok=False),
    ]
    rows = [
        {
            "case": c["case"],
            "mode": c["mode"],
            "clients": 16,
            "throughput": c["throughput"],
            "throughput_runs": [c["throughput"]],
            "error_rate": 0.0,
            "p50_ms": 10.0,
        }
        for c in cells
    ]

    entries = credits_case.credit_rows(rows, cells)
    verdicts = {aim["aim"]: aim for aim in credits_case.aims(entries, 0.01)}

    assert [(e["mode"], e["ratio"]) for e in entries] == [("hot", pytest.approx(0.85)), ("spread", pytest.approx(0.7))]
    assert verdicts["(2g)/(2) throughput, 16 clients, hot >= 0.8x"]["ok"] is True
    assert verdicts["(2g)/(2) throughput, 16 clients, spread >= 0.8x"]["ok"] is False
    assert verdicts["(2g) money checks, hot, 16 clients"]["ok"] is True
    assert verdicts["(2g) money checks, spread, 16 clients"]["ok"] is False
    assert entries[1]["failed_checks"] == ["x"]
    assert not credits_case.all_ok(cells)
