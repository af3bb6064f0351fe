"""POST usage/ (docs/contract.md §3): every answer, and the money it moves or does not move."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create, api_key_revoke
from metering.models import UsageRecord
from metering.services.usage_sql import DEBIT_SQL
from payments.models import LedgerEntry, Transfer
from tests.conftest import key_client
from tests.factories import ServiceFactory, price_add, wallet_fund
from tests.metering.helpers import BATCH, USAGE, ping
from tests.payments.helpers import assert_error, assert_money_invariants, money_state, wallet_of

D = Decimal


# --- 201 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "quantities", "cost"),
    [
        (
            {"service": "gpt", "input_tokens": 1000, "output_tokens": 500},
            {"quantity": 1500, "input_tokens": 1000, "output_tokens": 500},
            "0.000450000000",
        ),
        (
            {"service": "gpt", "input_tokens": 1, "output_tokens": 0},
            {"quantity": 1, "input_tokens": 1, "output_tokens": 0},
            "0.000000150000",
        ),
        ({"service": "translate", "text": "héllo 世界"}, {"quantity": 8}, "0.000160000000"),
        ({"service": "translate", "characters": 2500}, {"quantity": 2500}, "0.050000000000"),
        ({"service": "summarize", "text": "hello, 世界!"}, {"quantity": 3}, "0.001500000000"),
        ({"service": "dalle", "width": 1024, "height": 1025, "images": 2}, {"quantity": 12}, "0.120000000000"),
        ({"service": "dalle", "width": 512, "height": 512}, {"quantity": 1}, "0.010000000000"),
        ({"service": "ping"}, {"quantity": 1}, "0.001000000000"),
    ],
)
def test_usage_is_metered_and_debited(funded, live_client, live_key, body, quantities, cost):
    response = live_client.post(USAGE, {**body, "idempotency_key": "evt-1"}, format="json")

    assert response.status_code == 201, response.content
    data = response.json()
    assert {key: data[key] for key in quantities} == quantities
    assert ("input_tokens" in data) == (body["service"] == "gpt")
    assert data["service"] == body["service"]
    assert data["cost"] == cost
    assert data["balance_after"] == format(D("10") - D(cost), "f")
    assert data["test"] is False
    assert isinstance(data["id"], int)
    assert datetime.fromisoformat(data["created_at"]) <= timezone.now()
    record = UsageRecord.objects.get(pk=data["id"])
    assert (record.cost, record.api_key_id, record.idempotency_key) == (D(cost), live_key.api_key.pk, "evt-1")
    assert wallet_of(funded).balance == D("10") - D(cost)
    assert Transfer.objects.get(pk=record.transfer_id).kind == "usage"
    assert_money_invariants([funded.pk])


def test_usage_with_a_jwt_records_the_user(funded, owner_client, owner):
    response = ping(owner_client, "jwt-1")

    assert response.status_code == 201, response.content
    record = UsageRecord.objects.get(pk=response.json()["id"])
    assert (record.user_id, record.api_key_id) == (owner.pk, None)


def test_usage_amounts_are_json_strings_never_numbers(funded, live_client):
    data = live_client.post(
        USAGE, {"service": "gpt", "idempotency_key": "s", "input_tokens": 3, "output_tokens": 7}, format="json"
    ).json()

    for field in ("cost", "balance_after", "input_price", "output_price"):
        assert isinstance(data[field], str), field
    assert data["input_price"] == "0.150000000000"


# --- 200 replay and 409 conflict ---------------------------------------------------------------------


@pytest.mark.parametrize("via", ["body", "header"])
def test_replay_answers_the_first_result_and_moves_no_money(funded, live_client, via):
    def send():
        if via == "body":
            return ping(live_client, "same")
        return live_client.post(USAGE, {"service": "ping"}, format="json", HTTP_IDEMPOTENCY_KEY="same")

    first = send()
    balance = wallet_of(funded).balance
    again = send()

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert wallet_of(funded).balance == balance == D("9.999")
    assert UsageRecord.objects.filter(organization_id=funded.pk).count() == 1
    assert Transfer.objects.filter(organization_id=funded.pk, kind="usage").count() == 1


def test_header_and_body_keys_name_the_same_event(funded, live_client):
    first = ping(live_client, "k")
    again = live_client.post(USAGE, {"service": "ping"}, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_replay_still_answers_once_the_wallet_is_empty(organization, catalogue, live_client):
    wallet_fund(organization, "0.001")
    first = ping(live_client, "last")
    assert first.status_code == 201
    assert wallet_of(organization).balance == 0

    again = ping(live_client, "last")

    assert again.status_code == 200, again.content
    assert again.json() == first.json()


@pytest.mark.parametrize(
    "second",
    [
        {"service": "ping", "metadata": {"run": 2}},
        {"service": "gpt", "input_tokens": 1, "output_tokens": 1},
    ],
)
def test_same_key_with_another_body_is_refused(funded, live_client, second):
    assert ping(live_client, "k", metadata={"run": 1}).status_code == 201
    before = money_state(funded)

    response = live_client.post(USAGE, {**second, "idempotency_key": "k"}, format="json")

    assert_error(response, 409, "idempotency_conflict")
    assert money_state(funded) == before


def test_token_counts_are_part_of_the_body(funded, live_client):
    body = {"service": "gpt", "idempotency_key": "k", "input_tokens": 1, "output_tokens": 1}
    live_client.post(USAGE, body, format="json")

    assert_error(live_client.post(USAGE, {**body, "output_tokens": 2}, format="json"), 409, "idempotency_conflict")


def test_idempotency_keys_are_per_organization(funded, live_client, other_organization, other_client):
    wallet_fund(other_organization, "1")
    assert ping(live_client, "shared").status_code == 201

    response = ping(other_client, "shared")

    assert response.status_code == 201
    assert wallet_of(other_organization).balance == D("0.999")


# --- 402, 404, 400, 401 ------------------------------------------------------------------------------


@pytest.mark.parametrize("funding", ["0", "0.000999999999"])
def test_usage_beyond_the_balance_is_refused_and_writes_nothing(organization, catalogue, live_client, funding):
    if D(funding):
        wallet_fund(organization, funding)
    before = money_state(organization)

    response = ping(live_client, "too-much")

    assert_error(response, 402, "insufficient_balance")
    assert money_state(organization) == before
    # The key was not burned: once funded, the same key is a new event.
    wallet_fund(organization, "1")
    assert ping(live_client, "too-much").status_code == 201


@pytest.mark.parametrize("service", ["nope", "retired", "PING"])
def test_unknown_or_inactive_service_is_404(funded, live_client, service):
    before = money_state(funded)

    response = live_client.post(USAGE, {"service": service, "idempotency_key": "k"}, format="json")

    assert_error(response, 404, "service_not_found")
    assert money_state(funded) == before


def test_service_without_a_price_in_force_is_refused(funded, live_client):
    ServiceFactory(slug="unpriced")

    response = live_client.post(USAGE, {"service": "unpriced", "idempotency_key": "k"}, format="json")

    assert_error(response, 409, "price_not_set")


@pytest.mark.parametrize(
    "body",
    [
        # wrong types
        {"service": "gpt", "input_tokens": "10", "output_tokens": 0},
        {"service": "gpt", "input_tokens": 10.0, "output_tokens": 0},
        {"service": "gpt", "input_tokens": 1.5, "output_tokens": 0},
        {"service": "gpt", "input_tokens": True, "output_tokens": 0},
        {"service": "translate", "text": 42},
        {"service": "dalle", "width": "512", "height": 512},
        {"service": 7},
        {"service": ["ping"]},
        {"service": "ping", "metadata": "not an object"},
        {"service": "ping", "metadata": {"blob": "x" * 5000}},
        # negatives
        {"service": "gpt", "input_tokens": -1, "output_tokens": 0},
        {"service": "translate", "characters": -3},
        {"service": "summarize", "words": -1},
        # out of range
        {"service": "dalle", "width": 0, "height": 512},
        {"service": "dalle", "width": 512, "height": 16385},
        {"service": "dalle", "width": 512, "height": 512, "images": 0},
        {"service": "gpt", "input_tokens": 10**13, "output_tokens": 0},
        # missing fields for the method
        {"service": "gpt", "input_tokens": 10},
        {"service": "translate"},
        {"service": "summarize"},
        {"service": "dalle", "width": 512},
        {},
        # fields of another method, and unknown fields
        {"service": "ping", "input_tokens": 1},
        {"service": "gpt", "input_tokens": 1, "output_tokens": 1, "text": "hi"},
        {"service": "ping", "quantity": 5},
        {"service": "ping", "cost": "0"},
        {"service": "ping", "organization": "globex"},
    ],
)
def test_invalid_usage_is_400_and_writes_nothing(funded, live_client, body):
    before = money_state(funded)

    response = live_client.post(USAGE, {"idempotency_key": "k", **body}, format="json")

    assert_error(response, 400, "invalid_request")
    assert money_state(funded) == before


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_metadata_with_an_overflowing_number_is_400_on_single_and_batch_paths(funded, live_client, number):
    """A JSON number too large for a float parses to infinity, which jsonb cannot hold: a clear 400 for
    that event (the batch's other events go on), never a 500, and nothing written."""
    event = f'{{"service": "ping", "idempotency_key": "inf", "metadata": {{"x": {number}}}}}'
    before = money_state(funded)

    single = live_client.post(USAGE, event, content_type="application/json")
    assert_error(single, 400, "invalid_request")
    assert single.json()["error"]["details"] == {"metadata": ["Numbers must be finite."]}
    assert money_state(funded) == before

    batch = live_client.post(
        "/api/v1/usage/batch/",
        f'{{"events": [{event}, {{"service": "ping", "idempotency_key": "fine"}}]}}',
        content_type="application/json",
    )
    assert batch.status_code == 200
    assert [r["status"] for r in batch.json()["results"]] == [400, 201]


@pytest.mark.parametrize("key", [None, "", "   ", 123, "x" * 256])
def test_idempotency_key_is_required_and_bounded(funded, live_client, key):
    body = {"service": "ping"} if key is None else {"service": "ping", "idempotency_key": key}

    error = assert_error(live_client.post(USAGE, body, format="json"), 400, "invalid_request")

    assert "idempotency_key" in error["details"]
    assert UsageRecord.objects.count() == 0


def test_malformed_json_is_400(funded, live_client):
    response = live_client.generic("POST", USAGE, "{not json", content_type="application/json")

    assert response.status_code == 400
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("credentials", [None, "Bearer tg_live_unknown", "Bearer not-a-jwt"])
def test_usage_without_valid_credentials_is_401(funded, credentials):
    client = APIClient()
    if credentials:
        client.credentials(HTTP_AUTHORIZATION=credentials)
    before = money_state(funded)

    response = ping(client, "k")

    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in {"not_authenticated", "invalid_api_key", "authentication_failed"}
    assert money_state(funded) == before


def test_a_revoked_key_cannot_meter(funded, live_key, live_client):
    api_key_revoke(api_key=live_key.api_key)

    assert ping(live_client, "k").status_code == 401
    assert UsageRecord.objects.count() == 0


# --- Test mode (docs/contract.md §2.6) ----------------------------------------------------------------------------


def test_test_mode_records_but_moves_no_money(funded, test_mode_client, owner_client, live_client):
    response = test_mode_client.post(
        USAGE, {"service": "gpt", "idempotency_key": "t1", "input_tokens": 10**6, "output_tokens": 0}, format="json"
    )
    ping(live_client, "live-1")

    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["test"], data["cost"], data["balance_after"]) == (True, "0.150000000000", None)
    assert wallet_of(funded).balance == D("9.999")
    record = UsageRecord.objects.get(pk=data["id"])
    assert record.test and record.transfer_id is None
    assert not LedgerEntry.objects.filter(transfer__reference="usage:t1").exists()
    live_summary = owner_client.get("/api/v1/usage/summary/?group_by=service").json()
    assert [(r["service"], r["events"], r["cost"]) for r in live_summary["rows"]] == [("ping", 1, "0.001000000000")]
    test_summary = owner_client.get("/api/v1/usage/summary/?group_by=service&test=true").json()
    assert [(r["service"], r["events"], r["cost"]) for r in test_summary["rows"]] == [("gpt", 1, "0.150000000000")]
    ledger = owner_client.get("/api/v1/ledger/").json()
    assert [entry["reference"] for entry in ledger["results"]] == ["usage:live-1", "staff"]
    assert_money_invariants([funded.pk])


def test_test_mode_works_with_an_empty_wallet_and_ignores_the_spend_cap(organization, catalogue, owner):
    key = api_key_create(organization=organization, name="t", mode="test", spend_cap=D("0"))
    client = key_client(key.secret)

    responses = [ping(client, f"t{i}").status_code for i in range(3)]

    assert responses == [201, 201, 201]
    assert wallet_of(organization).balance == 0
    key.api_key.refresh_from_db()
    assert key.api_key.spent == 0


# --- Spend caps -----------------------------------------------------------------------------------------


def test_spend_cap_is_enforced_and_a_refusal_writes_nothing(funded, capped_key):
    client = key_client(capped_key.secret)
    assert [ping(client, "a").status_code, ping(client, "b").status_code] == [201, 201]  # exactly the cap
    before = money_state(funded)

    response = ping(client, "c")

    error = assert_error(response, 402, "spend_cap_exceeded")
    assert error["details"] == {"spend_cap": "0.002000000000"}
    assert money_state(funded) == before
    capped_key.api_key.refresh_from_db()
    assert capped_key.api_key.spent == D("0.002")
    assert ping(client, "a").status_code == 200  # a replay is not new spend


def test_spend_cap_of_one_key_does_not_limit_another(funded, capped_key, live_client):
    client = key_client(capped_key.secret)
    ping(client, "a")
    ping(client, "b")

    assert ping(live_client, "c").status_code == 201


# --- Prices (docs/contract.md §2.7) ---------------------------------------------------------------------------------


def test_a_new_price_applies_to_new_records_only(funded, catalogue, live_client):
    first = ping(live_client, "before")
    price_add(service=catalogue["ping"], unit_price="0.5")

    second = ping(live_client, "after")

    assert (first.json()["cost"], second.json()["cost"]) == ("0.001000000000", "0.500000000000")
    assert UsageRecord.objects.get(pk=first.json()["id"]).cost == D("0.001")
    listed = {r["idempotency_key"]: r["cost"] for r in live_client.get(USAGE).json()["results"]}
    assert listed == {"before": "0.001000000000", "after": "0.500000000000"}
    assert ping(live_client, "before").json() == first.json()  # the replay keeps its original price


def test_a_future_price_is_not_yet_in_force(funded, catalogue, live_client):
    price_add(service=catalogue["ping"], unit_price="0.5", effective_from=timezone.now() + timedelta(hours=1))

    assert ping(live_client, "k").json()["cost"] == "0.001000000000"


def test_an_organization_override_beats_the_general_price(funded, catalogue, live_client, other_organization, other_client):
    wallet_fund(other_organization, "1")
    price_add(
        service=catalogue["ping"], organization=funded, unit_price="0.0005", effective_from=timezone.now() - timedelta(days=1)
    )
    price_add(service=catalogue["ping"], unit_price="0.002")  # a newer general price does not displace the override

    assert ping(live_client, "k").json()["cost"] == "0.000500000000"
    assert ping(other_client, "k").json()["cost"] == "0.002000000000"


def test_a_future_override_is_not_yet_in_force(funded, catalogue, live_client):
    price_add(
        service=catalogue["ping"], organization=funded, unit_price="0.0005", effective_from=timezone.now() + timedelta(hours=1)
    )

    assert ping(live_client, "k").json()["cost"] == "0.001000000000"


# --- Query count on the hot path -----------------------------------------------------------------------


def test_usage_with_an_api_key_issues_a_bounded_number_of_queries(funded, live_client, django_assert_num_queries):
    ping(live_client, "warm-up")  # the key's first use stamps last_used_at once; later requests do not write it

    # The key and the price come from this process's cache (billing_site/cache.py): SAVEPOINT, the one
    # debit statement, RELEASE SAVEPOINT (the savepoint pair exists only because the test runs inside
    # a transaction; test_a_warm_usage_request_is_one_database_round_trip measures production's one).
    with django_assert_num_queries(3):
        response = ping(live_client, "measured")

    assert response.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_a_warm_usage_request_is_one_database_round_trip(funded, live_client, django_assert_num_queries):
    ping(live_client, "warm-up")

    statements = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with django_assert_num_queries(1), connection.execute_wrapper(record):
        response = ping(live_client, "measured")

    assert response.status_code == 201
    assert statements == [DEBIT_SQL.wallet]  # posting, record, rollup and spend in one statement
    assert_money_invariants([funded.pk])


@pytest.mark.django_db(transaction=True)
def test_the_debit_statement_is_prepared_once_per_connection(funded, live_client):
    for n in range(3):
        assert ping(live_client, f"k{n}").status_code == 201
    assert ping(live_client, "k0").status_code == 200  # a replay: the prepared statement's unique violation

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%INSERT INTO metering_usagerecord%"]
        )
        assert cursor.fetchone()[0] == 1
    assert wallet_of(funded).balance == D("9.997")


def test_usage_with_a_jwt_issues_a_bounded_number_of_queries(funded, owner_client, django_assert_num_queries):
    ping(owner_client, "warm-up")

    # user, membership (tenant), SAVEPOINT, the one debit statement, RELEASE SAVEPOINT (the price is cached)
    with django_assert_num_queries(5):
        response = ping(owner_client, "measured")

    assert response.status_code == 201


def test_replay_issues_a_bounded_number_of_queries(funded, live_client, django_assert_max_num_queries):
    ping(live_client, "k")

    with django_assert_max_num_queries(9):
        assert ping(live_client, "k").status_code == 200


# --- Mode is part of idempotency ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["test_first", "live_first"])
def test_test_and_live_events_never_share_an_idempotency_key(funded, live_client, test_mode_client, order):
    """A test event with the same key must not swallow the live one (which would then be free)."""
    clients = [test_mode_client, live_client] if order == "test_first" else [live_client, test_mode_client]
    answers = {client is live_client: ping(client, "evt-shared") for client in clients}
    assert (answers[True].status_code, answers[False].status_code) == (201, 201)
    assert (answers[True].json()["test"], answers[False].json()["test"]) == (False, True)
    assert wallet_of(funded).balance == Decimal("9.999")
    assert UsageRecord.objects.filter(idempotency_key="evt-shared").count() == 2


def test_test_and_live_batches_never_share_an_idempotency_key(funded, live_client, test_mode_client):
    event = {"events": [{"service": "ping", "idempotency_key": "b-shared"}]}
    assert test_mode_client.post(BATCH, event, format="json").json()["results"][0]["status"] == 201
    live = live_client.post(BATCH, event, format="json").json()["results"][0]
    assert (live["status"], live["usage"]["test"]) == (201, False)
    assert wallet_of(funded).balance == Decimal("9.999")
