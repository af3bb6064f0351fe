"""Low-balance alerts: one per crossing of the threshold, queued after the debit commits, re-armed by
a top-up; an alert that cannot be sent never fails the debit."""

import json
from decimal import Decimal

import pytest
import responses
from django.core import mail
from django.db import transaction
from kombu.exceptions import OperationalError

from payments import ledger, tasks
from payments.models import LedgerEntry, Wallet
from tests.factories import UserFactory, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of
from tests.payments.payment_helpers import hmac_signature

D = Decimal
HOOK = "https://hooks.example.com/tollgate/low-balance"
pytestmark = pytest.mark.usefixtures("eager_celery")


@pytest.fixture
def armed(organization, owner, org_admin, member):
    """A wallet at 100 with a threshold of 50; an owner, an admin and a member."""
    wallet_fund(organization, "100")
    Wallet.objects.filter(organization_id=organization.pk).update(low_balance_threshold=D("50"))
    mail.outbox.clear()
    return organization


def debit(organization, cost: str) -> ledger.Posting:
    return ledger.usage_charge(organization_id=organization.pk, cost=D(cost), reference=f"usage-{cost}")


def debit_through_the_api(organization, cost: str):
    from accounts import services as account_services
    from tests.conftest import key_client

    service_with_price(slug=f"alert-{cost.replace('.', '-')}", unit_price=cost)
    key = account_services.api_key_create(organization=organization, name="alerts")
    response = key_client(key.secret).post(
        "/api/v1/usage/", {"service": f"alert-{cost.replace('.', '-')}", "idempotency_key": f"alert-{cost}"}, format="json"
    )
    assert response.status_code == 201, response.content


def debit_in_a_batch(organization, cost: str):
    with transaction.atomic():
        [posting] = ledger.usage_charge_batch(organization_id=organization.pk, charges=[(D(cost), f"batch-{cost}")])
    assert posting is not None


DEBITS = {"ledger": debit, "usage API": debit_through_the_api, "usage batch": debit_in_a_batch}


@pytest.mark.parametrize("spend", DEBITS.values(), ids=DEBITS.keys())
def test_a_debit_crossing_the_threshold_emails_the_owners_and_admins_once(armed, owner, org_admin, member, spend,
                                                                          django_capture_on_commit_callbacks):  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        spend(armed, "60")

    assert len(callbacks) == 1  # queued after commit
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([owner.email, org_admin.email])
    assert member.email not in message.to
    assert "50" in message.subject and "40" in message.body
    wallet = wallet_of(armed)
    assert wallet.balance == D("40") and wallet.low_balance_alerted is True


@responses.activate
def test_the_alert_webhook_gets_one_signed_post(armed, settings, django_capture_on_commit_callbacks):
    Wallet.objects.filter(organization_id=armed.pk).update(alert_webhook_url=HOOK)
    responses.post(HOOK, status=204)

    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    assert len(responses.calls) == 1
    request = responses.calls[0].request
    body = json.loads(request.body)
    assert body["type"] == "balance.low"
    assert body["organization"] == armed.slug
    assert (D(body["balance"]), D(body["threshold"]), body["currency"]) == (D("40"), D("50"), "USD")
    timestamp = request.headers["Tollgate-Signature"].split(",")[0].removeprefix("t=")
    assert request.headers["Tollgate-Signature"] == hmac_signature(request.body, secret=settings.ALERT_WEBHOOK_SECRET,
                                                                   timestamp=int(timestamp))  # fmt: skip
    assert request.headers["Content-Type"] == "application/json"
    assert len(mail.outbox) == 1


@responses.activate
def test_further_debits_below_the_threshold_send_nothing(armed, django_capture_on_commit_callbacks):
    Wallet.objects.filter(organization_id=armed.pk).update(alert_webhook_url=HOOK)
    responses.post(HOOK, status=200)
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(armed, "5")
        debit(armed, "5")

    assert callbacks == []  # the ledger knows the alert went out: nothing is even queued
    assert len(mail.outbox) == 1
    assert len(responses.calls) == 1
    assert wallet_of(armed).balance == D("30")


def test_debits_that_stay_above_the_threshold_send_nothing(armed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(armed, "50")  # lands exactly on the threshold: not below it

    assert callbacks == []
    assert mail.outbox == []
    assert wallet_of(armed).low_balance_alerted is False


def test_a_wallet_without_a_threshold_never_alerts(organization, owner, django_capture_on_commit_callbacks):
    wallet_fund(organization, "10")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(organization, "10")

    assert callbacks == []
    assert mail.outbox == []


def test_a_top_up_above_the_threshold_re_arms_the_alert(armed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")
        wallet_fund(armed, "5")  # 45: still below, stays disarmed
    assert wallet_of(armed).low_balance_alerted is True
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "1")
    assert len(mail.outbox) == 1

    with django_capture_on_commit_callbacks(execute=True):
        wallet_fund(armed, "6")  # back to 50: re-armed
    assert wallet_of(armed).low_balance_alerted is False
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "0.000000000001")

    assert len(mail.outbox) == 2
    assert wallet_of(armed).low_balance_alerted is True
    assert_money_invariants([armed.pk])


def test_many_debits_that_saw_the_crossing_alert_once(armed, django_capture_on_commit_callbacks):
    """Several debits may commit before the first alert task runs; only one alert goes out."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        debit(armed, "60")
        debit(armed, "1")
        debit(armed, "1")

    assert len(callbacks) == 3
    for callback in callbacks:
        callback()
    assert len(mail.outbox) == 1


def test_a_broker_outage_does_not_fail_the_debit(armed, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(tasks.low_balance_alert, "delay", broker_down)
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert wallet_of(armed).balance == D("40")
    assert mail.outbox == []
    assert wallet_of(armed).low_balance_alerted is False  # not claimed: a later debit tries again


@responses.activate
def test_a_failing_alert_webhook_does_not_fail_the_debit_nor_repeat_the_email(armed, django_capture_on_commit_callbacks):
    Wallet.objects.filter(organization_id=armed.pk).update(alert_webhook_url=HOOK)
    responses.post(HOOK, status=500)
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert len(responses.calls) >= 2  # the webhook is retried …
    assert len(mail.outbox) == 1  # … but the people are emailed once
    assert wallet_of(armed).low_balance_alerted is True


def test_a_failing_mail_server_does_not_fail_the_debit(armed, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens on the discard port
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert wallet_of(armed).balance == D("40")


def test_an_organization_without_managers_emails_no_one(organization, django_capture_on_commit_callbacks):
    organization.memberships.all().delete()
    organization.memberships.create(user=UserFactory(), role="member")
    wallet_fund(organization, "100")
    Wallet.objects.filter(organization_id=organization.pk).update(low_balance_threshold=D("50"))

    with django_capture_on_commit_callbacks(execute=True):
        debit(organization, "60")

    assert mail.outbox == []
    assert wallet_of(organization).low_balance_alerted is True
