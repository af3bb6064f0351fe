"""Auto top-up under concurrency: real threads on real transactions, as the signal's tasks would run."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payments import tasks
from payments.models import Payment, PaymentStatus
from tests.concurrency import run_concurrently
from tests.factories import organization_create, wallet_fund
from tests.payments.auto_helpers import auto_enable, stripe_card_save
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal
THREADS = 50

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def queued_not_run(settings):
    """Tasks are queued, not run inline, whatever an earlier test left: turning auto top-up on below the
    threshold queues one, and it must not start the top-up before the threads race for it."""
    from billing_site.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    overridden, previous = "task_always_eager" in app.conf.changes, app.conf.changes.get("task_always_eager")
    app.conf.task_always_eager = False
    yield
    # Put back exactly what was there: an override left behind would outlive the settings fixture.
    if overridden:
        app.conf.task_always_eager = previous
    else:
        app.conf.changes.pop("task_always_eager", None)


def test_fifty_concurrent_triggers_start_exactly_one_top_up_and_one_charge(fake_stripe):
    organization = organization_create(name="Racers")
    wallet_fund(organization, "3")
    stripe_card_save(organization)
    auto_enable(organization, threshold="5", amount="20", monthly_max="1000", provider="stripe", payment_method=None)
    assert not Payment.objects.filter(organization=organization).exists()

    results = run_concurrently(THREADS, lambda _: tasks.auto_recharge_run(organization.pk), reraise=True)

    auto = list(Payment.objects.filter(organization=organization, auto=True))
    assert len(auto) == 1
    assert auto[0].status == PaymentStatus.PENDING
    assert (results.count(PaymentStatus.PENDING), results.count(None)) == (1, THREADS - 1)
    assert len(fake_stripe.intent_requests()) == 1
    assert len(fake_stripe.charges) == 1
    assert fake_stripe.charges[0]["metadata"]["payment_id"] == str(auto[0].pk)
    assert wallet_of(organization).balance == D("3")
    assert_money_invariants([organization.pk])


def test_concurrent_triggers_across_organizations_start_one_each(fake_stripe):
    organizations = [organization_create(name=f"Org {i}") for i in range(5)]
    for organization in organizations:
        wallet_fund(organization, "1")
        stripe_card_save(organization, customer=f"cus_fake_{organization.pk}")
        auto_enable(organization, threshold="5", amount="20", provider="stripe", payment_method=None)

    run_concurrently(THREADS, lambda i: tasks.auto_recharge_run(organizations[i % 5].pk), reraise=True)

    for organization in organizations:
        assert Payment.objects.filter(organization=organization, auto=True, status=PaymentStatus.PENDING).count() == 1
    assert sorted(r.params["customer"] for r in fake_stripe.intent_requests()) == sorted(
        f"cus_fake_{o.pk}" for o in organizations
    )
    assert_money_invariants([o.pk for o in organizations])
