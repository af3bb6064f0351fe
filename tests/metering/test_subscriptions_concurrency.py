"""Period renewals under concurrency and crashes: real threads on real transactions, and a real
worker process killed (SIGKILL) between the fee's debit and the period's reset."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from metering.models import Subscription, SubscriptionChargeKind, SubscriptionStatus
from metering.services import subscriptions
from tests.concurrency import run_concurrently
from tests.factories import service_with_price, wallet_fund
from tests.metering.subscriptions_world import balance, charges, plan_make, subscription_transfers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
MARCH = datetime(2026, 3, 10, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, 0, 0, 5, tzinfo=UTC)
FEE = "12.345678901234"


@pytest.fixture
def subscribed(organization):
    ping = service_with_price(slug="ping", unit_price="0.01")
    plan_make("pro", FEE, included={ping: 100})
    wallet_fund(organization, "100")
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=MARCH)
    return Subscription.objects.get(organization=organization)


def test_two_beat_runs_at_once_charge_one_period_fee(organization, subscribed):
    before = balance(organization)
    results = run_concurrently(2, lambda _: subscriptions.subscriptions_renew(now=APRIL), reraise=True)

    assert sorted(result["failed"] for result in results) == [0, 0]
    [fee] = charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE)
    assert fee.amount == Decimal(FEE)
    assert len(subscription_transfers(organization)) == 2  # March's start fee, April's fee
    assert balance(organization) == before - Decimal(FEE)
    subscribed.refresh_from_db()
    assert (subscribed.status, subscribed.period) == (SubscriptionStatus.ACTIVE, APRIL.date())


def test_two_first_subscriptions_at_once_make_one(organization):
    plan_make("pro", FEE)
    wallet_fund(organization, "100")
    results = run_concurrently(
        2,
        lambda _: subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=MARCH).outcome,
        reraise=True,
    )
    assert sorted(results) == [subscriptions.ChangeOutcome.SUBSCRIBED, subscriptions.ChangeOutcome.UNCHANGED]
    assert Subscription.objects.filter(organization=organization).count() == 1
    assert len(charges(organization)) == 1


def _renew_and_hang(organization_id: int, charged) -> None:
    """The worker: renew, but hang inside the transaction right after the period's fee was debited and
    recorded, before the period is reset (the parent kills it there). Runs in a forked process, with
    its own database connection."""
    charge = subscriptions._charge

    def charge_then_hang(subscription, **kwargs):
        recorded = charge(subscription, **kwargs)
        if kwargs["kind"] == SubscriptionChargeKind.PERIOD_FEE:
            charged.set()
            time.sleep(120)
        return recorded

    subscriptions._charge = charge_then_hang
    subscriptions.subscriptions_renew(now=APRIL)


def test_a_worker_killed_between_the_fee_and_the_period_reset_charges_once_when_run_again(organization, subscribed):
    before = balance(organization)
    connection.close()  # the child opens its own; it must not share this socket
    context = multiprocessing.get_context("fork")
    charged = context.Event()
    worker = context.Process(target=_renew_and_hang, args=(organization.pk, charged), daemon=True)
    worker.start()
    try:
        assert charged.wait(timeout=60), "the worker never reached the fee"
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGKILL

    # Nothing of the killed renewal stayed: no charge, no transfer, the period not advanced.
    assert charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE) == []
    assert len(subscription_transfers(organization)) == 1
    assert balance(organization) == before
    subscribed.refresh_from_db()
    assert subscribed.period == MARCH.date().replace(day=1)

    assert subscriptions.subscriptions_renew(now=APRIL) == {"settled": 1, "failed": 0}
    assert subscriptions.subscriptions_renew(now=APRIL) == {"settled": 0, "failed": 0}
    [fee] = charges(organization, kind=SubscriptionChargeKind.PERIOD_FEE)
    assert fee.amount == Decimal(FEE)
    assert len(subscription_transfers(organization)) == 2
    assert balance(organization) == before - Decimal(FEE)
    subscribed.refresh_from_db()
    assert subscribed.period == APRIL.date()
