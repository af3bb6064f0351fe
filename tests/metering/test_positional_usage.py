"""Positional prices on the usage paths: each event priced at the position it took (docs/pricing.md)."""

from decimal import Decimal as D
from fractions import Fraction

import pytest

from metering.models import CalcMethod, UsagePosition, UsageRecord
from metering.services import catalog
from tests.concurrency import run_concurrently
from tests.conftest import key_client
from tests.factories import ServiceFactory, wallet_fund

USAGE = "/api/v1/usage/"


def tiered_requests(slug="tiered-ping", tiers=None, model="tiered"):
    service = ServiceFactory(slug=slug, calc_method=CalcMethod.REQUEST)
    catalog.price_create(
        service=service,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model=model,
        tiers=tiers or [{"up_to": 3, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )
    return service


@pytest.mark.django_db
def test_tiered_requests_cost_their_tier_in_order(organization, live_client):
    wallet_fund(organization, "100")
    tiered_requests()
    costs = []
    for n in range(5):
        response = live_client.post(USAGE, {"service": "tiered-ping", "idempotency_key": f"k{n}"}, format="json")
        assert response.status_code == 201, response.json()
        costs.append(D(response.json()["cost"]))
    assert costs == [1, 1, 1, D("0.5"), D("0.5")]
    assert sorted(UsageRecord.objects.values_list("position", flat=True)) == [0, 1, 2, 3, 4]
    assert UsagePosition.objects.get().used == 5


@pytest.mark.django_db
def test_a_tokens_event_spanning_tiers_is_split_input_first(organization, live_client):
    wallet_fund(organization, "100")
    service = ServiceFactory(slug="tiered-gpt", calc_method=CalcMethod.TOKENS)
    catalog.price_create(
        service=service,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="tiered",
        tiers=[
            {"up_to": 1000, "input_price": "2", "output_price": "8"},
            {"up_to": None, "input_price": "1", "output_price": "4"},
        ],
    )
    body = {"service": "tiered-gpt", "idempotency_key": "a", "input_tokens": 900, "output_tokens": 300}
    response = live_client.post(USAGE, body, format="json")
    assert response.status_code == 201, response.json()
    # 900 input in tier 1, then 100 output in tier 1 and 200 output in tier 2 (per 1M tokens)
    expected = (Fraction(900 * 2) + Fraction(100 * 8) + Fraction(200 * 4)) / 1_000_000
    assert Fraction(D(response.json()["cost"])) == expected


@pytest.mark.django_db(transaction=True)
def test_concurrent_events_never_share_a_position_and_total_the_sequential_oracle(organization, live_key):
    wallet_fund(organization, "1000")
    tiered_requests(tiers=[{"up_to": 300, "unit_price": "1"}, {"up_to": None, "unit_price": "0.25"}])

    def work(thread):
        client = key_client(live_key.secret)
        for n in range(50):
            response = client.post(USAGE, {"service": "tiered-ping", "idempotency_key": f"t{thread}-{n}"}, format="json")
            assert response.status_code == 201, response.content

    run_concurrently(16, work, reraise=True)
    positions = list(UsageRecord.objects.values_list("position", flat=True))
    assert sorted(positions) == list(range(800))
    total = sum(UsageRecord.objects.values_list("cost", flat=True))
    assert total == 300 * 1 + 500 * D("0.25")
    from payments.models import Wallet

    assert Wallet.objects.get(organization=organization).balance == D(1000) - total
