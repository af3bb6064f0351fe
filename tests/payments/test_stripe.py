"""Stripe Checkout through the real `stripe` package; only Stripe's HTTP API is mocked (`responses`).
Webhooks are signed with Stripe's scheme: `Stripe-Signature: t=<ts>,v1=<HMAC-SHA256("<ts>.<payload>", whsec)>`."""

import json
import time
from decimal import Decimal

import pytest
import responses
from rest_framework.test import APIClient

from payments import services
from payments.models import Payment, PaymentStatus, RefundStatus, Wallet, WebhookEvent
from tests.payments.helpers import assert_error, assert_money_invariants, money_state, wallet_of
from tests.payments.payment_helpers import (
    RECHARGE_URL,
    STRIPE_API,
    assert_credited_once,
    form,
    hmac_signature,
    mock_checkout_sessions,
    post_stripe,
    recharge_credits,
    sandbox_payment,
    stripe_event_body,
    stripe_payment,
    stripe_session,
)

D = Decimal
SECRET_KEY = "sk_test_51TollgateTestKey"
WEBHOOK_SECRET = "whsec_tollgate_test_endpoint_secret"


@pytest.fixture(autouse=True)
def stripe_settings(settings, eager_celery):
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


@pytest.fixture
def payment(organization):
    return stripe_payment(organization, "25.00")


def deliver(client, event_type, session, *, capture, livemode=False, event_id=None, **kwargs):
    body = stripe_event_body(event_type, session, livemode=livemode, event_id=event_id)
    with capture(execute=True):
        return post_stripe(client, body, **kwargs)


# --- Checkout Session -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "amount", "minor"),
    [("USD", "25.50", 2550), ("USD", "10000.00", 1_000_000), ("USD", "1", 100), ("JPY", "1000", 1000)],
)
def test_recharge_creates_a_checkout_session_in_minor_units(owner_client, organization, currency, amount, minor):
    Wallet.objects.filter(organization_id=organization.pk).update(currency=currency)

    with responses.RequestsMock() as rsps:
        seen = mock_checkout_sessions(rsps)
        response = owner_client.post(RECHARGE_URL, {"amount": amount, "provider": "stripe"}, format="json")

    assert response.status_code == 201, response.content
    payment = Payment.objects.get()
    body = response.json()
    assert (body["id"], body["status"]) == (payment.pk, "pending")
    assert body["checkout_url"] == f"https://checkout.stripe.com/c/pay/cs_test_{payment.pk}"
    assert (payment.provider, payment.provider_reference, payment.livemode) == ("stripe", f"cs_test_{payment.pk}", False)
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "POST"
    assert request.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Idempotency-Key"] == f"tollgate-payment-{payment.pk}"
    params = form(request)
    assert params["mode"] == ["payment"]
    assert params["line_items[0][quantity]"] == ["1"]
    assert params["line_items[0][price_data][currency]"] == [currency.lower()]
    assert params["line_items[0][price_data][unit_amount]"] == [str(minor)]
    assert params["line_items[0][price_data][product_data][name]"][0]
    assert params["client_reference_id"] == [str(payment.pk)]
    assert params["metadata[payment_id]"] == [str(payment.pk)]
    assert params["payment_intent_data[metadata][payment_id]"] == [str(payment.pk)]
    assert params["success_url"][0].endswith(f"/dashboard/payments/{payment.pk}/?result=success")
    assert params["cancel_url"][0].endswith(f"/dashboard/payments/{payment.pk}/?result=cancel")
    assert wallet_of(organization).balance == 0


def test_a_live_checkout_session_marks_the_payment_live(organization, settings):
    settings.STRIPE_SECRET_KEY = "sk_live_51TollgateLiveKey"

    payment = stripe_payment(organization, "25.00", livemode=True)

    assert payment.livemode is True


@pytest.mark.parametrize("status", [400, 401, 402])
def test_stripe_refusing_the_checkout_fails_the_payment(owner_client, organization, status):
    with responses.RequestsMock() as rsps:
        rsps.post(
            f"{STRIPE_API}/checkout/sessions",
            status=status,
            json={"error": {"type": "invalid_request_error", "message": "No such thing"}},
        )
        response = owner_client.post(RECHARGE_URL, {"amount": "25.00", "provider": "stripe"}, format="json")

    assert_error(response, 502, "provider_error")
    assert Payment.objects.get().status == PaymentStatus.FAILED
    assert wallet_of(organization).balance == 0


def test_a_checkout_session_without_a_payment_page_fails_the_payment(owner_client, organization):
    """Nobody could pay it: the payment fails at once (502) instead of a 500 on a null checkout URL."""
    session = {"id": "cs_test_nourl", "object": "checkout.session", "url": None, "livemode": False, "status": "open"}
    with responses.RequestsMock() as rsps:
        rsps.post(f"{STRIPE_API}/checkout/sessions", json=session)
        response = owner_client.post(RECHARGE_URL, {"amount": "25.00", "provider": "stripe"}, format="json")

    assert_error(response, 502, "provider_error")
    assert Payment.objects.get().status == PaymentStatus.FAILED


def test_recharge_without_a_stripe_key_fails_cleanly(owner_client, organization, settings):
    settings.STRIPE_SECRET_KEY = ""

    with responses.RequestsMock():  # no request may leave
        response = owner_client.post(RECHARGE_URL, {"amount": "25.00", "provider": "stripe"}, format="json")

    assert_error(response, 502, "provider_error")
    assert Payment.objects.get().status == PaymentStatus.FAILED


# --- Webhooks: outcomes ------------------------------------------------------------------------------


def test_completed_and_paid_credits_the_wallet(api_client, organization, payment, django_capture_on_commit_callbacks):
    response = deliver(
        api_client,
        "checkout.session.completed",
        stripe_session(payment),
        capture=django_capture_on_commit_callbacks,
        event_id="evt_paid",
    )

    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False}
    event = WebhookEvent.objects.get()
    assert (event.provider, event.event_id, event.payment_id, event.event_type) == (
        "stripe",
        "evt_paid",
        payment.pk,
        "checkout.session.completed",
    )
    assert event.processed_at is not None
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")
    assert_money_invariants([organization.pk])


def test_a_replayed_stripe_event_credits_once(api_client, organization, payment, django_capture_on_commit_callbacks):
    body = stripe_event_body("checkout.session.completed", stripe_session(payment), event_id="evt_again")
    with django_capture_on_commit_callbacks(execute=True):
        first = post_stripe(api_client, body)
        second = post_stripe(api_client, body)

    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert WebhookEvent.objects.count() == 1
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")


def test_unpaid_completion_waits_for_the_async_payment(api_client, organization, payment, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    unpaid = deliver(api_client, "checkout.session.completed", stripe_session(payment, payment_status="unpaid"), capture=capture)

    assert unpaid.status_code == 200, unpaid.content
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert wallet_of(organization).balance == 0
    assert WebhookEvent.objects.get().processed_at is not None

    paid = deliver(
        api_client, "checkout.session.async_payment_succeeded", stripe_session(payment, payment_status="paid"), capture=capture
    )

    assert paid.status_code == 200, paid.content
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")


def test_async_payment_failed_fails_the_payment(api_client, organization, payment, django_capture_on_commit_callbacks):
    response = deliver(
        api_client,
        "checkout.session.async_payment_failed",
        stripe_session(payment, payment_status="unpaid"),
        capture=django_capture_on_commit_callbacks,
    )

    assert response.status_code == 200, response.content
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert recharge_credits(payment) == []
    assert wallet_of(organization).balance == 0


def test_expired_session_cancels_the_payment(api_client, organization, payment, django_capture_on_commit_callbacks):
    session = stripe_session(payment, payment_status="unpaid", status="expired")
    response = deliver(api_client, "checkout.session.expired", session, capture=django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.content
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CANCELED
    assert wallet_of(organization).balance == 0


def test_a_late_success_after_expiry_credits_nothing(api_client, organization, payment, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    deliver(
        api_client,
        "checkout.session.expired",
        stripe_session(payment, payment_status="unpaid", status="expired"),
        capture=capture,
    )
    deliver(api_client, "checkout.session.completed", stripe_session(payment), capture=capture)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CANCELED
    assert recharge_credits(payment) == []


@pytest.mark.parametrize(
    "event_type", ["payment_intent.succeeded", "charge.refunded", "customer.created", "checkout.session.async_payment_pending"]
)
def test_unrelated_events_are_stored_and_change_nothing(
    api_client, organization, payment, event_type, django_capture_on_commit_callbacks
):
    before = money_state(organization)
    data_object = {
        "id": "pi_123",
        "object": "payment_intent",
        "amount": 2500,
        "currency": "usd",
        "metadata": {"payment_id": str(payment.pk)},
    }

    response = deliver(api_client, event_type, data_object, capture=django_capture_on_commit_callbacks, event_id="evt_other")

    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get()
    assert (event.event_id, event.event_type, event.payment_id) == ("evt_other", event_type, None)
    assert event.processed_at is not None
    after = money_state(organization)
    assert {k: v for k, v in after.items() if k != "webhook_events"} == {k: v for k, v in before.items() if k != "webhook_events"}
    assert after["webhook_events"] == before["webhook_events"] + 1


# --- Webhooks: refusals ---------------------------------------------------------------------------------


def _session_of_other_payment(payment):
    twin = stripe_payment(payment.organization, "25.00")  # same amount, so only the reference differs
    return stripe_session(payment, session_id=twin.provider_reference)


MISMATCHES = {
    "amount": lambda p: stripe_session(p, amount_total=2501),
    "amount in major units": lambda p: stripe_session(p, amount_total=25),
    "currency": lambda p: stripe_session(p, currency="eur"),
    "session of another payment": _session_of_other_payment,
    "unknown session id": lambda p: stripe_session(p, session_id="cs_test_forged"),
    "unknown payment": lambda p: stripe_session(p, client_reference_id="999999999"),
    "a sandbox payment": lambda p: stripe_session(p, client_reference_id=str(sandbox_payment(p.organization, "25.00").pk)),
    "no reference": lambda p: {**stripe_session(p, client_reference_id=""), "metadata": {}},
    "no amount": lambda p: {**stripe_session(p), "amount_total": None},
}


@pytest.mark.parametrize("event_type", ["checkout.session.completed", "checkout.session.async_payment_succeeded"])
@pytest.mark.parametrize("mismatch", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_events_not_matching_the_payment_are_refused(
    api_client, organization, payment, mismatch, event_type, django_capture_on_commit_callbacks
):
    session = mismatch(payment)
    before = money_state(organization)

    response = deliver(api_client, event_type, session, capture=django_capture_on_commit_callbacks)

    assert_error(response, 400, "invalid_signature")
    assert money_state(organization) == before
    assert WebhookEvent.objects.count() == 0
    assert recharge_credits(payment) == []


def test_a_live_event_for_a_test_payment_is_refused(api_client, organization, payment, django_capture_on_commit_callbacks):
    before = money_state(organization)

    response = deliver(
        api_client,
        "checkout.session.completed",
        stripe_session(payment, livemode=True),
        livemode=True,
        capture=django_capture_on_commit_callbacks,
    )

    assert_error(response, 400, "invalid_signature")
    assert money_state(organization) == before


def test_a_test_event_for_a_live_payment_is_refused(api_client, organization, settings, django_capture_on_commit_callbacks):
    settings.STRIPE_SECRET_KEY = "sk_live_51TollgateLiveKey"
    live = stripe_payment(organization, "25.00", livemode=True)
    before = money_state(organization)

    response = deliver(
        api_client, "checkout.session.completed", stripe_session(live), livemode=False, capture=django_capture_on_commit_callbacks
    )

    assert_error(response, 400, "invalid_signature")
    assert money_state(organization) == before
    assert (
        deliver(
            api_client,
            "checkout.session.completed",
            stripe_session(live, livemode=True),
            livemode=True,
            capture=django_capture_on_commit_callbacks,
        ).status_code
        == 200
    )
    assert_credited_once(live)


SIGNATURES = {
    "wrong secret": lambda body: hmac_signature(body, secret="whsec_not_ours"),
    "secret without its prefix": lambda body: hmac_signature(body, secret=WEBHOOK_SECRET.removeprefix("whsec_")),
    "stale": lambda body: hmac_signature(body, secret=WEBHOOK_SECRET, timestamp=int(time.time()) - 301),
    "tampered body": lambda body: hmac_signature(
        body.replace(b'"amount_total": 2500', b'"amount_total": 2400'), secret=WEBHOOK_SECRET
    ),
    "garbage": lambda body: "t=abc,v1=def",
    "v0 scheme only": lambda body: hmac_signature(body, secret=WEBHOOK_SECRET).replace("v1=", "v0="),
}


@pytest.mark.parametrize("signature", SIGNATURES.values(), ids=SIGNATURES.keys())
def test_bad_stripe_signatures_are_refused(api_client, organization, payment, signature, django_capture_on_commit_callbacks):
    body = stripe_event_body("checkout.session.completed", stripe_session(payment))
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_stripe(api_client, body, signature=signature(body))

    assert_error(response, 400, "invalid_signature")
    assert money_state(organization) == before


def test_missing_stripe_signature_and_malformed_payloads_are_refused(api_client, organization, payment):
    body = stripe_event_body("checkout.session.completed", stripe_session(payment))
    before = money_state(organization)

    no_header = api_client.post("/api/v1/payments/webhooks/stripe/", data=body, content_type="application/json")
    malformed = post_stripe(api_client, b'{"id": "evt_1", "type": ')

    assert_error(no_header, 400, "invalid_signature")
    assert_error(malformed, 400, "invalid_signature")
    assert money_state(organization) == before


def test_stripe_webhooks_refused_when_no_endpoint_secret_is_configured(api_client, organization, payment, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    body = stripe_event_body("checkout.session.completed", stripe_session(payment))

    response = post_stripe(api_client, body, secret="")

    assert_error(response, 400, "invalid_signature")
    assert WebhookEvent.objects.count() == 0


# --- Refunds through Stripe's API ------------------------------------------------------------------------


def settled_stripe_payment(organization, amount="25.00", *, capture) -> Payment:
    payment = stripe_payment(organization, amount)
    response = deliver(APIClient(), "checkout.session.completed", stripe_session(payment), capture=capture)
    assert response.status_code == 200, response.content
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    return payment


def mock_refund_api(rsps, payment, *, payment_intent="pi_3TollgateIntent", refund_status=200):
    seen = []

    def create_refund(request):
        seen.append(request)
        if refund_status != 200:
            return (
                refund_status,
                {},
                json.dumps({"error": {"type": "invalid_request_error", "message": "Charge already refunded"}}),
            )
        amount = int(form(request)["amount"][0])
        return 200, {}, json.dumps({"id": f"re_{len(seen)}", "object": "refund", "amount": amount, "status": "succeeded"})

    rsps.get(
        f"{STRIPE_API}/checkout/sessions/{payment.provider_reference}",
        json={"id": payment.provider_reference, "object": "checkout.session", "payment_intent": payment_intent},
    )
    rsps.add_callback(responses.POST, f"{STRIPE_API}/refunds", callback=create_refund, content_type="application/json")
    return seen


@pytest.mark.parametrize(
    ("amount", "minor", "status"), [("25.00", 2500, PaymentStatus.REFUNDED), ("7.25", 725, PaymentStatus.PARTIALLY_REFUNDED)]
)
def test_refund_calls_stripe_with_the_payment_intent_in_minor_units(
    organization, staff_user, amount, minor, status, django_capture_on_commit_callbacks
):
    payment = settled_stripe_payment(organization, capture=django_capture_on_commit_callbacks)

    with responses.RequestsMock() as rsps:
        seen = mock_refund_api(rsps, payment)
        refund = services.payment_refund(payment=payment, amount=D(amount), reason="customer asked", staff=staff_user)

    assert len(seen) == 1
    params = form(seen[0])
    assert params["payment_intent"] == ["pi_3TollgateIntent"]
    assert params["amount"] == [str(minor)]
    assert params["metadata[payment_id]"] == [str(payment.pk)]
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert (refund.status, refund.provider_reference, refund.amount) == (RefundStatus.SUCCEEDED, "re_1", D(amount))
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (status, D(amount))
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D("25") - D(amount), 0)
    assert_money_invariants([organization.pk])


def test_stripe_refusing_the_refund_moves_nothing(organization, staff_user, django_capture_on_commit_callbacks):
    payment = settled_stripe_payment(organization, capture=django_capture_on_commit_callbacks)
    before = money_state(organization)

    with responses.RequestsMock() as rsps:
        seen = mock_refund_api(rsps, payment, refund_status=400)
        with pytest.raises(services.ProviderUnavailable):
            services.payment_refund(payment=payment, amount=D("10"), reason="customer asked", staff=staff_user)

    assert len(seen) == 1
    after = money_state(organization)
    assert (after["balance"], after["held"], after["ledger_entries"], after["payments"]) == (
        before["balance"],
        0,
        before["ledger_entries"],
        before["payments"],
    )
    assert payment.refunds.get().status == RefundStatus.FAILED


def test_two_refunds_of_the_same_amount_are_two_stripe_refunds(organization, staff_user, django_capture_on_commit_callbacks):
    """Each refund is its own Stripe refund: a second refund of the same amount, started while the
    first is still with Stripe, must not reuse the first one's idempotency key (Stripe would answer
    the first refund again, and we would post money that was never returned)."""
    payment = settled_stripe_payment(organization, capture=django_capture_on_commit_callbacks)
    keys = []

    with responses.RequestsMock() as rsps:
        seen = mock_refund_api(rsps, payment)
        original = rsps.registered()[-1].callback

        def refund_while_another_is_pending(request):
            keys.append(request.headers["Idempotency-Key"])
            if len(keys) == 1:
                services.payment_refund(payment=payment, amount=D("5"), reason="second click", staff=staff_user)
            return original(request)

        rsps.registered()[-1].callback = refund_while_another_is_pending
        services.payment_refund(payment=payment, amount=D("5"), reason="first click", staff=staff_user)

    assert len(seen) == 2
    assert len(set(keys)) == 2, keys
    payment.refresh_from_db()
    assert payment.refunded_amount == D("10")
    assert wallet_of(organization).balance == D("15")
    assert wallet_of(organization).held == 0


def test_an_unanswered_refund_stays_reserved_and_the_sweeper_settles_it_once(
    organization, staff_user, django_capture_on_commit_callbacks
):
    """No answer is not a refusal: Stripe may have refunded. The refund stays pending with its
    reservation, and the sweeper retries under the same idempotency key until it has an answer."""
    from datetime import timedelta

    from django.utils import timezone

    payment = settled_stripe_payment(organization, capture=django_capture_on_commit_callbacks)
    with responses.RequestsMock() as rsps:
        first = mock_refund_api(rsps, payment, refund_status=503)
        with pytest.raises(services.ProviderUnavailable):
            services.payment_refund(payment=payment, amount=D("10"), reason="customer asked", staff=staff_user)
    refund = payment.refunds.get()
    wallet = wallet_of(organization)
    assert (refund.status, wallet.balance, wallet.held) == (RefundStatus.PENDING, D("25"), D("10"))

    later = timezone.now() + timedelta(minutes=6)
    with responses.RequestsMock() as rsps:
        retried = mock_refund_api(rsps, payment)
        assert services.refunds_sweep(now=later) == 1
        assert services.refunds_sweep(now=later) == 0

    refund.refresh_from_db()
    wallet = wallet_of(organization)
    assert (refund.status, wallet.balance, wallet.held) == (RefundStatus.SUCCEEDED, D("15"), 0)
    assert {r.headers["Idempotency-Key"] for r in first + retried} == {f"tollgate-refund-{refund.pk}"}
    assert len(retried) == 1
    assert_money_invariants([organization.pk])


def test_completing_a_refund_twice_posts_it_once(organization, staff_user, django_capture_on_commit_callbacks):
    payment = settled_stripe_payment(organization, capture=django_capture_on_commit_callbacks)
    with responses.RequestsMock() as rsps:
        mock_refund_api(rsps, payment)
        refund = services.payment_refund(payment=payment, amount=D("5"), reason="customer asked", staff=staff_user)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        mock_refund_api(rsps, payment)
        services.refund_complete(refund=refund)
    assert wallet_of(organization).balance == D("20")
    payment.refresh_from_db()
    assert payment.refunded_amount == D("5")
    assert_money_invariants([organization.pk])
