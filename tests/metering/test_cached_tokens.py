"""Cached input tokens (docs/contract.md §1, §3): a TOKENS price may carry
`cached_input_price`; an event may report `cached_input_tokens` (a part of its input), charged at that
rate, or at the input price when the price sets none. Costs are checked against an exact oracle in
fractions (not the code's formula), on every path that writes usage: the one-statement hot path, the
transaction path (test keys, capped keys), the batch's COPY and a hold's capture."""

import csv
import gzip
import io
import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts import services as account_services
from billing_site.errors import InvalidRequest
from metering.calculators import measure
from metering.exports import USAGE_CSV_COLUMNS
from metering.models import CalcMethod, Hold, HoldStatus, Price, UsageRecord
from metering.pricing import UnitPrices, charged_prices, cost_at
from metering.retention import usage_retention_run
from metering.services.usage_sql import DEBIT_SQL
from tests.conftest import key_client
from tests.factories import ServiceFactory, price_add, service_with_price, wallet_fund
from tests.metering.helpers import BATCH, HOLDS, USAGE, recorded_at
from tests.payments.helpers import assert_error, assert_money_invariants, money_state, wallet_of

D = Decimal
SCALE = 10**12  # the stored scale: 12 decimal places
PER_MILLION = 10**6


def oracle(*, input_tokens: int, output_tokens: int, cached: int | None, input_price, output_price, cached_price) -> Decimal:
    """The cost docs/contract.md §1 and §2.1 describe, in exact fractions, rounded once half-even to 12 places."""
    cached_tokens = cached or 0
    rate = Fraction(input_price) if cached_price is None else Fraction(cached_price)
    exact = (
        (input_tokens - cached_tokens) * Fraction(input_price) + cached_tokens * rate + output_tokens * Fraction(output_price)
    ) / PER_MILLION
    scaled = exact * SCALE
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return D(whole).scaleb(-12)


def random_price(rng: random.Random) -> D:
    """A rate with up to 12 decimals, often with digits that make the exact cost need rounding."""
    return D(rng.randrange(0, 50 * SCALE)).scaleb(-12).quantize(D(1).scaleb(-rng.choice([2, 6, 9, 12])), rounding="ROUND_DOWN")


def random_event(rng: random.Random) -> dict:
    input_tokens = rng.choice([0, 1, 3, rng.randrange(0, 5000), rng.randrange(0, 2_000_000)])
    event = {"input_tokens": input_tokens, "output_tokens": rng.choice([0, 1, rng.randrange(0, 3000)])}
    shape = rng.choice(["absent", "zero", "all", "some", "some"])
    if shape != "absent":
        event["cached_input_tokens"] = {"zero": 0, "all": input_tokens}.get(shape, rng.randint(0, input_tokens))
    return event


@pytest.fixture
def token_services(funded):
    """TOKENS services at random rates (seeded): half with a cached rate (one of them 0), half without."""
    wallet_fund(funded, "1000000")
    rng = random.Random(7349)
    priced = {}
    for index in range(6):
        prices = {"input_price": random_price(rng), "output_price": random_price(rng)}
        if index % 2 == 0:
            prices["cached_input_price"] = D(0) if index == 4 else random_price(rng)
        service_with_price(slug=f"tok-{index}", calc_method=CalcMethod.TOKENS, **prices)
        priced[f"tok-{index}"] = prices
    return priced


def expected_for(event: dict, prices: dict) -> Decimal:
    return oracle(
        input_tokens=event["input_tokens"],
        output_tokens=event["output_tokens"],
        cached=event.get("cached_input_tokens"),
        input_price=prices["input_price"],
        output_price=prices["output_price"],
        cached_price=prices.get("cached_input_price"),
    )


def assert_record_keeps_its_rates(record: UsageRecord, event: dict, prices: dict) -> None:
    """The record keeps the quantities and every rate applied, and its cost re-derives from them alone."""
    assert (record.input_tokens, record.output_tokens) == (event["input_tokens"], event["output_tokens"])
    assert (record.input_price, record.output_price) == (prices["input_price"], prices["output_price"])
    assert record.cached_input_tokens == event.get("cached_input_tokens")
    if "cached_input_tokens" in event:
        assert record.cached_input_price == prices.get("cached_input_price", prices["input_price"])
    else:
        assert record.cached_input_price is None
    rederived = oracle(
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached=record.cached_input_tokens,
        input_price=record.input_price,
        output_price=record.output_price,
        cached_price=record.cached_input_price,
    )
    assert record.cost == rederived


# --- The oracle itself, and the pricing function against it -------------------------------------------


def test_the_oracle_rounds_half_even_once():
    # 1 uncached token at 2.5e-6 per 1M (2.5e-12) + 1 cached at 0.5e-6 (0.5e-12): 3e-12 exactly;
    # rounding each part half-even first would give 2e-12 + 0.
    assert oracle(
        input_tokens=2, output_tokens=0, cached=1, input_price="0.0000025", output_price=0, cached_price="0.0000005"
    ) == D("0.000000000003")
    assert oracle(input_tokens=1, output_tokens=0, cached=None, input_price="0.0000025", output_price=0, cached_price=None) == D(
        "0.000000000002"
    )  # a tie goes to the even digit
    assert oracle(input_tokens=1, output_tokens=0, cached=None, input_price="0.0000035", output_price=0, cached_price=None) == D(
        "0.000000000004"
    )


def test_the_cost_is_rounded_once_over_cached_and_uncached_parts():
    # 1 uncached token costs 2.5e-12 and 1 cached 0.5e-12: 3e-12 in all, where rounding each part
    # half-even first (2e-12 + 0) would lose a unit.
    quantities = measure(CalcMethod.TOKENS, {"input_tokens": 2, "cached_input_tokens": 1, "output_tokens": 0})
    prices = UnitPrices(price_id=1, input_price=D("0.0000025"), output_price=D(0), cached_input_price=D("0.0000005"))

    assert cost_at(CalcMethod.TOKENS, quantities, prices, start=0, free_until=0).cost == D("0.000000000003")


prices_st = st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(
    input_tokens=st.integers(0, 10**12),
    output_tokens=st.integers(0, 10**12),
    cached_share=st.one_of(st.none(), st.fractions(0, 1)),
    input_price=prices_st,
    output_price=prices_st,
    cached_price=st.one_of(st.none(), prices_st),
)
def test_cost_equals_the_fraction_oracle(input_tokens, output_tokens, cached_share, input_price, output_price, cached_price):
    data = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cached_share is not None:
        data["cached_input_tokens"] = int(input_tokens * cached_share)
    quantities = measure(CalcMethod.TOKENS, data)
    prices = UnitPrices(price_id=1, input_price=input_price, output_price=output_price, cached_input_price=cached_price)

    cost = cost_at(CalcMethod.TOKENS, quantities, prices, start=0, free_until=0).cost

    assert cost == oracle(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached=data.get("cached_input_tokens"),
        input_price=input_price,
        output_price=output_price,
        cached_price=cached_price,
    )
    assert cost.as_tuple().exponent == -12


@pytest.mark.parametrize(
    ("data", "cached_price", "charged"),
    [
        ({"input_tokens": 10, "output_tokens": 1}, "1", None),  # not reported: no cached rate on the record
        ({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": 0}, "1", "1"),
        ({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": 4}, None, "2.5"),  # the input price
        ({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": 4}, "0", "0"),  # free is a rate, not "none"
    ],
)
def test_the_rate_charged_for_cached_tokens(data, cached_price, charged):
    quantities = measure(CalcMethod.TOKENS, data)
    prices = UnitPrices(
        price_id=1, input_price=D("2.5"), output_price=D(10), cached_input_price=None if cached_price is None else D(cached_price)
    )

    rates = charged_prices(CalcMethod.TOKENS, quantities, prices)

    assert rates.get("cached_input_price") == (None if charged is None else D(charged))
    assert (rates["input_price"], rates["output_price"]) == (D("2.5"), D(10))
    assert quantities.quantity == data["input_tokens"] + data["output_tokens"]  # cached tokens are a part of the input


@pytest.mark.parametrize(
    ("cached", "message"),
    [
        (11, "cannot exceed"),
        (-1, "between 0"),
        ("3", "integer"),
        (2.5, "integer"),
        (True, "integer"),
        (10**13, "between 0"),
    ],
)
def test_the_calculator_refuses_bad_cached_counts(cached, message):
    with pytest.raises(InvalidRequest) as refused:
        measure(CalcMethod.TOKENS, {"input_tokens": 10, "output_tokens": 0, "cached_input_tokens": cached})
    assert set(refused.value.details) == {"cached_input_tokens"}
    assert message in str(refused.value.message)


def test_cached_tokens_do_not_apply_to_other_methods():
    for method, data in [("REQUEST", {}), ("CHAR_COUNT", {"characters": 5}), ("IMAGE_RESOLUTION", {"width": 1, "height": 1})]:
        with pytest.raises(InvalidRequest) as refused:
            measure(method, {**data, "cached_input_tokens": 1})
        assert set(refused.value.details) == {"cached_input_tokens"}


# --- Every path that writes usage, against the oracle ----------------------------------------------------


@pytest.fixture
def capped_client(funded, owner):
    key = account_services.api_key_create(organization=funded, name="capped", created_by=owner, spend_cap=D("999999"))
    return key_client(key.secret)


@pytest.mark.parametrize("principal", ["live", "capped", "test"])
def test_random_events_cost_the_oracle_and_keep_their_rates(token_services, principal, request):
    """live: the one-statement hot path; capped and test keys: the transaction path."""
    client = {"live": "live_client", "capped": "capped_client", "test": "test_mode_client"}[principal]
    client = request.getfixturevalue(client)
    organization = request.getfixturevalue("funded")
    rng = random.Random(f"single-{principal}")
    balance = wallet_of(organization).balance
    charged = D(0)

    for n in range(40):
        slug = rng.choice(sorted(token_services))
        event = random_event(rng)
        response = client.post(USAGE, {"service": slug, "idempotency_key": f"e{n}", **event}, format="json")

        assert response.status_code == 201, response.content
        body = response.json()
        expected = expected_for(event, token_services[slug])
        assert body["cost"] == format(expected, "f"), (slug, event, token_services[slug])
        assert body.get("cached_input_tokens") == event.get("cached_input_tokens")
        assert ("cached_input_price" in body) == ("cached_input_tokens" in event)
        record = UsageRecord.objects.get(pk=body["id"])
        assert record.cost == expected
        assert_record_keeps_its_rates(record, event, token_services[slug])
        charged += expected

    assert wallet_of(organization).balance == (balance if principal == "test" else balance - charged)
    assert_money_invariants([organization.pk])


def test_a_batch_costs_the_oracle_per_event(token_services, funded, live_client):
    rng = random.Random("batch")
    events = [
        {"service": rng.choice(sorted(token_services)), "idempotency_key": f"b{n}", **random_event(rng)} for n in range(200)
    ]
    balance = wallet_of(funded).balance

    response = live_client.post(BATCH, {"events": events}, format="json")

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201] * len(events)
    expected = [expected_for(event, token_services[event["service"]]) for event in events]
    assert [r["usage"]["cost"] for r in results] == [format(cost, "f") for cost in expected]
    assert [r["usage"].get("cached_input_tokens") for r in results] == [e.get("cached_input_tokens") for e in events]
    records = {r.idempotency_key: r for r in UsageRecord.objects.filter(organization=funded)}
    for event, cost in zip(events, expected, strict=True):
        record = records[event["idempotency_key"]]
        assert record.cost == cost
        assert_record_keeps_its_rates(record, event, token_services[event["service"]])
    assert wallet_of(funded).balance == balance - sum(expected)
    assert_money_invariants([funded.pk])
    # The batch's answer was built from what it sent; the list reads what was stored: they agree.
    listed = {r["idempotency_key"]: r for r in live_client.get(USAGE, {"page_size": 500}).json()["results"]}
    assert all(listed[r["usage"]["idempotency_key"]] == r["usage"] for r in results)


def test_a_hold_captured_with_cached_tokens_costs_the_oracle(token_services, funded, live_client):
    prices = token_services["tok-0"]  # has a cached rate
    held = live_client.post(
        HOLDS, {"service": "tok-0", "idempotency_key": "h", "input_tokens": 9000, "output_tokens": 500}, format="json"
    )
    assert held.status_code == 201, held.content
    assert held.json()["amount"] == format(
        oracle(
            input_tokens=9000,
            output_tokens=500,
            cached=None,
            input_price=prices["input_price"],
            output_price=prices["output_price"],
            cached_price=None,
        ),
        "f",
    )
    balance = wallet_of(funded).balance
    actual = {"input_tokens": 8000, "cached_input_tokens": 6144, "output_tokens": 321}

    response = live_client.post(f"{HOLDS}{held.json()['id']}/capture/", actual, format="json")

    assert response.status_code == 201, response.content
    expected = expected_for(actual, prices)
    usage = response.json()["usage"]
    assert (usage["cost"], usage["cached_input_tokens"]) == (format(expected, "f"), 6144)
    assert usage["cached_input_price"] == format(prices["cached_input_price"], ".12f")
    record = UsageRecord.objects.get(pk=usage["id"])
    assert_record_keeps_its_rates(record, actual, prices)
    assert Hold.objects.get().status == HoldStatus.CAPTURED
    assert (wallet_of(funded).balance, wallet_of(funded).held) == (balance - expected, D(0))
    assert_money_invariants([funded.pk])
    # A capture again with the same quantities replays; with the cached count left out it is another body.
    again = live_client.post(f"{HOLDS}{held.json()['id']}/capture/", actual, format="json")
    assert (again.status_code, again.json()["usage"]) == (200, usage)
    other = live_client.post(f"{HOLDS}{held.json()['id']}/capture/", {"input_tokens": 8000, "output_tokens": 321}, format="json")
    assert_error(other, 409, "idempotency_conflict")


def test_a_hold_may_reserve_for_cached_maxima(token_services, funded, live_client):
    prices = token_services["tok-2"]
    maxima = {"input_tokens": 4000, "cached_input_tokens": 3000, "output_tokens": 1000}

    response = live_client.post(HOLDS, {"service": "tok-2", "idempotency_key": "h", **maxima}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["amount"] == format(expected_for(maxima, prices), "f")
    assert response.json()["maxima"] == {"quantity": 5000, **maxima}


# --- Without a cached rate, and without cached tokens ------------------------------------------------------


def test_without_a_cached_rate_cached_tokens_cost_the_input_price(funded, live_client):
    # The catalogue's gpt: 0.15 in, 0.60 out per 1M, no cached rate.
    with_cached = live_client.post(
        USAGE,
        {"service": "gpt", "idempotency_key": "a", "input_tokens": 1000, "cached_input_tokens": 600, "output_tokens": 10},
        format="json",
    )
    without = live_client.post(
        USAGE, {"service": "gpt", "idempotency_key": "b", "input_tokens": 1000, "output_tokens": 10}, format="json"
    )

    assert with_cached.json()["cost"] == without.json()["cost"] == "0.000156000000"
    assert with_cached.json()["cached_input_price"] == "0.150000000000"
    record = UsageRecord.objects.get(idempotency_key="a")
    assert (record.cached_input_tokens, record.cached_input_price) == (600, D("0.15"))


def test_an_event_without_cached_tokens_is_recorded_as_before(funded, catalogue, live_client):
    price_add(service=catalogue["gpt"], input_price="2", output_price="8", cached_input_price="1")

    response = live_client.post(
        USAGE, {"service": "gpt", "idempotency_key": "a", "input_tokens": 1000, "output_tokens": 10}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert "cached_input_tokens" not in body and "cached_input_price" not in body
    assert body["cost"] == "0.002080000000"
    record = UsageRecord.objects.get()
    assert (record.cached_input_tokens, record.cached_input_price) == (None, None)


# --- History is never repriced (§2.7) -----------------------------------------------------------------------


def test_a_later_price_never_changes_a_recorded_cost(funded, catalogue, live_client):
    price_add(service=catalogue["gpt"], input_price="2.50", output_price="10", cached_input_price="1.25")
    event = {"input_tokens": 1200, "cached_input_tokens": 1024, "output_tokens": 350}
    first = live_client.post(USAGE, {"service": "gpt", "idempotency_key": "first", **event}, format="json")
    assert first.json()["cost"] == "0.005220000000"  # 176 × 2.50 + 1,024 × 1.25 + 350 × 10, per 1M

    price_add(service=catalogue["gpt"], input_price="3", output_price="12", cached_input_price="0.30")
    second = live_client.post(USAGE, {"service": "gpt", "idempotency_key": "second", **event}, format="json")
    price_add(service=catalogue["gpt"], input_price="3", output_price="12")  # the cached rate withdrawn
    third = live_client.post(USAGE, {"service": "gpt", "idempotency_key": "third", **event}, format="json")

    assert second.json()["cost"] == "0.005035200000"  # 176 × 3 + 1,024 × 0.30 + 350 × 12
    assert third.json()["cost"] == "0.007800000000"  # 1,200 × 3 + 350 × 12
    record = UsageRecord.objects.get(idempotency_key="first")
    assert (record.cost, record.input_price, record.cached_input_price) == (D("0.00522"), D("2.5"), D("1.25"))
    assert live_client.post(USAGE, {"service": "gpt", "idempotency_key": "first", **event}, format="json").json() == first.json()
    listed = {r["idempotency_key"]: r for r in live_client.get(USAGE).json()["results"]}
    assert listed["first"] == first.json()
    assert listed["third"]["cached_input_price"] == "3.000000000000"


def test_a_new_cached_rate_is_charged_from_the_next_request_on(funded, catalogue, live_client):
    """The price in force is cached in each process (billing_site/cache.py); the cached rate travels with it."""
    event = {"service": "gpt", "input_tokens": 1_000_000, "cached_input_tokens": 1_000_000, "output_tokens": 0}
    warm = live_client.post(USAGE, {**event, "idempotency_key": "warm"}, format="json")
    assert warm.json()["cost"] == "0.150000000000"

    price_add(service=catalogue["gpt"], input_price="0.15", output_price="0.60", cached_input_price="0.075")

    assert live_client.post(USAGE, {**event, "idempotency_key": "after"}, format="json").json()["cost"] == "0.075000000000"


# --- Bad input: 400, nothing written -------------------------------------------------------------------------


BAD_CACHED = [
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": 11}, id="more-than-input"),
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": -1}, id="negative"),
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": "5"}, id="string"),
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": 2.5}, id="fraction"),
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": True}, id="boolean"),
    pytest.param({"input_tokens": 10, "output_tokens": 1, "cached_input_tokens": [5]}, id="list"),
]


@pytest.mark.parametrize("quantities", BAD_CACHED)
def test_bad_cached_counts_are_400_and_write_nothing(funded, live_client, quantities):
    before = money_state(funded)

    response = live_client.post(USAGE, {"service": "gpt", "idempotency_key": "bad", **quantities}, format="json")

    error = assert_error(response, 400, "invalid_request")
    assert set(error["details"]) == {"cached_input_tokens"}
    assert money_state(funded) == before


def test_cached_tokens_on_a_service_of_another_method_are_400(funded, live_client):
    before = money_state(funded)

    response = live_client.post(USAGE, {"service": "ping", "idempotency_key": "bad", "cached_input_tokens": 1}, format="json")

    assert assert_error(response, 400, "invalid_request")["details"] == {
        "cached_input_tokens": ["Does not apply to this service."]
    }
    assert money_state(funded) == before


@pytest.mark.parametrize("quantities", BAD_CACHED)
def test_a_batch_refuses_a_bad_cached_count_and_records_the_rest(funded, live_client, quantities):
    balance = wallet_of(funded).balance
    events = [
        {"service": "gpt", "idempotency_key": "good", "input_tokens": 1000, "cached_input_tokens": 1000, "output_tokens": 0},
        {"service": "gpt", "idempotency_key": "bad", **quantities},
    ]

    results = live_client.post(BATCH, {"events": events}, format="json").json()["results"]

    assert [r["status"] for r in results] == [201, 400]
    assert results[1]["error"]["code"] == "invalid_request"
    assert set(results[1]["error"]["details"]) == {"cached_input_tokens"}
    assert list(UsageRecord.objects.values_list("idempotency_key", flat=True)) == ["good"]
    assert wallet_of(funded).balance == balance - D("0.00015")


@pytest.mark.parametrize("quantities", BAD_CACHED)
def test_a_capture_with_a_bad_cached_count_is_400_and_the_hold_stays(funded, live_client, quantities):
    held = live_client.post(HOLDS, {"service": "gpt", "idempotency_key": "h", "amount": "1"}, format="json").json()
    before = money_state(funded)

    response = live_client.post(f"{HOLDS}{held['id']}/capture/", quantities, format="json")

    assert set(assert_error(response, 400, "invalid_request")["details"]) == {"cached_input_tokens"}
    assert money_state(funded) == before
    assert Hold.objects.get().status == HoldStatus.ACTIVE


def test_the_database_refuses_cached_tokens_beyond_the_input_or_without_their_rate(funded, catalogue):
    common = {
        "organization": funded,
        "service": catalogue["gpt"],
        "quantity": 10,
        "input_tokens": 10,
        "output_tokens": 0,
        "cost": D(0),
        "request_hash": "x",
    }
    for n, (cached, rate) in enumerate([(11, D(1)), (-1, D(1)), (5, None), (None, D(1))]):
        with pytest.raises(IntegrityError), transaction.atomic():
            UsageRecord.objects.create(**common, idempotency_key=f"k{n}", cached_input_tokens=cached, cached_input_price=rate)
    with pytest.raises(IntegrityError), transaction.atomic():
        Price.objects.create(service=catalogue["gpt"], input_price=D(1), output_price=D(1), cached_input_price=D(-1))


# --- Hot path: no extra query --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_warm_request_with_cached_tokens_is_still_one_round_trip(funded, catalogue, live_client, django_assert_num_queries):
    price_add(service=catalogue["gpt"], input_price="2.50", output_price="10", cached_input_price="1.25")
    event = {"service": "gpt", "input_tokens": 1200, "cached_input_tokens": 1024, "output_tokens": 350}
    live_client.post(USAGE, {**event, "idempotency_key": "warm-up"}, format="json")

    statements = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with django_assert_num_queries(1), connection.execute_wrapper(record):
        response = live_client.post(USAGE, {**event, "idempotency_key": "measured"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["cost"] == "0.005220000000"
    assert statements == [DEBIT_SQL.wallet]
    assert_money_invariants([funded.pk])


# --- Prices: the staff API, the services list, the back office, the dashboard ----------------------------


def test_staff_set_a_cached_rate_and_customers_see_it(funded, catalogue, staff_client, live_client):
    response = staff_client.post(
        "/api/v1/admin/prices/",
        {"service": "gpt", "input_price": "2.50", "output_price": "10", "cached_input_price": "1.25"},
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["prices"] == {
        "input_price": "2.500000000000",
        "output_price": "10.000000000000",
        "cached_input_price": "1.250000000000",
    }
    assert Price.objects.get(pk=response.json()["id"]).cached_input_price == D("1.25")
    services = {s["slug"]: s for s in live_client.get("/api/v1/services/").json()}
    assert services["gpt"]["prices"] == response.json()["prices"]
    assert services["ping"]["prices"] == {"unit_price": "0.001000000000"}


def test_a_tokens_price_without_a_cached_rate_lists_none(funded, live_client):
    services = {s["slug"]: s for s in live_client.get("/api/v1/services/").json()}
    assert services["gpt"]["prices"] == {"input_price": "0.150000000000", "output_price": "0.600000000000"}


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ({"service": "ping", "unit_price": "0.001", "cached_input_price": "0.5"}, "cached_input_price"),
        ({"service": "gpt", "input_price": "1", "output_price": "1", "cached_input_price": "-0.01"}, "cached_input_price"),
        ({"service": "gpt", "input_price": "1", "output_price": "1", "cached_input_price": "abc"}, "cached_input_price"),
        ({"service": "gpt", "cached_input_price": "0.5"}, "input_price"),  # the cached rate is no input price
    ],
)
def test_staff_api_refuses_a_misplaced_or_bad_cached_rate(funded, catalogue, staff_client, body, refused):
    prices = Price.objects.count()

    response = staff_client.post("/api/v1/admin/prices/", body, format="json")

    assert response.status_code == 400, response.content
    assert refused in response.json()["error"]["details"]
    assert Price.objects.count() == prices


def test_the_back_office_price_form_takes_a_cached_rate_for_tokens_only(db, staff_user):
    tokens = ServiceFactory(slug="chat", calc_method=CalcMethod.TOKENS)
    requests = ServiceFactory(slug="moderate", calc_method=CalcMethod.REQUEST)
    client = Client()
    client.force_login(staff_user)
    form = {"effective_from_0": "2030-01-01", "effective_from_1": "00:00:00"}

    assert 'name="cached_input_price"' in client.get("/admin/metering/price/add/").content.decode()
    saved = client.post(
        "/admin/metering/price/add/",
        {**form, "service": tokens.pk, "input_price": "2.5", "output_price": "10", "cached_input_price": "1.25"},
    )
    refused = client.post(
        "/admin/metering/price/add/", {**form, "service": requests.pk, "unit_price": "1", "cached_input_price": "1"}
    )

    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert Price.objects.get().cached_input_price == D("1.25")
    assert refused.status_code == 200
    assert "cached_input_price" in refused.context["adminform"].form.errors
    assert Price.objects.count() == 1


def test_the_pricing_page_shows_the_cached_rate(funded, catalogue, owner):
    price_add(service=catalogue["gpt"], input_price="2.50", output_price="10", cached_input_price="1.25")
    client = Client()
    client.force_login(owner)

    page = client.get("/dashboard/pricing/").content.decode()

    assert 'data-testid="rate-gpt-cached_input_price"' in page
    assert "per 1M cached input tokens" in page
    assert 'data-testid="rate-ping-cached_input_price"' not in page


# --- Exports keep them -----------------------------------------------------------------------------------------


def test_the_csv_export_and_the_retention_archive_keep_cached_tokens(funded, catalogue, live_client, owner_client, tmp_path):
    price_add(service=catalogue["gpt"], input_price="2.50", output_price="10", cached_input_price="1.25")
    with recorded_at(datetime(2026, 1, 10, 12, 0, tzinfo=UTC)):
        for key, cached in (("cached", {"cached_input_tokens": 1024}), ("plain", {})):
            body = {"service": "gpt", "idempotency_key": key, "input_tokens": 1200, "output_tokens": 350, **cached}
            assert live_client.post(USAGE, body, format="json").status_code == 201

    response = owner_client.get("/api/v1/usage/export.csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == USAGE_CSV_COLUMNS
    exported = {row["idempotency_key"]: row for row in (dict(zip(rows[0], r, strict=True)) for r in rows[1:])}
    assert (exported["cached"]["cached_input_tokens"], exported["cached"]["cached_input_price"]) == ("1024", "1.250000000000")
    assert (exported["plain"]["cached_input_tokens"], exported["plain"]["cached_input_price"]) == ("", "")

    result = usage_retention_run(older_than_days=30, archive_dir=tmp_path, now=datetime(2026, 6, 1, tzinfo=UTC))

    with gzip.open(result.archive, "rt") as archive:
        archived = {row["idempotency_key"]: row for row in map(json.loads, archive)}
    assert (archived["cached"]["cached_input_tokens"], archived["cached"]["cached_input_price"]) == (1024, "1.250000000000")
    assert (archived["plain"]["cached_input_tokens"], archived["plain"]["cached_input_price"]) == (None, None)
