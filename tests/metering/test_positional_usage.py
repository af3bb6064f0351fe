"""Positional prices on the usage paths: each event priced at the position it took (docs/pricing.md)."""

from decimal import Decimal
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
        costs.append(Decimal(response.json()["cost"]))
    assert costs == [1, 1, 1, Decimal("0.5"), Decimal("0.5")]
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
    assert Fraction(Decimal(response.json()["cost"])) == expected


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
    assert total == 300 * 1 + 500 * Decimal("0.25")
    from payments.models import Wallet

    assert Wallet.objects.get(organization=organization).balance == Decimal(1000) - total


@pytest.mark.django_db
def test_a_batch_prices_its_events_in_order_and_refused_ones_take_no_position(organization, live_client):
    wallet_fund(organization, "2.5")
    tiered_requests()
    events = [{"service": "tiered-ping", "idempotency_key": f"b{n}"} for n in range(4)]
    response = live_client.post("/api/v1/usage/batch/", {"events": events}, format="json")
    assert response.status_code in (200, 207), response.json()
    statuses = [result["status"] for result in response.json()["results"]]
    # $1 + $1 fit, the third ($1) does not fit the $0.5 left; the fourth neither (still tier 1: no position taken)
    assert statuses == [201, 201, 402, 402]
    assert sorted(UsageRecord.objects.values_list("position", flat=True)) == [0, 1]
    assert UsagePosition.objects.get().used == 2


@pytest.mark.django_db
def test_a_hold_reserves_the_dearest_tier_and_captures_at_its_position(organization, live_client):
    wallet_fund(organization, "100")
    tiered_requests(tiers=[{"up_to": 1, "unit_price": "0.5"}, {"up_to": None, "unit_price": "2"}])
    response = live_client.post("/api/v1/holds/", {"service": "tiered-ping", "idempotency_key": "h"}, format="json")
    assert response.status_code == 201, response.json()
    assert Decimal(response.json()["amount"]) == 2
    hold_id = response.json()["id"]
    response = live_client.post(f"/api/v1/holds/{hold_id}/capture/", {}, format="json")
    assert response.status_code == 201, response.json()
    assert Decimal(response.json()["usage"]["cost"]) == Decimal("0.5")
    assert UsageRecord.objects.get().position == 0


@pytest.mark.django_db(transaction=True)
def test_the_volume_true_up_credits_the_difference_once_even_run_twice_concurrently(organization, live_client):
    from datetime import UTC, datetime

    from metering.models import VolumeTrueUp
    from metering.services.true_up import volume_true_ups_run
    from payments.models import LedgerEntry, Transfer, Wallet
    from tests.metering.helpers import recorded_at

    wallet_fund(organization, "100")
    tiered_requests(model="volume")
    with recorded_at(datetime(2026, 10, 30, 12, tzinfo=UTC)):
        costs = [
            Decimal(live_client.post(USAGE, {"service": "tiered-ping", "idempotency_key": f"v{n}"}, format="json").json()["cost"])
            for n in range(5)
        ]
    assert costs == [1, 1, 1, Decimal("0.5"), Decimal("0.5")]  # each at the tier its running total reached
    results = run_concurrently(2, lambda _: volume_true_ups_run(), reraise=True)
    assert sorted(results) == [0, 1]
    true_up = VolumeTrueUp.objects.get()
    assert (true_up.charged, true_up.target) == (Decimal(4), Decimal("2.5"))  # 5 requests at the reached tier's $0.5
    transfer = Transfer.objects.get(reference__startswith="true-up:")
    assert LedgerEntry.objects.get(transfer=transfer, account="wallet").amount == Decimal("1.5")
    assert volume_true_ups_run() == 0
    wallet = Wallet.objects.get(organization=organization)
    assert wallet.balance == Decimal(100) - Decimal("2.5")
    assert wallet.balance == sum(
        LedgerEntry.objects.filter(organization=organization, account="wallet").values_list("amount", flat=True)
    )


@pytest.mark.django_db
def test_a_plans_included_units_are_free_first_then_the_price_applies(organization, live_client, catalogue):
    from django.utils import timezone

    from metering.models import Plan, PlanAllowance, Subscription
    from metering.services.positions import period_of, position_grant

    wallet_fund(organization, "10")
    plan = Plan.objects.create(slug="starter", name="Starter", monthly_fee=Decimal("5"))
    PlanAllowance.objects.create(plan=plan, service=catalogue["ping"], quantity=3)
    period = period_of(timezone.now())
    Subscription.objects.create(organization=organization, plan=plan, period=period)
    position_grant(organization_id=organization.pk, service_id=catalogue["ping"].pk, period=period, units=3)
    responses = [live_client.post(USAGE, {"service": "ping", "idempotency_key": f"p{n}"}, format="json") for n in range(5)]
    assert [r.status_code for r in responses] == [201] * 5
    assert [Decimal(r.json()["cost"]) for r in responses] == [0, 0, 0, Decimal("0.001"), Decimal("0.001")]
    assert sorted(UsageRecord.objects.values_list("position", flat=True)) == [0, 1, 2, 3, 4]
    from payments.models import Wallet

    assert Wallet.objects.get(organization=organization).balance == Decimal("9.998")


@pytest.mark.django_db
def test_the_usage_answer_shows_the_position_and_the_tiers_it_was_priced_with(organization, live_client):
    wallet_fund(organization, "100")
    tiered_requests()
    live_client.post(USAGE, {"service": "tiered-ping", "idempotency_key": "first"}, format="json")
    body = live_client.post(USAGE, {"service": "tiered-ping", "idempotency_key": "second"}, format="json").json()
    assert body["position"] == 1
    assert body["pricing"]["model"] == "tiered"
    assert body["pricing"]["tiers"] == [{"up_to": 3, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}]
    batch = live_client.post(
        "/api/v1/usage/batch/", {"events": [{"service": "tiered-ping", "idempotency_key": "third"}]}, format="json"
    ).json()
    assert batch["results"][0]["usage"]["position"] == 2
