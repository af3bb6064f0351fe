"""Positional prices through the API (docs/contract.md §2.11), for every price model and every method:
random sequences of events sent one by one (POST usage/), in batches (usage/batch/) and as holds'
captures (holds/…/capture/), by a live key and a test key interleaved, with a new price midway. Against
the exact oracle (tests/metering/pricing_oracle.py):

- each record's cost and position are the oracle's for the sequence as sent;
- each record's cost re-derives from the record alone (its position, quantities and `pricing`);
- a new price applies from the running position on and never reprices an older record;
- the test key keeps its own positions and moves no money; the wallet equals its ledger.
"""

import random
from decimal import Decimal

import pytest

from metering.models import UsagePosition, UsageRecord
from payments.models import Wallet
from tests.conftest import key_client
from tests.metering import pricing_oracle as oracle
from tests.metering.helpers import BATCH, HOLDS, USAGE
from tests.metering.positional_world import METHODS, MODELS, Expected, oracle_price, price_add, random_event, random_price
from tests.metering.positional_world import service_priced as world_service
from tests.payments.helpers import assert_money_invariants

FUNDS = Decimal("1000000")
STEPS = 18


@pytest.mark.django_db
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_path_charges_the_oracle_at_the_position_taken_and_a_new_price_applies_from_there(
    organization, live_key, test_key, method, model
):
    from tests.factories import wallet_fund

    wallet_fund(organization, FUNDS)
    rng = random.Random(f"{method}-{model}")
    service, sent, free_until = world_service(method, model, rng, organization=organization, events=STEPS * 2)
    expected = Expected(method=method, price=oracle_price(sent), free_until={False: free_until, True: 0})
    clients = {False: key_client(live_key.secret), True: key_client(test_key.secret)}
    price_of_record: dict[int, int] = {}
    price_id = service.prices.get().pk
    before_change: dict[int, Decimal] = {}
    counter = 0

    def key() -> str:
        nonlocal counter
        counter += 1
        return f"e{counter}"

    for step in range(STEPS):
        if step == STEPS // 2:
            # A later price: never reprices what was recorded, applies from the running position on.
            before_change = dict(UsageRecord.objects.values_list("pk", "cost"))
            sent = random_price(method, model, rng, span=STEPS * 2)
            price_id = price_add(service, sent).pk
            expected.price = oracle_price(sent)
        test = rng.random() < 0.3
        client = clients[test]
        path = rng.choice(["single", "single", "batch", "hold"])
        if path == "single":
            data, event = random_event(method, rng)
            position, cost = expected.next(event, test=test)
            response = client.post(USAGE, {"service": service.slug, "idempotency_key": key(), **data}, format="json")
            assert response.status_code == 201, response.content
            answered = [response.json()]
            positions_costs = [(position, cost)]
        elif path == "batch":
            pairs = [random_event(method, rng) for _ in range(rng.randint(2, 5))]
            positions_costs = [expected.next(event, test=test) for _, event in pairs]
            body = {"events": [{"service": service.slug, "idempotency_key": key(), **data} for data, _ in pairs]}
            response = client.post(BATCH, body, format="json")
            assert response.status_code == 200, response.content
            results = response.json()["results"]
            assert [r["status"] for r in results] == [201] * len(pairs), results
            answered = [r["usage"] for r in results]
        else:
            data, event = random_event(method, rng)
            response = client.post(HOLDS, {"service": service.slug, "idempotency_key": key(), "amount": "50"}, format="json")
            assert response.status_code == 201, response.content
            position, cost = expected.next(event, test=test)
            response = client.post(f"{HOLDS}{response.json()['id']}/capture/", data, format="json")
            assert response.status_code == 201, response.content
            answered = [response.json()["usage"]]
            positions_costs = [(position, cost)]
        for body, (position, cost) in zip(answered, positions_costs, strict=True):
            assert Decimal(body["cost"]) == cost, (path, body, position, cost, sent)
            assert body["test"] is test
            expected.records[body["id"]] = (position, cost, test)
            price_of_record[body["id"]] = price_id

    records = {record.pk: record for record in UsageRecord.objects.filter(organization=organization)}
    assert set(records) == set(expected.records)
    for pk, record in records.items():
        position, cost, test = expected.records[pk]
        assert (record.position, record.cost, record.test) == (position, cost, test), (pk, record.pricing)
        assert record.pricing["price_id"] == price_of_record[pk]
        assert oracle.rederive(method, record) == record.cost, (pk, record.pricing)
        assert record.test == (record.transfer_id is None) or record.cost == 0
    for pk, cost in before_change.items():
        assert records[pk].cost == cost
    for test in (False, True):
        taken = sorted(r.position for r in records.values() if r.test == test and r.position is not None)
        assert taken == sorted(p for p, _, t in expected.records.values() if t == test and p is not None)  # each position once
        assert UsagePosition.objects.get(organization=organization, service=service, test=test).used == expected.position[test]
    wallet = Wallet.objects.get(organization=organization)
    assert wallet.balance == FUNDS - expected.live_total()
    assert wallet.held == 0
    assert_money_invariants([organization.pk])


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["tiered", "volume", "package"])
def test_a_zero_quantity_event_costs_nothing_and_takes_no_position(organization, live_client, model):
    from tests.factories import wallet_fund

    wallet_fund(organization, "100")
    rng = random.Random(model)
    service, _, _ = world_service("CHAR_COUNT", model, rng, organization=organization, events=10)
    for n, characters in enumerate([5, 0, 7, 0]):
        response = live_client.post(
            USAGE, {"service": service.slug, "idempotency_key": f"z{n}", "characters": characters}, format="json"
        )
        assert response.status_code == 201, response.content
    records = list(UsageRecord.objects.order_by("pk"))
    assert [r.position for r in records] == [0, None, 5, None]
    assert [r.cost for r in records][1::2] == [0, 0]
    assert UsagePosition.objects.get(organization=organization).used == 12
