"""Cross-tenant access answers 404 or shows only the caller's own data (docs/contract.md §3), one test per endpoint."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from metering.models import Hold, HoldStatus, UsageRecord
from tests.conftest import jwt_client
from tests.factories import wallet_fund
from tests.metering.helpers import BATCH, HOLDS, USAGE, ping
from tests.payments.helpers import assert_error, wallet_of


@pytest.fixture
def acme(funded, live_client):
    """Acme (the `organization`) has usage, an active hold and ledger entries."""
    ping(live_client, "acme-1")
    hold = live_client.post(HOLDS, {"service": "ping", "idempotency_key": "acme-h", "amount": "1"}, format="json").json()
    return {"organization": funded, "hold_id": hold["id"]}


@pytest.fixture
def globex(other_organization, catalogue, other_client):
    """Globex has its own funded wallet and one usage record."""
    wallet_fund(other_organization, "3")
    ping(other_client, "globex-1")
    return other_organization


@pytest.fixture
def globex_owner_client(globex, other_owner):
    return jwt_client(other_owner)


def untouched(acme) -> tuple:
    wallet = wallet_of(acme["organization"])
    return wallet.balance, wallet.held, Hold.objects.get(pk=acme["hold_id"]).status, UsageRecord.objects.count()


@pytest.mark.parametrize("client_name", ["other_client", "globex_owner_client"])
def test_capturing_another_tenants_hold_is_404(acme, globex, request, client_name):
    client = request.getfixturevalue(client_name)
    before = untouched(acme)

    response = client.post(f"{HOLDS}{acme['hold_id']}/capture/", {}, format="json")

    assert_error(response, 404, "not_found")
    assert untouched(acme) == before
    assert Hold.objects.get(pk=acme["hold_id"]).status == HoldStatus.ACTIVE


@pytest.mark.parametrize("client_name", ["other_client", "globex_owner_client"])
def test_releasing_another_tenants_hold_is_404(acme, globex, request, client_name):
    client = request.getfixturevalue(client_name)
    before = untouched(acme)

    assert_error(client.post(f"{HOLDS}{acme['hold_id']}/release/", format="json"), 404, "not_found")
    assert untouched(acme) == before


def test_usage_list_shows_only_own_records(acme, globex, other_client, globex_owner_client, live_key):
    for client in (other_client, globex_owner_client):
        keys = [r["idempotency_key"] for r in client.get(USAGE).json()["results"]]
        assert keys == ["globex-1"]
        assert client.get(f"{USAGE}?api_key={live_key.api_key.pk}").json()["results"] == []


def test_usage_summary_shows_only_own_usage(acme, globex, other_client):
    today = datetime.now(UTC).date().isoformat()

    rows = other_client.get(f"/api/v1/usage/summary/?group_by=service&from={today}&to={today}").json()["rows"]

    assert [(r["service"], r["events"]) for r in rows] == [("ping", 1)]


def test_usage_export_shows_only_own_records(acme, globex, globex_owner_client):
    response = globex_owner_client.get("/api/v1/usage/export.csv")

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith(',"globex-1"')


def test_balance_shows_only_own_wallet(acme, globex, other_client, globex_owner_client):
    for client in (other_client, globex_owner_client):
        body = client.get("/api/v1/balance/").json()
        assert (body["organization"], body["balance"], body["held"]) == (globex.slug, "2.999000000000", "0.000000000000")


def test_ledger_shows_only_own_entries(acme, globex, globex_owner_client):
    references = [e["reference"] for e in globex_owner_client.get("/api/v1/ledger/").json()["results"]]

    assert references == ["usage:globex-1", "staff"]


def test_a_key_of_another_tenant_never_reaches_its_records(acme, globex, other_key, organization):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=other_key.secret, HTTP_X_ORGANIZATION=organization.slug)

    assert [r["idempotency_key"] for r in client.get(USAGE).json()["results"]] == ["globex-1"]
    assert client.get("/api/v1/balance/").json()["organization"] == globex.slug
    replay_of_acme_key = ping(client, "acme-1")
    assert replay_of_acme_key.status_code == 201  # a new event of Globex, not Acme's record
    assert replay_of_acme_key.json()["id"] != UsageRecord.objects.get(organization=organization, idempotency_key="acme-1").pk


def test_a_person_cannot_name_another_tenant(acme, globex, globex_owner_client, organization):
    response = globex_owner_client.get(USAGE, HTTP_X_ORGANIZATION=organization.slug)

    assert_error(response, 404, "not_found")


def test_batch_keys_are_scoped_to_the_tenant(acme, globex, other_client):
    results = other_client.post(BATCH, {"events": [{"service": "ping", "idempotency_key": "acme-1"}]}, format="json").json()

    assert results["results"][0]["status"] == 201
    assert wallet_of(globex).balance == Decimal("2.998")
    assert wallet_of(acme["organization"]).balance == Decimal("9.999")
