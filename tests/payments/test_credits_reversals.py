"""Reversed credit and grants that expired (docs/credits.md, "Reversals give back"): an upgrade's credit of
the old plan's fee goes back to the grants the fee drew from, and a grant that expired meanwhile gets
its share back and has it written off. The grant may also have been written off already."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from metering.models import CalcMethod
from metering.services import catalog, subscriptions
from metering.services.true_up import volume_true_ups_run
from payments.credits import grants_expire
from payments.models import CreditGrant
from tests.factories import ServiceFactory, wallet_fund
from tests.metering.helpers import recorded_at
from tests.metering.subscriptions_world import oracle_fraction, oracle_money, plan_make
from tests.payments.credit_world import assert_grant_books, clock_at, expired_credits_total, grant
from tests.payments.helpers import wallet_of

D = Decimal


def test_an_upgrade_after_the_grant_that_paid_the_old_fee_was_written_off(organization):
    """The basic fee (30) came from a promotional grant of 40 that expired and was written off (its last
    10) before the upgrade. The upgrade must go through, and its credit of the basic fee must not
    become money without an expiry: it is expired credit, written off like the rest of the grant."""
    plan_make("basic", "30")
    plan_make("pro", "90")
    start, expiry, moment = (datetime(2027, 3, d, h, tzinfo=UTC) for d, h in ((1, 0), (5, 0), (10, 7)))
    with clock_at(start):
        wallet_fund(organization, "200")
        promo = grant(organization, "40", priority=10, expires_at=expiry)
        subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=start)
    assert CreditGrant.objects.get(pk=promo.pk).remaining == D("10")
    with clock_at(moment):
        assert grants_expire() == 1  # the last 10 written off
        subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)
        grants_expire()

    credit = oracle_money("30", oracle_fraction(moment))
    fee = oracle_money("90", oracle_fraction(moment))
    # the pro fee is paid with ungranted money (the grant is expired); the credit of the basic fee went
    # back to the expired grant and is written off
    assert wallet_of(organization).balance == D("200") - fee
    assert expired_credits_total(organization.pk) == D("10") + credit
    assert CreditGrant.objects.get(pk=promo.pk).remaining == D("0")
    assert_grant_books(organization.pk)


def test_a_volume_true_ups_credit_goes_back_to_the_grants_that_paid_for_the_usage(organization, live_client):
    """A volume price charges each event at the tier its running total reached, and the month's true-up
    credits back the difference once the month is closed (docs/pricing.md). When promotional credit paid
    for that usage, the credit must go back to the grant (as an upgrade's credit does, docs/credits.md
    "Reversals give back"): otherwise it becomes ungranted money, which never expires and which a payment
    refund may pay out as cash."""
    catalog.price_create(
        service=ServiceFactory(slug="tiered-ping", calc_method=CalcMethod.REQUEST),
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="volume",
        tiers=[{"up_to": 3, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )
    promo = grant(organization, "10", priority=10, expires_at=timezone.now() + timedelta(days=30))
    with recorded_at(datetime(2026, 10, 30, 12, tzinfo=UTC)):
        for n in range(5):
            assert (
                live_client.post(
                    "/api/v1/usage/", {"service": "tiered-ping", "idempotency_key": f"v{n}"}, format="json"
                ).status_code
                == 201
            )
    assert CreditGrant.objects.get(pk=promo.pk).remaining == D("6")  # 1 + 1 + 1 + 0.5 + 0.5, all promotional
    assert volume_true_ups_run() == 1  # credits back 4 − 5 × 0.5 = 1.5

    assert wallet_of(organization).balance == D("7.5")
    assert CreditGrant.objects.get(pk=promo.pk).remaining == D("7.5"), "the true-up's credit became ungranted money"
    assert_grant_books(organization.pk)
