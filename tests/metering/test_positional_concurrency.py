"""Positional prices under concurrency (docs/contract.md §2.11): 16 threads × 50 requests, each one
unit, crossing tier, package and allowance edges, on the hot path (one guarded statement per event).
Whatever the interleaving, every position 0..n−1 is taken exactly once, the total is the exact oracle's
for the events in position order, the wallet equals its ledger and never goes below its limit; with a
wallet that affords only part of it, the refused events take no position (the taken ones stay
contiguous) and the accepted ones are exactly those the oracle's sequential order accepts."""

from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import CalcMethod, Plan, PlanAllowance, Subscription, UsagePosition, UsageRecord
from metering.services.positions import period_of, position_grant
from payments.models import LedgerEntry, Wallet
from tests.concurrency import run_concurrently
from tests.conftest import key_client
from tests.factories import ServiceFactory, wallet_fund
from tests.metering import pricing_oracle as oracle
from tests.metering.helpers import USAGE
from tests.metering.positional_world import oracle_price, price_add
from tests.payments.helpers import assert_money_invariants

pytestmark = pytest.mark.slow

THREADS, EACH = 16, 50
TIERS = [
    {"up_to": 300, "unit_price": "1"},
    {"up_to": 600, "unit_price": "0.5", "flat_fee": "2"},
    {"up_to": None, "unit_price": "0.250000000001"},
]
PRICES = {
    "per_unit": ({"model": "per_unit", "unit_price": "0.370000000003"}, 300),  # 300 units included by a plan
    "tiered": ({"model": "tiered", "tiers": TIERS}, 0),
    "volume": ({"model": "volume", "tiers": TIERS}, 0),
    "package": ({"model": "package", "package_size": 7, "unit_price": "1.3"}, 0),
}
ONE = {"quantity": 1}


def priced_service(organization, model: str):
    sent, free_until = PRICES[model]
    service = ServiceFactory(slug=f"conc-{model}", calc_method=CalcMethod.REQUEST)
    price_add(service, sent)
    if free_until:
        plan = Plan.objects.create(slug="conc-plan", name="Plan", monthly_fee=Decimal(0))
        PlanAllowance.objects.create(plan=plan, service=service, quantity=free_until)
        period = period_of(timezone.now())
        Subscription.objects.create(organization=organization, plan=plan, period=period)
        position_grant(organization_id=organization.pk, service_id=service.pk, period=period, units=free_until)
    return service, oracle_price(sent), free_until


def sequential(price, free_until: int, funds: Decimal | None) -> list[Decimal]:
    """The oracle's costs of the events accepted one after another (all of them when `funds` is None):
    an event starts only while the wallet has something available and ends at or above zero."""
    accepted: list[Decimal] = []
    available = funds
    for position in range(THREADS * EACH):
        cost = oracle.cost("REQUEST", ONE, price, start=position, free_until=free_until)
        if available is not None:
            if available <= 0 or available < cost:
                break  # every later event would be priced at this same position, and refused too
            available -= cost
        accepted.append(cost)
    return accepted


def hammer(live_key, service) -> list[int]:
    def work(thread: int) -> list[int]:
        client = key_client(live_key.secret)
        statuses = []
        for n in range(EACH):
            response = client.post(USAGE, {"service": service.slug, "idempotency_key": f"t{thread}-{n}"}, format="json")
            assert response.status_code in (201, 402), response.content
            statuses.append(response.status_code)
        return statuses

    return [status for statuses in run_concurrently(THREADS, work, reraise=True) for status in statuses]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", list(PRICES))
def test_concurrent_events_take_each_position_once_and_cost_the_sequential_oracle(organization, live_key, model):
    service, price, free_until = priced_service(organization, model)
    wallet_fund(organization, "10000")
    expected = sequential(price, free_until, None)

    statuses = hammer(live_key, service)

    assert statuses.count(201) == THREADS * EACH
    records = UsageRecord.objects.filter(organization=organization)
    assert sorted(records.values_list("position", flat=True)) == list(range(THREADS * EACH))
    for record in records:
        assert record.cost == expected[record.position], (record.position, record.cost)
        assert oracle.rederive("REQUEST", record) == record.cost
    total = sum(expected, Decimal(0))
    assert sum(records.values_list("cost", flat=True)) == total
    assert UsagePosition.objects.get(organization=organization, service=service, test=False).used == THREADS * EACH
    assert Wallet.objects.get(organization=organization).balance == Decimal(10000) - total
    assert_money_invariants([organization.pk])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", list(PRICES))
def test_a_wallet_that_affords_part_refuses_the_rest_and_they_take_no_position(organization, live_key, model):
    service, price, free_until = priced_service(organization, model)
    everything = sequential(price, free_until, None)
    funds = sum(everything[:500], Decimal(0)) + Decimal("0.123")  # about 500 of the 800 fit
    wallet_fund(organization, funds)
    expected = sequential(price, free_until, funds)
    assert 300 < len(expected) < THREADS * EACH

    statuses = hammer(live_key, service)

    assert statuses.count(201) == len(expected)
    assert statuses.count(402) == THREADS * EACH - len(expected)
    records = UsageRecord.objects.filter(organization=organization)
    assert sorted(records.values_list("position", flat=True)) == list(range(len(expected)))
    for record in records:
        assert record.cost == expected[record.position], (record.position, record.cost)
    total = sum(expected, Decimal(0))
    assert sum(records.values_list("cost", flat=True)) == total
    assert UsagePosition.objects.get(organization=organization, service=service, test=False).used == len(expected)
    wallet = Wallet.objects.get(organization=organization)
    assert wallet.balance == funds - total >= 0
    # never below its limit (0) at any commit, not only at the end
    assert (
        min(LedgerEntry.objects.filter(organization=organization, account="wallet").values_list("balance_after", flat=True)) >= 0
    )
    assert_money_invariants([organization.pk])
