"""GET balance/ and GET ledger/ (docs/contract.md §3)."""

from decimal import Decimal

import pytest

from payments import ledger
from payments.models import Wallet
from tests.conftest import jwt_client
from tests.metering.helpers import HOLDS, ping
from tests.payments.helpers import assert_error

BALANCE = "/api/v1/balance/"
LEDGER = "/api/v1/ledger/"


def test_balance_shows_every_figure_as_a_string(funded, live_client):
    Wallet.objects.filter(organization_id=funded.pk).update(credit_limit=Decimal("5"), low_balance_threshold=Decimal("2.5"))
    ping(live_client, "p")
    live_client.post(HOLDS, {"service": "ping", "idempotency_key": "h", "amount": "1.25"}, format="json")

    response = live_client.get(BALANCE)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "organization": funded.slug,
        "currency": "USD",
        "balance": "9.999000000000",
        "available": "8.749000000000",
        "held": "1.250000000000",
        "credit_limit": "5.000000000000",
        "low_balance_threshold": "2.500000000000",
    }


@pytest.mark.parametrize("who", ["owner", "member", "org_admin"])
def test_every_member_sees_the_balance(funded, request, who):
    client = jwt_client(request.getfixturevalue(who))

    assert client.get(BALANCE).json()["balance"] == "10.000000000000"


def test_balance_requires_authentication(api_client):
    assert api_client.get(BALANCE).status_code == 401


def test_ledger_lists_the_wallets_entries_newest_first(funded, live_client, owner_client):
    ping(live_client, "p1")
    ping(live_client, "p2")

    response = owner_client.get(LEDGER)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 3
    assert [(e["kind"], e["reference"], e["amount"], e["balance_after"]) for e in body["results"]] == [
        ("usage", "usage:p2", "-0.001000000000", "9.998000000000"),
        ("usage", "usage:p1", "-0.001000000000", "9.999000000000"),
        ("adjustment", "staff", "10.000000000000", "10.000000000000"),
    ]
    assert body["results"][2]["memo"] == "test funding"
    assert {"id", "transfer_id", "created_at"} <= set(body["results"][0])


def test_ledger_paginates(funded, owner_client):
    for n in range(4):
        ledger.wallet_adjust(organization_id=funded.pk, amount=Decimal(n + 1), reason=f"r{n}", created_by_id=None)

    first = owner_client.get(f"{LEDGER}?page_size=2").json()
    second = owner_client.get(first["next"]).json()

    assert first["count"] == 5
    assert [e["memo"] for e in first["results"] + second["results"]] == ["r3", "r2", "r1", "r0"]


def test_ledger_is_for_owners_and_admins(funded, org_admin, member, live_client):
    assert jwt_client(org_admin).get(LEDGER).status_code == 200
    assert_error(jwt_client(member).get(LEDGER), 403, "permission_denied")
    assert_error(live_client.get(LEDGER), 403, "permission_denied")


def test_ledger_requires_authentication(api_client):
    assert api_client.get(LEDGER).status_code == 401
