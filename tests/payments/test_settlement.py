"""services.payment_settle and payments_sweep: a payment is credited at most once (docs/contract.md §2.5)."""

import uuid
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from payments import services, tasks
from payments.models import Payment, PaymentStatus, WebhookEvent
from tests.concurrency import run_concurrently
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of
from tests.payments.payment_helpers import assert_credited_once, post_sandbox, recharge_credits, sandbox_body, sandbox_payment

D = Decimal


def stored_event(payment, *, event_type: str = "payment.succeeded", event_id: str | None = None) -> WebhookEvent:
    """A verified notification stored by the real webhook endpoint whose settlement message was
    lost (as if the broker or the worker died): stored, not processed."""
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    with mock.patch.object(tasks.payment_settle, "delay") as queued:
        response = post_sandbox(APIClient(), sandbox_body(payment, event_type=event_type, event_id=event_id))
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get(event_id=event_id)
    assert event.processed_at is None
    assert queued.call_count in (0, 1)  # 1 when the transaction really committed (transaction=True tests)
    return event


def test_settle_credits_the_wallet_and_marks_the_event_processed(organization):
    payment = sandbox_payment(organization, "40.00")
    event = stored_event(payment)

    settled = services.payment_settle(event_id=event.pk)

    assert settled.pk == payment.pk and settled.status == PaymentStatus.SUCCEEDED
    assert_credited_once(payment)
    event.refresh_from_db()
    assert event.processed_at is not None
    assert wallet_of(organization).balance == D("40")
    assert_money_invariants([organization.pk])


def test_settle_run_twice_credits_once(organization):
    payment = sandbox_payment(organization, "40.00")
    event = stored_event(payment)
    services.payment_settle(event_id=event.pk)
    before = money_state(organization)

    again = services.payment_settle(event_id=event.pk)

    assert again.status == PaymentStatus.SUCCEEDED
    assert money_state(organization) == before
    assert_credited_once(payment)


def test_settle_of_an_unknown_event_does_nothing(organization):
    before = money_state(organization)

    assert services.payment_settle(event_id=987654321) is None
    assert money_state(organization) == before


def test_settle_task_reports_the_payment_status(organization):
    payment = sandbox_payment(organization, "40.00")
    failed = sandbox_payment(organization, "15.00")
    success, failure = stored_event(payment), stored_event(failed, event_type="payment.failed")

    assert tasks.payment_settle.apply(args=[success.pk]).get() == "succeeded"
    assert tasks.payment_settle.apply(args=[failure.pk]).get() == "failed"
    assert tasks.payment_settle.apply(args=[987654321]).get() is None
    assert wallet_of(organization).balance == D("40")


# --- The sweeper --------------------------------------------------------------------------------------


def test_sweep_settles_stored_but_unprocessed_events(organization):
    payment = sandbox_payment(organization, "40.00")
    failed = sandbox_payment(organization, "15.00")
    stored_event(payment)
    stored_event(failed, event_type="payment.failed")

    fresh = services.payments_sweep()  # younger than a minute: the worker may still be on it
    later = services.payments_sweep(now=timezone.now() + timedelta(seconds=61))

    assert fresh == {"settled": 0, "canceled": 0, "receipts": 0}
    assert later == {"settled": 2, "canceled": 0, "receipts": 0}
    assert_credited_once(payment)
    failed.refresh_from_db()
    assert failed.status == PaymentStatus.FAILED
    assert not WebhookEvent.objects.filter(processed_at__isnull=True).exists()
    assert services.payments_sweep(now=timezone.now() + timedelta(seconds=61)) == {"settled": 0, "canceled": 0, "receipts": 0}
    assert wallet_of(organization).balance == D("40")


def test_sweep_cancels_pending_payments_older_than_the_ttl(organization, settings):
    settings.PAYMENT_PENDING_TTL = timedelta(hours=2)
    stale = sandbox_payment(organization, "10.00")
    succeeded = sandbox_payment(organization, "20.00")
    services.payment_settle(event_id=stored_event(succeeded).pk)
    now = timezone.now()
    before = money_state(organization)

    untouched = services.payments_sweep(now=now + timedelta(hours=2) - timedelta(seconds=5))
    swept = services.payments_sweep(now=now + timedelta(hours=2, seconds=1))

    assert untouched == {"settled": 0, "canceled": 0, "receipts": 0}
    assert swept == {"settled": 0, "canceled": 1, "receipts": 0}
    stale.refresh_from_db()
    assert stale.status == PaymentStatus.CANCELED
    assert stale.failure_reason
    assert_credited_once(succeeded)
    after = money_state(organization)
    assert (after["balance"], after["ledger_entries"]) == (before["balance"], before["ledger_entries"])


def test_a_late_success_after_our_sweep_gave_up_is_still_credited_once(organization):
    # The sweep only stops waiting; if the provider later says the money arrived, it must count.
    payment = sandbox_payment(organization, "10.00")
    services.payments_sweep(now=timezone.now() + timedelta(days=2))

    services.payment_settle(event_id=stored_event(payment).pk)
    services.payment_settle(event_id=stored_event(payment).pk)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("10")


def test_a_success_after_a_failure_or_provider_cancel_credits_nothing(organization):
    for status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        payment = sandbox_payment(organization, "10.00")
        Payment.objects.filter(pk=payment.pk).update(status=status, failure_reason="provider said so")

        services.payment_settle(event_id=stored_event(payment).pk)

        payment.refresh_from_db()
        assert payment.status == status
        assert recharge_credits(payment) == []
    assert wallet_of(organization).balance == 0


def test_a_broker_outage_at_queue_time_is_caught_up_by_the_sweep(
    api_client, organization, monkeypatch, django_capture_on_commit_callbacks
):
    payment = sandbox_payment(organization, "40.00")

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(tasks.payment_settle, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sandbox(api_client, sandbox_body(payment))

    assert response.status_code == 200  # the notification is safely stored; the provider must not retry forever
    assert WebhookEvent.objects.get().processed_at is None
    assert wallet_of(organization).balance == 0

    assert tasks.payments_sweep.apply(kwargs={}).get()["canceled"] == 0
    assert services.payments_sweep(now=timezone.now() + timedelta(minutes=2))["settled"] == 1
    assert_credited_once(payment)


# --- Concurrency ------------------------------------------------------------------------------------------


def _run_concurrently(functions) -> list:
    """Run the functions in threads released together; answer each one's result or exception."""
    return run_concurrently(len(functions), lambda index: functions[index]())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_settlements_of_one_event_credit_once(organization):
    payment = sandbox_payment(organization, "40.00")
    event = stored_event(payment)

    outcomes = _run_concurrently([lambda: services.payment_settle(event_id=event.pk)] * 8)

    assert [type(o).__name__ for o in outcomes] == ["Payment"] * 8, outcomes
    assert {o.status for o in outcomes} == {PaymentStatus.SUCCEEDED}
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("40")
    assert_money_invariants([organization.pk])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_success_and_failure_events_settle_one_outcome(organization):
    payment = sandbox_payment(organization, "40.00")
    events = [stored_event(payment, event_id=f"evt_ok_{i}") for i in range(4)]
    events += [stored_event(payment, event_type="payment.failed", event_id=f"evt_ko_{i}") for i in range(4)]

    outcomes = _run_concurrently([lambda e=e: services.payment_settle(event_id=e.pk) for e in events])

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    payment.refresh_from_db()
    assert payment.status in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    credits = recharge_credits(payment)
    if payment.status == PaymentStatus.SUCCEEDED:
        assert_credited_once(payment)
        assert wallet_of(organization).balance == D("40")
    else:
        assert credits == []
        assert wallet_of(organization).balance == 0
    assert not WebhookEvent.objects.filter(processed_at__isnull=True).exists()
    assert_money_invariants([organization.pk])
