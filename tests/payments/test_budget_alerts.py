"""Budget alerts (docs/credits.md, "Budgets"): once per period per threshold (50/80/100 %), by email to
owners and admins and the organization's signed webhook, queued by the ledger's `budget_alert_signal`
after the usage commits. The spend rows are arranged as the ledger's statement writes them."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import OperationalError

from accounts import services as account_services
from payments import budgets, ledger, tasks
from payments.models import AlertDelivery, Budget, BudgetSpend, Wallet
from tests.concurrency import run_concurrently
from tests.payments.test_alerts import alert_webhook_set, local_receivers, signed_with  # noqa: F401 - a fixture

D = Decimal
pytestmark = pytest.mark.usefixtures("eager_celery")


@pytest.fixture
def budget(organization, owner, org_admin, member) -> Budget:
    mail.outbox.clear()
    return budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"))


def spend(budget: Budget, spent: str, *, period_start=None) -> BudgetSpend:
    """The current period's spend row at `spent`, as the ledger's statement leaves it."""
    start = period_start or budgets.budget_period_start(budget.period, timezone.now())
    row, _ = BudgetSpend.objects.get_or_create(
        organization_id=budget.organization_id,
        budget=budget,
        period_start=start,
        defaults={"amount": budget.amount, "ceiling": budget.amount},
    )
    BudgetSpend.objects.filter(pk=row.pk).update(spent=D(spent))
    return row


def announce(budget: Budget, *rows: BudgetSpend) -> None:
    """What the ledger does after a usage posting commits."""
    ledger.budget_alert_signal.send(sender=Wallet, organization_id=budget.organization_id, spend_ids=[r.pk for r in rows])


def test_each_threshold_emails_the_owners_and_admins_once_per_period(budget, owner, org_admin, member):
    row = spend(budget, "49.99")
    announce(budget, row)
    assert mail.outbox == []

    subjects = []
    for spent in ("50", "60", "80", "99", "100", "250"):
        spend(budget, spent)
        announce(budget, row)
        announce(budget, row)  # the same news twice (two postings) sends nothing more
        subjects = [m.subject for m in mail.outbox]

    assert len(mail.outbox) == 3, subjects
    assert ["50%" in subjects[0], "80%" in subjects[1], "100%" in subjects[2]] == [True, True, True]
    for message in mail.outbox:
        assert sorted(message.to) == sorted([owner.email, org_admin.email])
        assert member.email not in message.to
    assert "refused" in mail.outbox[2].body  # a hard budget says what happens now
    row.refresh_from_db()
    assert row.alerted == 3


def test_a_jump_past_several_thresholds_sends_one_alert_of_the_highest(budget):
    row = spend(budget, "100")

    announce(budget, row)
    announce(budget, row)

    [message] = mail.outbox
    assert "100%" in message.subject
    row.refresh_from_db()
    assert row.alerted == 3


def test_a_new_period_alerts_again(budget):
    this_start = budgets.budget_period_start("month", timezone.now())
    last_month = spend(budget, "90", period_start=budgets.budget_period_start("month", this_start - timedelta(days=1)))
    announce(budget, last_month)
    assert len(mail.outbox) == 1

    this_month = spend(budget, "55")
    announce(budget, this_month)

    assert len(mail.outbox) == 2 and "50%" in mail.outbox[1].subject
    assert BudgetSpend.objects.get(pk=this_month.pk).alerted == 1


def test_a_soft_budget_alerts_as_a_warning(budget):
    budgets.budget_update(budget=budget, mode="soft")
    row = spend(budget, "100")

    announce(budget, row)

    [message] = mail.outbox
    assert "soft budget" in message.body and "refused" not in message.body


def test_a_key_budget_names_the_key(organization, budget):
    key = account_services.api_key_create(organization=organization, name="Batch jobs").api_key
    key_budget = budgets.budget_create(organization_id=organization.pk, api_key_id=key.pk, period="day", amount=D("10"))
    row = spend(key_budget, "8")

    announce(key_budget, row)

    [message] = mail.outbox
    assert "80%" in message.subject and "Batch jobs" in message.subject and "daily" in message.subject


@pytest.mark.django_db(transaction=True)
def test_concurrent_alert_tasks_send_each_threshold_once(organization, owner, org_admin):
    budget = budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="week", amount=D("10"))
    row = spend(budget, "8.5")
    mail.outbox.clear()

    levels = run_concurrently(8, lambda _: tasks.budget_alert(row.pk), reraise=True)

    assert sorted(levels) == [0] * 7 + [2]
    assert len(mail.outbox) == 1
    assert BudgetSpend.objects.get(pk=row.pk).alerted == 2


def test_a_deleted_budget_alerts_no_one(budget):
    row = spend(budget, "90")
    budgets.budget_delete(budget=budget)

    announce(budget, row)

    assert mail.outbox == []


def test_a_broker_outage_leaves_the_level_unclaimed(budget, monkeypatch):
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(tasks.budget_alert, "delay", broker_down)
    row = spend(budget, "90")

    announce(budget, row)  # does not raise: the usage already committed

    assert mail.outbox == []
    assert BudgetSpend.objects.get(pk=row.pk).alerted == 0  # the next posting's signal tries again


@pytest.mark.usefixtures("local_receivers")
def test_the_alert_webhook_gets_a_signed_budget_threshold(budget, organization, hook_server):
    receiver = hook_server()
    alert_webhook_set(organization, receiver.url("/tollgate/budget", host="hooks.example.com"))
    row = spend(budget, "81.5")

    announce(budget, row)
    announce(budget, row)

    [request] = receiver.requests
    body = json.loads(request.body)
    assert body["type"] == "budget.threshold"
    assert (body["organization"], body["budget"], body["scope"], body["api_key"]) == (
        organization.slug,
        budget.pk,
        "organization",
        None,
    )
    assert (body["period"], body["mode"], body["percent"]) == ("month", "hard", 80)
    assert (D(body["spent"]), D(body["amount"]), body["currency"]) == (D("81.5"), D("100"), "USD")
    assert body["resets_at"] == budgets.budget_period_end("month", timezone.now()).isoformat()
    assert signed_with(request, Wallet.objects.get(organization=organization).alert_signing_secret)
    [delivery] = AlertDelivery.objects.filter(organization=organization)
    assert (delivery.kind, delivery.delivered) == ("budget.threshold", True)
    assert len(mail.outbox) == 1


@pytest.mark.usefixtures("local_receivers")
def test_a_failing_webhook_is_retried_without_repeating_the_email(budget, organization, hook_server):
    receiver = hook_server(status=500)
    alert_webhook_set(organization, receiver.url(host="hooks.example.com"))
    row = spend(budget, "50")

    announce(budget, row)

    assert len(receiver.requests) >= 2  # retried …
    assert len(mail.outbox) == 1  # … the people emailed once
    assert BudgetSpend.objects.get(pk=row.pk).alerted == 1
    assert AlertDelivery.objects.filter(organization=organization, kind="budget.threshold", delivered=False).count() >= 2


def test_raising_the_amount_re_arms_the_alerts_below_it(budget):
    row = spend(budget, "85")
    announce(budget, row)
    assert len(mail.outbox) == 1

    budgets.budget_update(budget=budget, amount=D("200"))
    BudgetSpend.objects.filter(pk=row.pk).update(spent=F("spent") + D("20"))  # 105 of 200
    announce(budget, row)

    assert len(mail.outbox) == 2 and "50%" in mail.outbox[1].subject
