"""Receipt numbers: 1, 2, 3… per organization in the order payments are credited, never skipped or
repeated, also under concurrent settlements; a settlement that does not credit (refused, failed, rolled
back) takes no number. The numbers are assigned by the database (payments/document_models.py)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from payments import services
from payments.models import DocumentCounter, Payment, Receipt
from tests.concurrency import run_concurrently
from tests.factories import UserFactory, organization_create
from tests.payments.payment_helpers import (
    hmac_signature,
    post_sandbox,
    sandbox_body,
    sandbox_notify,
    sandbox_payment,
)
from tests.payments.receipt_helpers import receipt_numbers

D = Decimal


def _stored_event(payment: Payment, event_type: str = "payment.succeeded") -> int:
    from django.conf import settings

    body = sandbox_body(payment, event_type=event_type)
    headers = {"Tollgate-Signature": hmac_signature(body, secret=settings.SANDBOX_WEBHOOK_SECRET)}
    return services.webhook_receive(provider="sandbox", body=body, headers=headers).event.pk


@pytest.mark.django_db
def test_numbers_follow_the_order_of_settlement_per_organization(organization, other_organization):
    ours = [sandbox_payment(organization, "1.00") for _ in range(3)]
    theirs = [sandbox_payment(other_organization, "2.00") for _ in range(2)]

    # credited in another order than they were started, the two organizations interleaved
    for payment in [ours[2], theirs[1], ours[0], theirs[0], ours[1]]:
        assert sandbox_notify(payment).status == "succeeded"

    assert receipt_numbers(organization) == [(ours[2].pk, 1), (ours[0].pk, 2), (ours[1].pk, 3)]
    assert receipt_numbers(other_organization) == [(theirs[1].pk, 1), (theirs[0].pk, 2)]
    counters = dict(DocumentCounter.objects.filter(kind="receipt").values_list("organization_id", "last"))
    assert counters == {organization.pk: 3, other_organization.pk: 2}


@pytest.mark.django_db
def test_a_repeated_notification_issues_no_second_receipt(organization):
    payment = sandbox_payment(organization, "1.00")
    event = _stored_event(payment)
    services.payment_settle(event_id=event)
    services.payment_settle(event_id=event)
    sandbox_notify(payment)  # another event of the same outcome

    assert receipt_numbers(organization) == [(payment.pk, 1)]


@pytest.mark.django_db
def test_payments_that_are_not_credited_take_no_number(organization, api_client):
    mismatched = sandbox_payment(organization, "5.00")
    failed = sandbox_payment(organization, "6.00")
    credited = sandbox_payment(organization, "8.00")

    # an amount that differs from the payment is refused before anything is stored
    refused = post_sandbox(api_client, sandbox_body(mismatched, amount="5.01"))
    assert refused.status_code == 400
    assert sandbox_notify(failed, "payment.failed").status == "failed"
    assert sandbox_notify(credited).status == "succeeded"

    assert receipt_numbers(organization) == [(credited.pk, 1)]
    mismatched.refresh_from_db()
    assert mismatched.status == "pending" and not Receipt.objects.filter(payment=mismatched).exists()


@pytest.mark.django_db
def test_a_settlement_rolled_back_after_its_receipt_gives_the_number_back(organization):
    first, doomed, third = (sandbox_payment(organization, amount) for amount in ("1.00", "2.00", "3.00"))
    sandbox_notify(first)
    # The database itself fails the settlement's transaction right after the receipt is inserted and numbered.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION test_receipt_fail() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.payment_id = {doomed.pk} THEN RAISE EXCEPTION 'settlement fails after its receipt'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_receipt_fail AFTER INSERT ON payments_receipt FOR EACH ROW EXECUTE FUNCTION test_receipt_fail();
            """
        )
    event = _stored_event(doomed)
    with pytest.raises(Exception, match="settlement fails after its receipt"):
        services.payment_settle(event_id=event)
    doomed.refresh_from_db()
    assert (doomed.status, doomed.transfer_id) == ("pending", None)  # the credit rolled back with it

    sandbox_notify(third)
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_receipt_fail ON payments_receipt; DROP FUNCTION test_receipt_fail();")
    services.payment_settle(event_id=event)  # the stored notification, retried (as the sweeper does)

    assert receipt_numbers(organization) == [(first.pk, 1), (third.pk, 2), (doomed.pk, 3)]


@pytest.mark.django_db
def test_a_receipt_cannot_be_changed_or_deleted(organization):
    payment = sandbox_notify(sandbox_payment(organization, "1.00"))
    receipt = Receipt.objects.get(payment=payment)
    with pytest.raises(IntegrityError), transaction.atomic():
        Receipt.objects.filter(pk=receipt.pk).update(number=7)
    with pytest.raises(IntegrityError), transaction.atomic():
        Receipt.objects.filter(pk=receipt.pk).delete()
    with pytest.raises(IntegrityError), transaction.atomic():
        Receipt.objects.filter(pk=receipt.pk).update(issued_at=datetime.now(UTC) - timedelta(days=1))


CONCURRENT_SETTLEMENTS = 20


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_settlements_number_receipts_one_to_twenty_without_gaps():
    organization = organization_create(name="Busy", owner=UserFactory())
    other = organization_create(name="Quiet", owner=UserFactory())
    payments = [sandbox_payment(organization, f"{n}.00") for n in range(1, CONCURRENT_SETTLEMENTS + 1)]
    theirs = [sandbox_payment(other, "1.00") for _ in range(3)]
    events = [_stored_event(payment) for payment in [*payments, *theirs]]

    results = run_concurrently(len(events), lambda i: services.payment_settle(event_id=events[i]), reraise=True)

    assert all(result.status == "succeeded" for result in results)
    numbered = receipt_numbers(organization)
    assert sorted(number for _, number in numbered) == list(range(1, CONCURRENT_SETTLEMENTS + 1))
    assert sorted(payment_id for payment_id, _ in numbered) == sorted(p.pk for p in payments)
    # numbered in the order they were credited: settled_at is taken under the wallet's lock
    settled = dict(Payment.objects.filter(organization=organization).values_list("pk", "settled_at"))
    times = [settled[payment_id] for payment_id, _ in numbered]
    assert times == sorted(times)
    assert sorted(number for _, number in receipt_numbers(other)) == [1, 2, 3]
    assert DocumentCounter.objects.get(organization=organization, kind="receipt").last == CONCURRENT_SETTLEMENTS
