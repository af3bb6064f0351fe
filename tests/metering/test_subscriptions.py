"""Plans and subscriptions, the money (docs/pricing.md, "Plans"): proration against an exact Fraction
oracle, upgrades, downgrades and cancellations at the period end, the period renewal, past_due and its
recovery after a credit."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import Role
from billing_site.money import ZERO
from metering import selectors
from metering.models import PlanAllowance, Subscription, SubscriptionChargeKind, SubscriptionStatus, UsagePosition
from metering.services import subscriptions
from metering.services.positions import period_of
from payments import ledger
from payments import services as payment_services
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.metering.helpers import USAGE
from tests.metering.subscriptions_world import (
    balance,
    charges,
    oracle_fraction,
    oracle_money,
    oracle_units,
    plan_make,
    subscription_transfers,
)

pytestmark = pytest.mark.django_db
FEE_BASIC = "9.999999999999"
FEE_PRO = "49.123456789013"


@pytest.fixture
def ping():
    return service_with_price(slug="ping", unit_price="0.01")


@pytest.fixture
def plans(ping):
    return {
        "basic": plan_make("basic", FEE_BASIC, included={ping: 1_000}, prices={ping: "0.005"}),
        "pro": plan_make("pro", FEE_PRO, included={ping: 10_000}, prices={ping: "0.002"}),
        "free": plan_make("free", "0"),
    }


def _position(organization, service, period) -> UsagePosition:
    return UsagePosition.objects.get(organization=organization, service=service, period=period, test=False)


def _random_moment(rng: random.Random) -> datetime:
    """A moment anywhere in a random month of 2024–2027 (leap February included), with microseconds."""
    start = datetime(rng.randint(2024, 2027), rng.randint(1, 12), 1, tzinfo=UTC)
    days = ((start + timedelta(days=32)).replace(day=1) - start).days
    return start + timedelta(seconds=rng.randrange(days * 86_400), microseconds=rng.randrange(1_000_000))


def test_subscribing_mid_month_pays_the_fee_and_gets_the_included_quantities_pro_rata(organization, plans, ping):
    wallet_fund(organization, "100")
    moment = datetime(2026, 2, 11, 7, 30, 15, 999_999, tzinfo=UTC)
    change = subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=moment)

    fraction = oracle_fraction(moment)
    assert change.outcome == subscriptions.ChangeOutcome.SUBSCRIBED
    [charge] = charges(organization)
    assert (charge.kind, charge.period, charge.amount) == (
        SubscriptionChargeKind.START_FEE,
        moment.date().replace(day=1),
        oracle_money(FEE_BASIC, fraction),
    )
    assert balance(organization) == Decimal(100) - oracle_money(FEE_BASIC, fraction)
    [transfer] = subscription_transfers(organization)
    assert charge.transfer_id == transfer.pk
    assert _position(organization, ping, charge.period).free_until == oracle_units(1_000, fraction)


def test_upgrade_proration_is_exact_to_the_second_at_random_moments(plans, ping):
    rng = random.Random(20260301)
    for attempt in range(8):
        organization = organization_create(name=f"Upgrade {attempt}")
        wallet_fund(organization, "1000")
        start = _random_moment(rng)
        start_period = period_of(start)
        subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=start)
        # The upgrade comes later in the same month (to the second; microseconds are dropped).
        month_end = (start.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        moment = start + timedelta(seconds=rng.randrange(int((month_end - start).total_seconds())))
        before = balance(organization)
        free_before = _position(organization, ping, start_period).free_until

        change = subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)

        fraction = oracle_fraction(moment)
        credit, fee = oracle_money(FEE_BASIC, fraction), oracle_money(FEE_PRO, fraction)
        assert change.outcome == subscriptions.ChangeOutcome.UPGRADED
        upgrade = {c.kind: c for c in charges(organization, kind__in=["upgrade_credit", "upgrade_fee"])}
        assert upgrade["upgrade_credit"].amount == -credit, (start, moment)
        assert upgrade["upgrade_credit"].plan == plans["basic"]
        assert upgrade["upgrade_fee"].amount == fee, (start, moment)
        assert upgrade["upgrade_fee"].plan == plans["pro"]
        assert balance(organization) == before + credit - fee
        assert _position(organization, ping, start_period).free_until == free_before + oracle_units(10_000, fraction)
        assert Subscription.objects.get(organization=organization).plan == plans["pro"]


def test_an_upgrade_the_wallet_cannot_pay_is_refused_and_changes_nothing(organization, plans, ping):
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    wallet_fund(organization, FEE_BASIC)  # exactly the basic plan's full month
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=moment)
    assert balance(organization) == ZERO
    free_until = _position(organization, ping, period_of(moment)).free_until

    with pytest.raises(ledger.InsufficientBalance):
        subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment + timedelta(days=3))

    assert Subscription.objects.get(organization=organization).plan == plans["basic"]
    assert [c.kind for c in charges(organization)] == [SubscriptionChargeKind.START_FEE]
    assert len(subscription_transfers(organization)) == 1
    assert balance(organization) == ZERO
    assert _position(organization, ping, period_of(moment)).free_until == free_until


def test_a_subscription_the_wallet_cannot_pay_is_refused_and_creates_nothing(organization, plans):
    wallet_fund(organization, "1")
    with pytest.raises(ledger.InsufficientBalance):
        subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=datetime(2026, 3, 2, tzinfo=UTC))
    assert not Subscription.objects.filter(organization=organization).exists()
    assert charges(organization) == [] and subscription_transfers(organization) == []
    assert balance(organization) == Decimal(1)


def test_a_downgrade_takes_effect_at_the_period_end(organization, plans, ping):
    wallet_fund(organization, "500")
    march = datetime(2026, 3, 1, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=march)
    change = subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=march + timedelta(days=10))
    assert change.outcome == subscriptions.ChangeOutcome.DOWNGRADE_SCHEDULED
    subscription = Subscription.objects.get(organization=organization)
    assert (subscription.plan, subscription.next_plan) == (plans["pro"], plans["basic"])
    before = balance(organization)

    subscriptions.subscriptions_renew(now=datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC))  # not yet
    assert Subscription.objects.get(organization=organization).plan == plans["pro"]

    april = datetime(2026, 4, 1, 0, 0, 30, tzinfo=UTC)
    subscriptions.subscriptions_renew(now=april)
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.next_plan, subscription.period) == (plans["basic"], None, april.date())
    [fee] = charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE)
    assert (fee.plan, fee.amount, fee.period) == (plans["basic"], Decimal(FEE_BASIC), april.date())
    assert balance(organization) == before - Decimal(FEE_BASIC)
    assert _position(organization, ping, april.date()).free_until == 1_000  # the full month's quantity


def test_a_cancellation_takes_effect_at_the_period_end_without_a_fee(organization, plans):
    wallet_fund(organization, "500")
    march = datetime(2026, 3, 5, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=march)
    change = subscriptions.subscription_cancel(organization_id=organization.pk, now=march + timedelta(days=1))
    assert change.subscription.cancel_at_period_end
    assert Subscription.objects.get(organization=organization).status == SubscriptionStatus.ACTIVE
    before = balance(organization)

    subscriptions.subscriptions_renew(now=datetime(2026, 4, 1, tzinfo=UTC))

    subscription = Subscription.objects.get(organization=organization)
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.canceled_at == datetime(2026, 4, 1, tzinfo=UTC)
    assert balance(organization) == before
    assert charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE) == []
    assert mail.outbox == []  # a chosen cancellation is no alarm


def test_choosing_the_current_plan_undoes_a_scheduled_downgrade_or_cancellation(organization, plans):
    wallet_fund(organization, "500")
    march = datetime(2026, 3, 5, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=march)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=march)
    undone = subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=march)
    assert undone.outcome == subscriptions.ChangeOutcome.SCHEDULE_UNDONE
    assert undone.subscription.next_plan is None
    subscriptions.subscription_cancel(organization_id=organization.pk, now=march)
    undone = subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=march)
    assert undone.outcome == subscriptions.ChangeOutcome.SCHEDULE_UNDONE
    assert not Subscription.objects.get(organization=organization).cancel_at_period_end

    subscriptions.subscriptions_renew(now=datetime(2026, 4, 1, tzinfo=UTC))
    subscription = Subscription.objects.get(organization=organization)
    assert (subscription.status, subscription.plan) == (SubscriptionStatus.ACTIVE, plans["pro"])


def test_the_beat_task_run_twice_charges_one_period_fee(organization, plans):
    wallet_fund(organization, "500")
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=datetime(2026, 3, 5, tzinfo=UTC))
    april = datetime(2026, 4, 1, 0, 1, tzinfo=UTC)
    first = subscriptions.subscriptions_renew(now=april)
    second = subscriptions.subscriptions_renew(now=april + timedelta(minutes=1))
    assert first == {"settled": 1, "failed": 0}
    assert second == {"settled": 0, "failed": 0}  # nothing was due any more
    # Even a settle forced on it again charges nothing.
    subscriptions.subscription_settle(subscription_id=Subscription.objects.get(organization=organization).pk, now=april)
    assert len(charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE)) == 1
    assert len(subscription_transfers(organization)) == 2  # the start fee, then April's


def test_an_unaffordable_fee_makes_the_subscription_past_due_stops_the_plan_and_emails_once(
    organization, owner, plans, ping, live_client, django_capture_on_commit_callbacks, eager_celery
):
    admin, member = UserFactory(), UserFactory()
    organization.memberships.create(user=admin, role=Role.ADMIN)
    organization.memberships.create(user=member, role=Role.MEMBER)
    last_month = timezone.now().replace(day=1) - timedelta(days=3)
    wallet_fund(organization, FEE_BASIC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=last_month)
    wallet_fund(organization, "0.05")  # less than a month of the plan, enough for a few pings
    before = balance(organization)

    with django_capture_on_commit_callbacks(execute=True):
        subscriptions.subscriptions_renew()
    with django_capture_on_commit_callbacks(execute=True):
        subscriptions.subscriptions_renew()  # a second run neither charges nor emails again

    subscription = Subscription.objects.get(organization=organization)
    assert (subscription.status, subscription.period) == (SubscriptionStatus.PAST_DUE, period_of(timezone.now()))
    assert balance(organization) == before  # no money moved
    assert charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE) == []
    assert not UsagePosition.objects.filter(organization=organization, period=subscription.period, free_until__gt=0).exists()
    [email] = mail.outbox
    assert sorted(email.to) == sorted([owner.email, admin.email])
    assert "Basic" in email.subject and "unpaid" in email.subject

    # The plan's price and included quantity stop: the next event is charged the general price, in full.
    response = live_client.post(USAGE, {"service": "ping", "idempotency_key": "after-past-due"}, format="json")
    assert response.status_code == 201, response.content
    assert Decimal(response.json()["cost"]) == Decimal("0.01")
    assert selectors.priced_service_get(slug="ping", organization_id=organization.pk).allowance is False


def test_a_credit_collects_a_past_due_fee_and_grants_the_rest_of_the_month(
    organization, owner, plans, ping, django_capture_on_commit_callbacks, eager_celery
):
    last_month = timezone.now().replace(day=1) - timedelta(days=3)
    wallet_fund(organization, FEE_BASIC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=last_month)
    subscriptions.subscriptions_renew()
    subscription = Subscription.objects.get(organization=organization)
    assert subscription.status == SubscriptionStatus.PAST_DUE

    [code] = payment_services.redemption_codes_generate(
        batch="recovery", amount=Decimal(20), count=1, expires_at=None, created_by=None
    )
    before, earliest = balance(organization), timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        payment_services.code_redeem(organization=organization, user=owner, code=code)
    latest = timezone.now()

    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    [fee] = charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE)
    assert (fee.amount, fee.period, fee.plan) == (Decimal(FEE_BASIC), subscription.period, plans["basic"])  # the full fee
    assert balance(organization) == before + Decimal(20) - Decimal(FEE_BASIC)
    granted = _position(organization, ping, subscription.period).free_until
    assert oracle_units(1_000, oracle_fraction(latest)) <= granted <= oracle_units(1_000, oracle_fraction(earliest))
    assert selectors.priced_service_get(slug="ping", organization_id=organization.pk).allowance is True


def test_a_credit_that_still_cannot_pay_leaves_it_past_due(
    organization, owner, plans, django_capture_on_commit_callbacks, eager_celery
):
    wallet_fund(organization, FEE_BASIC)
    subscriptions.subscription_choose(
        organization_id=organization.pk, plan_slug="basic", now=timezone.now().replace(day=1) - timedelta(days=3)
    )
    wallet_fund(organization, -balance(organization))  # spent on usage, say
    subscriptions.subscriptions_renew()
    before = balance(organization)
    with django_capture_on_commit_callbacks(execute=True):
        wallet_fund(organization, "1")
    assert Subscription.objects.get(organization=organization).status == SubscriptionStatus.PAST_DUE
    assert charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE) == []
    assert balance(organization) == before + Decimal(1)


def test_a_subscription_still_past_due_when_its_period_ends_is_canceled_and_emailed(
    organization, owner, plans, django_capture_on_commit_callbacks, eager_celery
):
    wallet_fund(organization, FEE_BASIC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=datetime(2026, 2, 20, tzinfo=UTC))
    with django_capture_on_commit_callbacks(execute=True):
        subscriptions.subscriptions_renew(now=datetime(2026, 3, 1, tzinfo=UTC))
    assert Subscription.objects.get(organization=organization).status == SubscriptionStatus.PAST_DUE

    with django_capture_on_commit_callbacks(execute=True):
        subscriptions.subscriptions_renew(now=datetime(2026, 4, 1, tzinfo=UTC))

    subscription = Subscription.objects.get(organization=organization)
    assert subscription.status == SubscriptionStatus.CANCELED
    assert charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE) == []
    assert [email.subject for email in mail.outbox] == [
        "[Tollgate] Acme: your Basic plan's fee is unpaid",
        "[Tollgate] Acme: your Basic plan has ended",
    ]
    # Canceled: the organization may subscribe again.
    wallet_fund(organization, "100")
    again = subscriptions.subscription_choose(
        organization_id=organization.pk, plan_slug="basic", now=datetime(2026, 4, 2, tzinfo=UTC)
    )
    assert again.outcome == subscriptions.ChangeOutcome.SUBSCRIBED


def test_a_change_made_before_the_beat_ran_renews_first(organization, plans):
    wallet_fund(organization, "500")
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=datetime(2026, 3, 5, tzinfo=UTC))
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="free", now=datetime(2026, 3, 6, tzinfo=UTC))
    # April came and the beat has not run yet: the upgrade applies April's renewal (the downgrade to free) first.
    moment = datetime(2026, 4, 10, 12, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)
    kinds = [(c.kind, c.plan.slug, c.period.month) for c in charges(organization)]
    assert kinds == [
        ("start_fee", "basic", 3),
        ("period_fee", "free", 4),
        ("upgrade_credit", "free", 4),
        ("upgrade_fee", "pro", 4),
    ]
    assert charges(organization)[-1].amount == oracle_money(FEE_PRO, oracle_fraction(moment))


def test_unknown_and_private_plans_cannot_be_chosen(organization, plans):
    plan_make("staff-only", "1", public=False)
    for slug in ("nope", "staff-only"):
        with pytest.raises(subscriptions.PlanNotFound):
            subscriptions.subscription_choose(organization_id=organization.pk, plan_slug=slug)
    assert not Subscription.objects.filter(organization=organization).exists()


def test_the_price_in_force_follows_the_subscription_at_once(organization, plans, ping):
    """Subscription writes invalidate the cached price in force (metering/apps.py)."""
    wallet_fund(organization, "500")
    assert selectors.priced_service_get(slug="ping", organization_id=organization.pk).prices.unit_price == Decimal("0.01")
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic")
    priced = selectors.priced_service_get(slug="ping", organization_id=organization.pk)
    assert (priced.prices.unit_price, priced.allowance) == (Decimal("0.005"), True)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro")
    assert selectors.priced_service_get(slug="ping", organization_id=organization.pk).prices.unit_price == Decimal("0.002")
    # A quantity staff add to the plan counts from the next request on.
    other = service_with_price(slug="other", unit_price="1")
    assert selectors.priced_service_get(slug="other", organization_id=organization.pk).allowance is False
    PlanAllowance.objects.create(plan=plans["pro"], service=other, quantity=5)
    assert selectors.priced_service_get(slug="other", organization_id=organization.pk).allowance is True
