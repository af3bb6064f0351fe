"""usage/batch/ — up to 1,000 events under one wallet lock, one result each (docs/contract.md §3)."""

from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from billing_site.errors import IdempotencyConflict
from metering.models import UsageRecord, UsageRollup
from metering.services.events import UsageEvent, event_price
from metering.services.usage_sql import usage_insert_batch
from payments.models import Transfer
from tests.conftest import key_client
from tests.factories import wallet_fund
from tests.metering.helpers import BATCH, ping
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

D = Decimal


def ping_event(key: str, **extra) -> dict:
    return {"service": "ping", "idempotency_key": key, **extra}


def send(client, events):
    response = client.post(BATCH, {"events": events}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_batch_answers_one_result_per_event_in_order(funded, live_client):
    results = send(
        live_client,
        [
            ping_event("a"),
            {"service": "gpt", "idempotency_key": "b", "input_tokens": 1, "output_tokens": 0},
            {"service": "nope", "idempotency_key": "c"},
            {"service": "gpt", "idempotency_key": "d", "input_tokens": -1, "output_tokens": 0},
            {"service": "ping"},
            "not an object",
            ping_event("g", colour="red"),
            ping_event("h"),
        ],
    )

    assert [r["index"] for r in results] == list(range(8))
    assert [r["status"] for r in results] == [201, 201, 404, 400, 400, 400, 400, 201]
    assert [r.get("error", {}).get("code") for r in results] == [
        None,
        None,
        "service_not_found",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        None,
    ]
    assert [r["usage"]["cost"] for r in results if r["status"] == 201] == ["0.001000000000", "0.000000150000", "0.001000000000"]
    assert [r["usage"]["balance_after"] for r in results if r["status"] == 201] == [
        "9.999000000000",
        "9.998999850000",
        "9.997999850000",
    ]
    assert set(results[0]["usage"]) >= {"id", "service", "quantity", "cost", "balance_after", "test", "created_at"}
    assert wallet_of(funded).balance == D("9.99799985")
    assert UsageRecord.objects.count() == 3
    assert_money_invariants([funded.pk])


def test_batch_events_that_do_not_fit_are_402_and_later_ones_may_still_fit(organization, catalogue, live_client):
    wallet_fund(organization, "0.0025")

    results = send(
        live_client,
        [
            ping_event("a"),
            {"service": "gpt", "idempotency_key": "big", "input_tokens": 10**6, "output_tokens": 0},
            ping_event("b"),
            ping_event("c"),
            {"service": "gpt", "idempotency_key": "small", "input_tokens": 1000, "output_tokens": 0},
        ],
    )

    assert [r["status"] for r in results] == [201, 402, 201, 402, 201]
    assert results[1]["error"]["code"] == "insufficient_balance"
    assert results[4]["usage"]["balance_after"] == "0.000350000000"
    assert wallet_of(organization).balance == D("0.00035")
    assert_money_invariants([organization.pk])


def test_duplicate_keys_inside_one_batch(funded, live_client):
    results = send(live_client, [ping_event("x"), ping_event("x"), ping_event("x", metadata={"other": 1}), ping_event("y")])

    assert [r["status"] for r in results] == [201, 200, 409, 201]
    assert results[1]["usage"]["id"] == results[0]["usage"]["id"]
    assert results[2]["error"]["code"] == "idempotency_conflict"
    assert UsageRecord.objects.count() == 2
    assert wallet_of(funded).balance == D("9.998")


def test_a_refused_event_does_not_burn_its_key_for_a_duplicate(organization, catalogue, live_client):
    results = send(live_client, [ping_event("x"), ping_event("x")])

    assert [r["status"] for r in results] == [402, 402]
    assert not UsageRecord.objects.exists()


def test_batch_replays_events_already_recorded(funded, live_client):
    single = ping(live_client, "earlier").json()
    first = send(live_client, [ping_event("earlier"), ping_event("new")])
    again = send(live_client, [ping_event("earlier"), ping_event("new")])

    assert [r["status"] for r in first] == [200, 201]
    assert first[0]["usage"] == single
    assert [r["status"] for r in again] == [200, 200]
    assert again[1]["usage"]["id"] == first[1]["usage"]["id"]
    assert wallet_of(funded).balance == D("9.998")
    assert Transfer.objects.filter(kind="usage").count() == 2


def test_batch_in_test_mode_moves_no_money(funded, test_mode_client):
    results = send(test_mode_client, [ping_event("a"), ping_event("b")])

    assert [(r["status"], r["usage"]["test"], r["usage"]["balance_after"]) for r in results] == [(201, True, None)] * 2
    assert wallet_of(funded).balance == D("10")
    assert not Transfer.objects.filter(kind="usage").exists()
    assert list(UsageRollup.objects.values_list("test", "events")) == [(True, 2)]


def test_batch_of_1000_events_is_accepted(funded, live_client, django_assert_max_num_queries):
    # key, priced service (memoized per slug), replay pre-check, savepoint, the budgets' spends, wallet
    # lock, the one usage transfer, record ids, the records' COPY, rollup, key spend, release: no query per event
    with django_assert_max_num_queries(13):
        results = send(live_client, [ping_event(f"e{i}") for i in range(1000)])

    assert {r["status"] for r in results} == {201}
    assert results[-1]["usage"]["balance_after"] == "9.000000000000"
    assert wallet_of(funded).balance == D("9")
    assert Transfer.objects.filter(kind="usage").count() == 1  # the ledger grows per batch, not per event
    assert UsageRollup.objects.get(organization_id=funded.pk).events == 1000
    assert_money_invariants([funded.pk])


@pytest.mark.parametrize(
    "body", [{"events": [ping_event(f"e{i}") for i in range(1001)]}, {"events": []}, {"events": "x"}, {}, []]
)
def test_invalid_batch_is_400_and_writes_nothing(funded, live_client, body):
    assert_error(live_client.post(BATCH, body, format="json"), 400, "invalid_request")

    assert not UsageRecord.objects.exists()
    assert wallet_of(funded).balance == D("10")


def test_batch_applies_the_spend_cap_event_by_event(funded, capped_key):
    """As if sent one by one: events up to the cap are charged, the rest refused with the same code."""
    client = key_client(capped_key.secret)

    results = send(client, [ping_event(k) for k in "abc"])

    assert [r["status"] for r in results] == [201, 201, 402]
    assert results[2]["error"]["code"] == "spend_cap_exceeded"
    assert UsageRecord.objects.count() == 2
    assert wallet_of(funded).balance == D("9.998")
    capped_key.api_key.refresh_from_db()
    assert capped_key.api_key.spent == D("0.002")
    assert [r["status"] for r in send(client, [ping_event("d")])] == [402]


def test_batch_requires_authentication(funded, api_client):
    assert api_client.post(BATCH, {"events": [ping_event("a")]}, format="json").status_code == 401


def test_batch_records_are_the_records_a_single_event_writes(funded, live_client):
    """The batch writes its records by binary COPY, the single path by INSERT: every column agrees."""
    event = {"service": "gpt", "input_tokens": 1234, "output_tokens": 5, "metadata": {"team": "é", "n": [1, {"x": None}]}}
    single = live_client.post("/api/v1/usage/", {**event, "idempotency_key": "one"}, format="json")
    assert single.status_code == 201, single.content
    [result] = send(live_client, [{**event, "idempotency_key": "many"}])
    assert result["status"] == 201

    columns = [
        f.attname
        for f in UsageRecord._meta.concrete_fields
        if f.attname not in ("id", "idempotency_key", "transfer_id", "balance_after", "created_at")
    ]
    by_key = {
        row["idempotency_key"]: row for row in UsageRecord.objects.values("idempotency_key", "id", "balance_after", *columns)
    }
    assert {c: by_key["many"][c] for c in columns} == {c: by_key["one"][c] for c in columns}
    assert by_key["many"]["metadata"] == {"team": "é", "n": [1, {"x": None}]}
    assert by_key["many"]["id"] == result["usage"]["id"]
    assert str(by_key["many"]["balance_after"]) == result["usage"]["balance_after"]
    assert_money_invariants([funded.pk])


def test_a_key_taken_between_the_check_and_the_copy_fails_the_batch_and_moves_nothing(funded, live_client, live_key):
    ping(live_client, "taken")
    before = (wallet_of(funded).balance, UsageRecord.objects.count(), Transfer.objects.count())
    tenant = Tenant(organization=funded, user=None, api_key=live_key.api_key, role=None)
    priced = [
        event_price(UsageEvent(service="ping", idempotency_key=k, data={}), organization_id=funded.pk) for k in ("fresh", "taken")
    ]
    with pytest.raises(IdempotencyConflict), transaction.atomic():
        usage_insert_batch([(p, None) for p in priced], tenant=tenant, now=timezone.now())

    assert (wallet_of(funded).balance, UsageRecord.objects.count(), Transfer.objects.count()) == before
    assert not UsageRecord.objects.filter(idempotency_key="fresh").exists()
