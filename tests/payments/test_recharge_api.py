"""POST payments/recharge/, GET payments/ and payments/{id}/ (docs/contract.md §3)."""

from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import responses

from payments.models import LedgerEntry, Payment, PaymentStatus, Wallet
from tests.payments.helpers import assert_error, money_state
from tests.payments.payment_helpers import RECHARGE_URL, sandbox_payment

D = Decimal


def recharge(client, amount="25.00", provider="sandbox", *, key: str | None = None, **extra):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(RECHARGE_URL, {"amount": amount, "provider": provider, **extra}, format="json", **headers)


@pytest.mark.parametrize("manager", ["owner", "org_admin"])
def test_recharge_answers_a_pending_payment_with_a_checkout_url(request, organization, manager, settings):
    from tests.conftest import jwt_client

    user = request.getfixturevalue(manager)
    before = money_state(organization)

    response = recharge(jwt_client(user), "25.50")

    assert response.status_code == 201, response.content
    body = response.json()
    payment = Payment.objects.get()
    assert body["id"] == payment.pk
    assert body["status"] == "pending"
    assert body["amount"] == "25.500000000000"
    assert body["currency"] == "USD"
    assert body["provider"] == "sandbox"
    assert body["checkout_url"].startswith(settings.SITE_URL.rstrip("/") + "/sandbox/checkout/")
    assert body["checkout_url"] == payment.checkout_url
    assert (payment.organization_id, payment.amount, payment.currency, payment.status) == (
        organization.pk,
        D("25.5"),
        "USD",
        PaymentStatus.PENDING,
    )
    assert payment.created_by_id == user.pk
    assert payment.provider_reference == f"sbx_{payment.pk}"
    assert payment.livemode is False
    # Starting a recharge moves no money.
    after = money_state(organization)
    assert (after["balance"], after["held"], after["ledger_entries"]) == (
        before["balance"],
        before["held"],
        before["ledger_entries"],
    )


def test_the_checkout_url_opens_the_sandbox_page_for_that_payment(owner_client, organization):
    url = recharge(owner_client, "12.00").json()["checkout_url"]

    page = owner_client.get(urlsplit(url).path)

    assert page.status_code == 200
    assert b"12.00" in page.content


def test_recharge_replay_with_the_same_idempotency_key_answers_the_first_payment(owner_client, organization):
    first = recharge(owner_client, "30.00", key="recharge-1")
    replay = recharge(owner_client, "30.00", key="recharge-1")

    assert first.status_code == 201, first.content
    assert replay.status_code == 200, replay.content
    assert replay.json() == first.json()
    assert Payment.objects.count() == 1
    assert Payment.objects.get().idempotency_key == "recharge-1"


@pytest.mark.parametrize(("amount", "provider"), [("31.00", "sandbox"), ("30.00", "stripe")])
def test_recharge_idempotency_key_with_a_different_body_is_a_conflict(owner_client, organization, amount, provider):
    first = recharge(owner_client, "30.00", key="recharge-1")
    before = money_state(organization)

    conflict = recharge(owner_client, amount, provider, key="recharge-1")

    assert first.status_code == 201
    assert_error(conflict, 409, "idempotency_conflict")
    assert money_state(organization) == before
    assert list(Payment.objects.values_list("amount", "provider")) == [(D("30"), "sandbox")]


def test_the_same_idempotency_key_in_another_organization_is_a_new_payment(
    owner_client, other_owner_client, organization, other_organization
):
    mine = recharge(owner_client, "30.00", key="shared-key")
    theirs = recharge(other_owner_client, "40.00", key="shared-key")

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert Payment.objects.get(pk=theirs.json()["id"]).organization_id == other_organization.pk


@pytest.mark.parametrize("caller", ["member_client", "live_client"])
def test_recharge_is_for_owners_and_admins_only(request, organization, caller):
    before = money_state(organization)

    response = recharge(request.getfixturevalue(caller))

    assert_error(response, 403, "permission_denied")
    assert Payment.objects.count() == 0
    assert money_state(organization) == before


def test_recharge_needs_authentication(api_client, organization):
    assert_error(recharge(api_client), 401, "not_authenticated")
    assert Payment.objects.count() == 0


@pytest.mark.parametrize(
    "amount",
    [
        "-5.00",  # negative
        "0",  # zero
        "0.00",
        "10.001",  # more decimals than USD has
        "10.000000000001",
        "10000.01",  # above RECHARGE_MAX (10000.00)
        "99999999999999",  # huge
        "1" + "0" * 40,  # beyond the field's digits
        "0.99",  # below RECHARGE_MIN (1.00)
        "abc",  # not a number
        "",
        None,
        "NaN",
        "Infinity",
    ],
)
def test_recharge_refuses_invalid_amounts(owner_client, organization, amount):
    before = money_state(organization)

    response = recharge(owner_client, amount)

    error = assert_error(response, 400, "invalid_request")
    assert "amount" in error["details"], error
    assert Payment.objects.count() == 0
    assert money_state(organization) == before


def test_recharge_refuses_a_missing_amount(owner_client, organization):
    response = owner_client.post(RECHARGE_URL, {"provider": "sandbox"}, format="json")

    assert "amount" in assert_error(response, 400, "invalid_request")["details"]
    assert Payment.objects.count() == 0


@pytest.mark.parametrize("amount", ["1.00", "1", "10000.00", "9999.99"])
def test_recharge_accepts_the_bounds(owner_client, organization, amount):
    response = recharge(owner_client, amount)

    assert response.status_code == 201, response.content
    assert Payment.objects.get().amount == D(amount)


def test_recharge_bounds_follow_settings(owner_client, organization, settings):
    settings.RECHARGE_MIN = D("5.00")
    settings.RECHARGE_MAX = D("50.00")

    assert_error(recharge(owner_client, "4.99"), 400, "invalid_request")
    assert_error(recharge(owner_client, "50.01"), 400, "invalid_request")
    assert recharge(owner_client, "50.00").status_code == 201
    assert Payment.objects.count() == 1


@pytest.mark.parametrize(("amount", "status"), [("1000", 201), ("1000.5", 400)])
def test_recharge_decimal_places_follow_the_wallet_currency(owner_client, organization, amount, status):
    Wallet.objects.filter(organization_id=organization.pk).update(currency="JPY")

    response = recharge(owner_client, amount)

    assert response.status_code == status, response.content
    assert Payment.objects.filter(currency="JPY").count() == (1 if status == 201 else 0)


@pytest.mark.parametrize("provider", ["paypal", "", "SANDBOX", "x" * 30])
def test_recharge_refuses_an_unknown_provider(owner_client, organization, provider):
    before = money_state(organization)

    response = recharge(owner_client, "25.00", provider)

    error = assert_error(response, 400, "invalid_request")
    assert "provider" in error["details"], error
    assert Payment.objects.count() == 0
    assert money_state(organization) == before


def test_recharge_refuses_a_provider_not_enabled_in_settings(owner_client, organization, settings):
    settings.PAYMENT_PROVIDERS = ["sandbox"]

    response = recharge(owner_client, "25.00", "stripe")

    assert "provider" in assert_error(response, 400, "invalid_request")["details"]
    assert Payment.objects.count() == 0


@responses.activate
def test_recharge_when_the_provider_is_unreachable_fails_the_payment_and_moves_nothing(owner_client, organization, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    responses.post(
        "https://api.stripe.com/v1/checkout/sessions",
        status=400,
        json={"error": {"type": "invalid_request_error", "message": "Invalid currency"}},
    )
    before = money_state(organization)

    response = recharge(owner_client, "25.00", "stripe")

    assert_error(response, 502, "provider_error")
    payment = Payment.objects.get()
    assert payment.status == PaymentStatus.FAILED
    assert payment.failure_reason
    assert payment.checkout_url == ""
    after = money_state(organization)
    assert (after["balance"], after["ledger_entries"]) == (before["balance"], before["ledger_entries"])


# --- GET payments/, payments/{id}/ -------------------------------------------------------------------


def test_payment_list_shows_the_organizations_own_payments_newest_first(owner_client, owner, organization, other_organization):
    older = sandbox_payment(organization, "10.00")
    newer = sandbox_payment(organization, "20.00")
    sandbox_payment(other_organization, "30.00")

    response = owner_client.get("/api/v1/payments/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [p["id"] for p in body["results"]] == [newer.pk, older.pk]
    assert [p["amount"] for p in body["results"]] == ["20.000000000000", "10.000000000000"]
    assert {p["status"] for p in body["results"]} == {"pending"}


def test_payment_detail_shows_one_payment(org_admin_client, organization):
    payment = sandbox_payment(organization, "10.00")

    response = org_admin_client.get(f"/api/v1/payments/{payment.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == payment.pk
    assert body["status"] == "pending"
    assert body["refunded_amount"] == "0.000000000000"
    assert body["checkout_url"] == payment.checkout_url


def test_another_tenants_payment_is_not_found(owner_client, organization, other_organization):
    theirs = sandbox_payment(other_organization, "10.00")

    assert_error(owner_client.get(f"/api/v1/payments/{theirs.pk}/"), 404, "not_found")
    assert_error(owner_client.get("/api/v1/payments/999999999/"), 404, "not_found")
    assert theirs.pk not in [p["id"] for p in owner_client.get("/api/v1/payments/").json()["results"]]


@pytest.mark.parametrize("caller", ["member_client", "live_client"])
def test_payment_history_is_for_owners_and_admins_only(request, organization, caller):
    payment = sandbox_payment(organization, "10.00")
    client = request.getfixturevalue(caller)

    assert_error(client.get("/api/v1/payments/"), 403, "permission_denied")
    assert_error(client.get(f"/api/v1/payments/{payment.pk}/"), 403, "permission_denied")
    assert LedgerEntry.objects.count() == 0
