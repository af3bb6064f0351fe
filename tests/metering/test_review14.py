"""Hostile review of issue 14 (price models and plans): each test here failed on main when it was written
and names the rule it holds (docs/pricing.md). Money is checked against exact Fraction oracles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.models import CalcMethod, SubscriptionChargeKind, UsagePosition, VolumeTrueUp
from metering.services import catalog, subscriptions
from metering.services.plans import PlanChange, plan_save
from metering.services.positions import period_of
from metering.services.true_up import volume_true_up
from tests.factories import ServiceFactory, service_with_price, wallet_fund
from tests.metering.helpers import USAGE, recorded_at
from tests.metering.subscriptions_world import charges, oracle_fraction, oracle_money, oracle_units, plan_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def ping():
    return service_with_price(slug="ping", unit_price="0.01")


def _free_left(organization, service, period) -> int:
    position = UsagePosition.objects.get(organization=organization, service=service, period=period, test=False)
    return max(0, position.free_until - position.used)


# --- Upgrades ----------------------------------------------------------------------------------------------


def test_an_upgrade_at_once_gives_no_more_included_units_than_subscribing_to_the_bigger_plan(organization, ping):
    """Subscribe to basic (1,000 included) and upgrade to pro (10,000) in the same second: the credit
    gives back all that basic cost, so the customer paid exactly pro's pro-rata fee — and must get pro's
    pro-rata units, not basic's on top (each plan in a chain of upgrades would otherwise add its
    whole allowance for nothing)."""
    plan_make("basic", "10", included={ping: 1_000})
    plan_make("pro", "50", included={ping: 10_000})
    wallet_fund(organization, "100")
    moment = datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC)
    fraction = oracle_fraction(moment)

    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=moment)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)

    paid = -sum((c.amount for c in charges(organization)), Decimal(0))
    assert paid == -oracle_money("50", fraction)  # the money is exactly pro's, pro rata
    # ...and so must the included units be (found: 1,000 + 10,000 — basic's units kept after its fee was refunded).
    assert _free_left(organization, ping, period_of(moment)) == oracle_units(10_000, fraction)


def test_an_upgrade_credits_what_the_old_plan_cost_not_its_fee_as_staff_changed_it_since(organization, ping):
    """Subscribed to basic at 10/month; staff then raise basic to 40. An upgrade at the same moment
    must credit back what basic cost this period (10 × the fraction left), not 40 × it."""
    plan_make("basic", "10")
    plan_make("pro", "50")
    wallet_fund(organization, "100")
    moment = datetime(2026, 3, 11, 8, 0, tzinfo=UTC)
    fraction = oracle_fraction(moment)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=moment)
    plan_save(change=PlanChange(slug="basic", monthly_fee=Decimal("40")), created_by_id=None)

    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)

    [credit] = charges(organization, kind=SubscriptionChargeKind.UPGRADE_CREDIT)
    # found: −(40 × fraction): more than the customer ever paid for basic
    assert credit.amount == -oracle_money("10", fraction)


# --- The volume true-up ----------------------------------------------------------------------------------


def _last_month_noon() -> datetime:
    first = datetime.now(UTC).replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=20)).replace(hour=12)


def test_a_volume_price_changed_mid_period_pays_the_reached_tiers_flat_fee_once(organization, live_client):
    """docs/pricing.md: a tier's flat fee is paid once a period. Two volume prices in one period, each
    with the same single tier (1 per request, flat fee 5): 5 requests cost 5 + 5 once, whichever price
    each was charged at. The true-up must not charge the fee again for the second price."""
    service = ServiceFactory(slug="vol", calc_method=CalcMethod.REQUEST)
    tiers = [{"up_to": None, "unit_price": "1", "flat_fee": "5"}]

    def volume_price():
        catalog.price_create(
            service=service, organization_id=None, effective_from=None, created_by_id=None, model="volume", tiers=tiers
        )

    wallet_fund(organization, "100")
    when = _last_month_noon()
    volume_price()
    with recorded_at(when):
        for n in range(3):
            assert live_client.post(USAGE, {"service": "vol", "idempotency_key": f"a{n}"}, format="json").status_code == 201
        volume_price()  # the same tiers again, a new row (as staff would re-enter it)
        for n in range(2):
            assert live_client.post(USAGE, {"service": "vol", "idempotency_key": f"b{n}"}, format="json").status_code == 201

    volume_true_up(organization_id=organization.pk, service_id=service.pk, period=period_of(when))

    true_up = VolumeTrueUp.objects.get()
    assert true_up.charged == Decimal(10)  # 5 requests × 1 + the flat fee, paid by the first event
    # found: 15 — the flat fee once per price row
    assert true_up.target == Decimal(10)


# --- Batches on a high-volume wallet ------------------------------------------------------------------------


def test_a_positional_batch_on_a_striped_wallet_is_not_refused_while_the_whole_wallet_can_pay(organization, live_client):
    """A batch decides its events as the whole wallet would (ledger.usage_charge_batch). Rising tiers
    (the first 5 requests at 1, then 10 each), the period's position already at 5, a wallet of 30
    spread over its rows: two requests cost 10 + 10 = 20, which the wallet can pay. The rebalance must
    keep what the events really cost on the wallet row, not their price at position 0 (1 + 1)."""
    from payments import ledger
    from payments.models import STRIPES_MIN
    from tests.metering.plan_helpers import use

    service = ServiceFactory(slug="rising", calc_method=CalcMethod.REQUEST)
    catalog.price_create(
        service=service,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="tiered",
        tiers=[{"up_to": 5, "unit_price": "1"}, {"up_to": None, "unit_price": "10"}],
    )
    wallet_fund(organization, "30")
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=STRIPES_MIN)
    use(organization, service, 5)

    events = [{"service": "rising", "idempotency_key": f"r{n}"} for n in range(2)]
    response = live_client.post("/api/v1/usage/batch/", {"events": events}, format="json")

    assert response.status_code in (200, 201, 207), response.json()
    statuses = [item["status"] for item in response.json()["results"]]
    # found: [201, 402] — the rebalance reserved the events' cost at position 0 (2), not their real cost (20)
    assert statuses == [201, 201]
    assert [Decimal(item["usage"]["cost"]) for item in response.json()["results"]] == [10, 10]


def test_an_upgrade_chain_back_and_forth_in_one_month_charges_each_step(organization, ping):
    """Staff move fees so that A → B → A → B are all upgrades in one month: each step is charged and
    credited (found: the second B answered 500 on the charge's unique key)."""
    plan_make("a", "10")
    plan_make("b", "20")
    wallet_fund(organization, "1000")
    moment = datetime(2026, 3, 11, 8, 0, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="a", now=moment)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="b", now=moment)
    plan_save(change=PlanChange(slug="a", monthly_fee=Decimal("30")), created_by_id=None)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="a", now=moment)
    plan_save(change=PlanChange(slug="b", monthly_fee=Decimal("40")), created_by_id=None)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="b", now=moment)
    kinds = [c.kind for c in charges(organization)]
    assert kinds.count(SubscriptionChargeKind.UPGRADE_FEE) == 3
    assert kinds.count(SubscriptionChargeKind.UPGRADE_CREDIT) == 3
