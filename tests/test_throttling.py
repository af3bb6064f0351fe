"""Rate limits: standard 429 body with Retry-After, per-organization overrides, and a limit that
holds across processes because its state lives in Redis."""

import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal

import pytest

from accounts.models import Organization
from payments import ledger
from tests.factories import service_with_price


@pytest.fixture(autouse=True)
def _one_window(monkeypatch):
    monkeypatch.setattr("billing_site.api.throttling.clock", lambda: 1_800_000_030.0)


def test_requests_over_the_organization_limit_get_429_with_retry_after(organization, live_client):
    Organization.objects.filter(pk=organization.pk).update(requests_per_minute=3)
    statuses = [live_client.get("/api/v1/balance/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = live_client.get("/api/v1/balance/")
    assert refused.json()["error"]["code"] == "throttled"
    assert set(refused.json()["error"]) == {"code", "message", "details"}
    assert 1 <= int(refused["Retry-After"]) <= 61


def test_batch_events_count_against_their_own_limit(organization, live_client):
    service_with_price(slug="ping", calc_method="REQUEST", unit_price="0.001")
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(1), reason="t", created_by_id=None)
    Organization.objects.filter(pk=organization.pk).update(batch_events_per_minute=5)
    events = [{"service": "ping", "idempotency_key": f"e{i}"} for i in range(3)]
    assert live_client.post("/api/v1/usage/batch/", {"events": events}, format="json").status_code == 200
    more = [{"service": "ping", "idempotency_key": f"f{i}"} for i in range(3)]
    refused = live_client.post("/api/v1/usage/batch/", {"events": more}, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"


def test_anonymous_endpoints_are_limited_per_address(api_client, settings):
    settings.THROTTLE_ANONYMOUS_PER_MINUTE = 2
    statuses = [
        api_client.post("/api/v1/auth/token/", {"email": "x@example.com", "password": "nope"}, format="json").status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]


HITS = textwrap.dedent(
    """
    import os, sys, django
    os.environ["DJANGO_SETTINGS_MODULE"] = "billing_site.settings_test"
    django.setup()
    from billing_site.api.throttling import window_hit
    allowed = sum(window_hit(scope="proof", ident=sys.argv[1], cost=1, limit=25, now=1_800_000_030.0)[0] for _ in range(20))
    print(allowed)
    """
)


@pytest.mark.slow
def test_limit_holds_across_two_processes(db):
    ident = uuid.uuid4().hex
    workers = [subprocess.Popen([sys.executable, "-c", HITS, ident], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    allowed = [int(worker.communicate(timeout=60)[0].strip()) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert sum(allowed) == 25  # 40 attempts, one shared budget of 25
