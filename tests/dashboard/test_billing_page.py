"""Recharge through the sandbox checkout, payment history, and the polled status endpoint."""

from decimal import Decimal

import pytest
from django.conf import settings

from payments import services as payment_services
from payments.models import Payment, PaymentStatus
from payments.providers import sandbox
from payments.providers.base import Outcome
from tests.factories import wallet_fund

pytestmark = pytest.mark.django_db


def recharge(client, amount="25", key="k1", provider="sandbox"):
    return client.post("/dashboard/billing/", {"amount": amount, "provider": provider, "idempotency_key": key})


def settle(payment: Payment, outcome=Outcome.SUCCEEDED) -> None:
    """What the sandbox provider and the worker do: a signed webhook, stored, then settled."""
    body = sandbox.event_body(payment, outcome)
    headers = {sandbox.SIGNATURE_HEADER: sandbox.sign(body, secret=settings.SANDBOX_WEBHOOK_SECRET)}
    receipt = payment_services.webhook_receive(provider="sandbox", body=body, headers=headers)
    payment_services.payment_settle(event_id=receipt.event.pk)


def test_recharge_sends_the_payer_to_the_checkout(owner_web, organization):
    response = recharge(owner_web)
    payment = Payment.objects.get(organization=organization)
    assert payment.status == PaymentStatus.PENDING and payment.amount == Decimal("25") and payment.provider == "sandbox"
    assert response.status_code == 302 and response["Location"] == payment.checkout_url
    assert "/sandbox/checkout/" in payment.checkout_url


def test_a_resubmitted_recharge_opens_no_second_payment(owner_web, organization):
    first = recharge(owner_web, key="same")
    second = recharge(owner_web, key="same")
    assert first["Location"] == second["Location"]
    assert Payment.objects.filter(organization=organization).count() == 1


@pytest.mark.parametrize(
    ("amount", "message"), [("0.50", "Between"), ("20000", "Between"), ("10.001", "decimal places"), ("x", "number")]
)
def test_recharge_refuses_bad_amounts(owner_web, organization, amount, message):
    response = recharge(owner_web, amount=amount)
    assert response.status_code == 400 and message in response.content.decode()
    assert not Payment.objects.exists()


def test_recharge_refuses_an_unconfigured_provider(owner_web, settings):
    settings.STRIPE_SECRET_KEY = ""  # Stripe is offered only once it has a key
    assert recharge(owner_web, provider="stripe").status_code == 400
    assert not Payment.objects.exists()


def test_payment_page_and_status_follow_settlement(owner_web, organization):
    recharge(owner_web, amount="40")
    payment = Payment.objects.get(organization=organization)
    page = owner_web.get(f"/dashboard/payments/{payment.pk}/?result=success")
    html = page.content.decode()
    assert "Pending" in html and f'data-poll-url="/dashboard/payments/{payment.pk}/status/"' in html and "confirming" in html
    status = owner_web.get(f"/dashboard/payments/{payment.pk}/status/").json()
    assert status["status"] == "pending" and not status["final"] and status["balance"] == "0.000000000000"

    settle(payment)

    status = owner_web.get(f"/dashboard/payments/{payment.pk}/status/").json()
    assert status == {**status, "status": "succeeded", "final": True, "balance_display": "$40.00", "tone": "success"}
    html = owner_web.get(f"/dashboard/payments/{payment.pk}/").content.decode()
    assert "Succeeded" in html and "data-poll-url" not in html


def test_billing_lists_payments_and_polls_the_pending_ones(owner_web, organization):
    recharge(owner_web, amount="10", key="a")
    recharge(owner_web, amount="20", key="b")
    settled = Payment.objects.get(amount=10)
    settle(settled, Outcome.FAILED)
    html = owner_web.get("/dashboard/billing/").content.decode()
    assert "Failed" in html and "Pending" in html
    assert html.count("data-poll-url") == 1


def test_another_organizations_payment_answers_404(owner_web, other_organization):
    wallet_fund(other_organization, "1")
    payment, _ = payment_services.payment_recharge_start(
        organization=other_organization, user=None, amount=Decimal(5), provider="sandbox"
    )
    assert owner_web.get(f"/dashboard/payments/{payment.pk}/").status_code == 404
    assert owner_web.get(f"/dashboard/payments/{payment.pk}/status/").status_code == 404


def test_members_cannot_recharge_or_see_payments(member_web, owner_web, organization):
    recharge(owner_web)
    payment = Payment.objects.get()
    assert member_web.get("/dashboard/billing/").status_code == 403
    assert recharge(member_web, key="m").status_code == 403
    assert member_web.get(f"/dashboard/payments/{payment.pk}/status/").status_code == 403
    assert Payment.objects.count() == 1


def test_a_failed_payment_is_never_labelled_settled(owner_web, organization):
    """Bug (issue 12): a failed payment without a failure reason showed "Settled <date>"."""
    from django.utils import timezone

    Payment.objects.create(
        organization=organization,
        provider="sandbox",
        amount=Decimal("50"),
        currency="USD",
        status=PaymentStatus.FAILED,
        provider_reference="sbx_failed",
        settled_at=timezone.now(),
    )
    html = owner_web.get("/dashboard/billing/").content.decode()
    row = html[html.index('data-testid="payments-table"') :]
    assert "Failed" in row and "Settled" not in row
