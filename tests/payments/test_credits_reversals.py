"""Reversed credit and grants that expired (docs/credits.md, "Reversals give back"): an upgrade's credit of
the old plan's fee goes back to the grants the fee drew from, and a grant that expired meanwhile gets
its share back and has it written off. The grant may also have been written off already."""

from datetime import UTC, datetime
from decimal import Decimal

from metering.services import subscriptions
from payments.credits import grants_expire
from payments.models import CreditGrant
from tests.factories import wallet_fund
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
