"""holds/ — reserve, capture, release, expire (docs/contract.md §1 Hold, §2.4, §3)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering import services
from metering.models import Hold, HoldStatus, Service, UsageRecord
from payments.models import Transfer, Wallet
from tests.conftest import key_client
from tests.factories import price_add, wallet_fund
from tests.metering.helpers import HOLDS, ping
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

D = Decimal


def hold(client, key="h1", **body):
    return client.post(HOLDS, {"service": "gpt", "idempotency_key": key, **body}, format="json")


def capture(client, hold_id, **quantities):
    return client.post(f"{HOLDS}{hold_id}/capture/", quantities, format="json")


def release(client, hold_id):
    return client.post(f"{HOLDS}{hold_id}/release/", format="json")


def money(organization) -> tuple[Decimal, Decimal]:
    wallet = wallet_of(organization)
    return wallet.balance, wallet.held


# --- Create --------------------------------------------------------------------------------------------


def test_hold_with_an_amount_reserves_it_without_moving_money(funded, live_client):
    response = hold(live_client, amount="0.5")

    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("service", "amount", "status", "test", "maxima")} == {
        "service": "gpt",
        "amount": "0.500000000000",
        "status": "active",
        "test": False,
        "maxima": {},
    }
    assert money(funded) == (D("10"), D("0.5"))
    assert live_client.get("/api/v1/balance/").json()["available"] == "9.500000000000"
    assert not Transfer.objects.filter(kind="usage").exists()
    assert_money_invariants([funded.pk])


def test_hold_with_maxima_reserves_their_cost_at_the_price_in_force(funded, live_client):
    response = hold(live_client, input_tokens=1_000_000, output_tokens=500_000)

    assert response.status_code == 201, response.content
    assert response.json()["amount"] == "0.450000000000"
    assert response.json()["maxima"] == {"quantity": 1_500_000, "input_tokens": 1_000_000, "output_tokens": 500_000}
    assert money(funded) == (D("10"), D("0.45"))


def test_hold_expiry_defaults_and_can_be_chosen(funded, live_client):
    default = hold(live_client, "a", amount="1").json()
    chosen = hold(live_client, "b", amount="1", expires_in=60).json()

    created = Hold.objects.get(pk=default["id"])
    assert created.expires_at - created.created_at == timedelta(seconds=600)
    created = Hold.objects.get(pk=chosen["id"])
    assert created.expires_at - created.created_at == timedelta(seconds=60)


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "1", "input_tokens": 1, "output_tokens": 1},  # both
        {},  # neither (TOKENS needs its maxima)
        {"input_tokens": 10},
        {"amount": "-1"},
        {"amount": "lots"},
        {"amount": "0.0000000000001"},  # finer than the stored scale
        {"amount": "1", "expires_in": 0},
        {"amount": "1", "expires_in": 86401},
        {"amount": "1", "expires_in": "60"},
        {"amount": "1", "expires_in": True},
        {"amount": "1", "colour": "red"},
        {"amount": "1", "idempotency_key": None},
        {"amount": "1", "service": 3},
    ],
)
def test_invalid_hold_is_400_and_reserves_nothing(funded, live_client, body):
    response = live_client.post(HOLDS, {"service": "gpt", "idempotency_key": "h", **body}, format="json")

    assert_error(response, 400, "invalid_request")
    assert money(funded) == (D("10"), D("0"))
    assert not Hold.objects.exists()


@pytest.mark.parametrize("service", ["nope", "retired"])
def test_hold_on_unknown_service_is_404(funded, live_client, service):
    assert_error(
        live_client.post(HOLDS, {"service": service, "idempotency_key": "h", "amount": "1"}, format="json"),
        404,
        "service_not_found",
    )


@pytest.mark.parametrize("credit_limit", ["0", "1"])
def test_hold_beyond_available_is_402(funded, live_client, credit_limit):
    Wallet.objects.filter(organization_id=funded.pk).update(credit_limit=D(credit_limit))
    ping(live_client, "spend")  # available 9.999
    limit = D("9.999") + D(credit_limit)

    refused = hold(live_client, "too-much", amount=str(limit + D("0.000000000001")))
    fits = hold(live_client, "fits", amount=str(limit))

    assert_error(refused, 402, "insufficient_balance")
    assert fits.status_code == 201
    assert not Hold.objects.filter(idempotency_key="too-much").exists()
    assert wallet_of(funded).available == -D(credit_limit)
    assert_error(ping(live_client, "then"), 402, "insufficient_balance")  # the hold counts against debits


def test_hold_replay_and_conflict(funded, live_client):
    first = hold(live_client, "h", amount="1")
    replay = live_client.post(HOLDS, {"service": "gpt", "amount": "1"}, format="json", HTTP_IDEMPOTENCY_KEY="h")
    conflict = hold(live_client, "h", amount="2")

    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json() == first.json()
    assert_error(conflict, 409, "idempotency_conflict")
    assert money(funded) == (D("10"), D("1"))


def test_test_mode_hold_reserves_nothing(funded, test_mode_client):
    created = hold(test_mode_client, amount="5")
    captured = capture(test_mode_client, created.json()["id"], input_tokens=10, output_tokens=10)

    assert created.json()["test"] is True
    assert captured.status_code == 201, captured.content
    assert captured.json()["usage"]["test"] is True
    assert money(funded) == (D("10"), D("0"))
    assert_money_invariants([funded.pk])


# --- Capture -----------------------------------------------------------------------------------------------


def test_capture_below_the_hold_debits_the_actual_cost_and_frees_the_rest(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]

    response = capture(live_client, hold_id, input_tokens=1000, output_tokens=1000)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "captured"
    assert (body["usage"]["cost"], body["usage"]["balance_after"]) == ("0.000750000000", "9.999250000000")
    assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"]) == (1000, 1000)
    assert money(funded) == (D("9.99925"), D("0"))
    record = UsageRecord.objects.get(pk=body["usage"]["id"])
    assert record.hold_id == hold_id
    assert Hold.objects.get(pk=hold_id).finished_at is not None
    assert_money_invariants([funded.pk])


def test_capture_above_the_hold_is_recorded_in_full_then_blocks_spending(organization, catalogue, live_client):
    wallet_fund(organization, "1")
    hold_id = hold(live_client, amount="0.5").json()["id"]

    response = capture(live_client, hold_id, input_tokens=20_000_000, output_tokens=0)  # costs 3.00

    assert response.status_code == 201, response.content
    assert response.json()["usage"]["cost"] == "3.000000000000"
    assert money(organization) == (D("-2"), D("0"))
    assert_error(ping(live_client, "after"), 402, "insufficient_balance")
    assert_error(hold(live_client, "h2", amount="0.01"), 402, "insufficient_balance")
    wallet_fund(organization, "1.5")  # still below zero: still blocked
    assert_error(ping(live_client, "after"), 402, "insufficient_balance")
    wallet_fund(organization, "0.501")
    assert ping(live_client, "after").status_code == 201
    assert money(organization) == (D("0"), D("0"))
    assert_money_invariants([organization.pk])


def test_capture_above_the_hold_may_pass_the_credit_limit(organization, catalogue, live_client):
    Wallet.objects.filter(organization_id=organization.pk).update(credit_limit=D("1"))
    hold_id = hold(live_client, amount="1").json()["id"]  # available 0 → -1

    assert capture(live_client, hold_id, input_tokens=20_000_000, output_tokens=0).status_code == 201

    assert money(organization) == (D("-3"), D("0"))
    assert_error(ping(live_client, "after"), 402, "insufficient_balance")


def test_capturing_twice_answers_the_same(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]
    first = capture(live_client, hold_id, input_tokens=10, output_tokens=5)

    again = capture(live_client, hold_id, input_tokens=10, output_tokens=5)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert UsageRecord.objects.filter(hold_id=hold_id).count() == 1
    assert Transfer.objects.filter(kind="usage").count() == 1


def test_capturing_again_with_other_quantities_is_a_conflict(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]
    capture(live_client, hold_id, input_tokens=10, output_tokens=5)
    balance = money(funded)

    assert_error(capture(live_client, hold_id, input_tokens=11, output_tokens=5), 409, "idempotency_conflict")
    assert money(funded) == balance


@pytest.mark.parametrize(
    "quantities", [{"input_tokens": 10}, {"input_tokens": -1, "output_tokens": 0}, {"text": "x"}, {"tokens": 3}]
)
def test_invalid_capture_is_400_and_the_hold_stays_active(funded, live_client, quantities):
    hold_id = hold(live_client, amount="0.5").json()["id"]

    assert_error(capture(live_client, hold_id, **quantities), 400, "invalid_request")

    assert Hold.objects.get(pk=hold_id).status == HoldStatus.ACTIVE
    assert money(funded) == (D("10"), D("0.5"))


def test_capture_of_an_unknown_hold_is_404(funded, live_client):
    assert_error(capture(live_client, 999_999, input_tokens=1, output_tokens=1), 404, "not_found")


# --- Release and expiry -------------------------------------------------------------------------------------


def test_release_frees_the_hold_and_is_idempotent(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]

    first = release(live_client, hold_id)
    again = release(live_client, hold_id)

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == again.json()["status"] == "released"
    assert money(funded) == (D("10"), D("0"))
    assert_money_invariants([funded.pk])


def test_capture_after_release_is_refused(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]
    release(live_client, hold_id)

    assert_error(capture(live_client, hold_id, input_tokens=1, output_tokens=1), 409, "hold_not_active")
    assert money(funded) == (D("10"), D("0"))
    assert not UsageRecord.objects.exists()


def test_release_after_capture_is_refused(funded, live_client):
    hold_id = hold(live_client, amount="0.5").json()["id"]
    capture(live_client, hold_id, input_tokens=1, output_tokens=1)
    balance = money(funded)

    assert_error(release(live_client, hold_id), 409, "hold_not_active")
    assert money(funded) == balance
    assert Hold.objects.get(pk=hold_id).status == HoldStatus.CAPTURED


def test_expired_holds_are_freed_by_the_periodic_task(funded, live_client):
    short = hold(live_client, "short", amount="1", expires_in=1).json()["id"]
    long = hold(live_client, "long", amount="2", expires_in=3600).json()["id"]

    expired = services.holds_expire(now=timezone.now() + timedelta(seconds=2))

    assert expired == 1
    assert Hold.objects.get(pk=short).status == HoldStatus.EXPIRED
    assert Hold.objects.get(pk=long).status == HoldStatus.ACTIVE
    assert money(funded) == (D("10"), D("2"))
    assert_error(capture(live_client, short, input_tokens=1, output_tokens=1), 409, "hold_not_active")
    assert services.holds_expire(now=timezone.now() + timedelta(seconds=2)) == 0  # nothing left to expire
    assert_money_invariants([funded.pk])


def test_reserved_idempotency_keys_cannot_block_a_capture(funded, live_client):
    # Captures record their usage under tollgate:hold:<id>; clients may not use that namespace.
    response = live_client.post("/api/v1/usage/", {"service": "ping", "idempotency_key": "tollgate:hold:1"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"idempotency_key": ["Reserved prefix."]}


def test_a_hold_on_a_service_retired_meanwhile_can_still_be_captured(funded, live_client):
    from metering.models import Service

    hold = live_client.post("/api/v1/holds/", {"service": "ping", "idempotency_key": "h-retire", "amount": "0.01"}, format="json")
    assert hold.status_code == 201, hold.content
    Service.objects.filter(slug="ping").update(active=False)
    captured = live_client.post(f"/api/v1/holds/{hold.json()['id']}/capture/", {}, format="json")
    assert captured.status_code == 201, captured.content
    assert captured.json()["status"] == "captured"


# --- Zero holds and over-captured wallets (the hold bounds what an over-capture can cost) ---------------


@pytest.mark.parametrize("body", [{"amount": "0"}, {"amount": "0.0000000000001"}, {"input_tokens": 0, "output_tokens": 0}])
def test_a_hold_that_reserves_nothing_is_refused(funded, live_client, body):
    """`0.0000000000001` rounds to zero at the stored scale: also nothing."""
    assert_error(hold(live_client, **body), 400, "invalid_request")
    assert not Hold.objects.exists()
    assert money(funded) == (D("10"), D("0"))


@pytest.mark.parametrize("client_fixture", ["live_client", "test_mode_client"])
def test_zero_holds_are_refused_in_both_modes(funded, request, client_fixture):
    assert_error(hold(request.getfixturevalue(client_fixture), amount="0"), 400, "invalid_request")


def test_over_captured_wallet_starts_nothing_new_not_even_free_events(organization, catalogue, live_client):
    """After an over-capture below the limit: no hold of any size, no free event, no free batch event."""
    free = Service.objects.create(slug="free", name="Free", calc_method="REQUEST")
    price_add(service=free, unit_price="0")
    wallet_fund(organization, "1")
    hold_id = hold(live_client, amount="0.5").json()["id"]
    assert capture(live_client, hold_id, input_tokens=20_000_000, output_tokens=0).status_code == 201  # −2.00

    assert_error(hold(live_client, "h-tiny", amount="0.000000000001"), 402, "insufficient_balance")
    assert_error(
        live_client.post("/api/v1/usage/", {"service": "free", "idempotency_key": "f1"}, format="json"),
        402,
        "insufficient_balance",
    )
    batch = live_client.post("/api/v1/usage/batch/", {"events": [{"service": "free", "idempotency_key": "f2"}]}, format="json")
    assert batch.json()["results"][0]["status"] == 402
    assert UsageRecord.objects.filter(service=free).count() == 0
    assert money(organization) == (D("-2"), D("0"))
    assert_money_invariants([organization.pk])


def test_free_events_are_served_while_the_wallet_is_above_its_limit(funded, live_client):
    price_add(service=Service.objects.create(slug="free", name="Free", calc_method="REQUEST"), unit_price="0")
    response = live_client.post("/api/v1/usage/", {"service": "free", "idempotency_key": "f1"}, format="json")
    assert response.status_code == 201 and response.json()["cost"] == "0.000000000000"


# --- Mode: a test key never acts on a live hold --------------------------------------------------------


@pytest.mark.parametrize("action", ["capture", "release"])
def test_a_test_key_cannot_capture_or_release_a_live_hold(funded, live_client, test_mode_client, action):
    hold_id = hold(live_client, amount="2").json()["id"]
    response = (
        capture(test_mode_client, hold_id, input_tokens=1, output_tokens=1)
        if action == "capture"
        else release(test_mode_client, hold_id)
    )
    assert_error(response, 404, "not_found")
    assert Hold.objects.get(pk=hold_id).status == HoldStatus.ACTIVE
    assert money(funded) == (D("10"), D("2"))


def test_a_live_key_cannot_act_on_a_test_hold(funded, live_client, test_mode_client):
    hold_id = hold(test_mode_client, amount="2").json()["id"]
    assert_error(release(live_client, hold_id), 404, "not_found")
    assert_error(capture(live_client, hold_id, input_tokens=1, output_tokens=1), 404, "not_found")


def test_a_test_hold_does_not_take_the_idempotency_key_of_a_live_one(funded, live_client, test_mode_client):
    test_hold = hold(test_mode_client, "shared", amount="1")
    live_hold = hold(live_client, "shared", amount="1")
    assert (test_hold.status_code, live_hold.status_code) == (201, 201)
    assert (test_hold.json()["test"], live_hold.json()["test"]) == (True, False)
    assert money(funded) == (D("10"), D("1"))


# --- Spend caps hold at reserve time ------------------------------------------------------------------


def test_holds_count_against_a_keys_spend_cap(funded, capped_key):
    """$0.002 cap: a $0.0015 hold fits, a second one would pass the cap with the first still reserved."""
    client = key_client(capped_key.secret)
    assert hold(client, "c1", amount="0.0015").status_code == 201
    assert_error(hold(client, "c2", amount="0.0015"), 402, "spend_cap_exceeded")
    assert money(funded) == (D("10"), D("0.0015"))


def test_a_capture_past_the_cap_is_recorded_in_full_then_nothing_more_starts(funded, capped_key):
    client = key_client(capped_key.secret)
    hold_id = hold(client, "c1", amount="0.002").json()["id"]
    assert capture(client, hold_id, input_tokens=100_000, output_tokens=0).status_code == 201  # costs 0.015
    capped_key.api_key.refresh_from_db()
    assert capped_key.api_key.spent == D("0.015")
    assert_error(hold(client, "c2", amount="0.000000000001"), 402, "spend_cap_exceeded")
    assert_error(ping(client, "after"), 402, "spend_cap_exceeded")
    assert_money_invariants([funded.pk])
