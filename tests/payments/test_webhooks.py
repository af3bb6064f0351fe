"""POST payments/webhooks/sandbox/: verified, stored once, settled after commit (docs/contract.md §3, §2.5)."""

import json
import time
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import responses
from rest_framework.test import APIClient

from payments.models import PaymentStatus, WebhookEvent
from payments.providers import sandbox
from tests.concurrency import run_concurrently
from tests.payments.helpers import assert_error, assert_money_invariants, money_state, wallet_of
from tests.payments.payment_helpers import (
    assert_credited_once,
    hmac_signature,
    post_sandbox,
    recharge_credits,
    sandbox_body,
    sandbox_payment,
    stripe_payment,
    webhook_url,
)

D = Decimal
pytestmark = pytest.mark.usefixtures("eager_celery")


@pytest.fixture
def payment(organization):
    return sandbox_payment(organization, "25.00")


def test_signed_success_event_credits_the_wallet_once(api_client, organization, payment, django_capture_on_commit_callbacks):
    body = sandbox_body(payment, event_id="evt_good_1")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_sandbox(api_client, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False}
    # Settlement is queued after commit, not run in the request; the credit it posts (run here,
    # eagerly) announces itself after its own commit (the ledger's wallet_credited_signal).
    assert len(callbacks) == 2
    assert "webhook_receive" in callbacks[0].__qualname__ and "transfer_post" in callbacks[1].__qualname__
    event = WebhookEvent.objects.get()
    assert (event.provider, event.event_id, event.event_type, event.payment_id) == (
        "sandbox",
        "evt_good_1",
        "payment.succeeded",
        payment.pk,
    )
    assert event.organization_id == organization.pk
    assert event.payload == json.loads(body)
    assert event.processed_at is not None
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")
    assert_money_invariants([organization.pk])


def test_settlement_waits_for_the_worker(api_client, organization, payment, django_capture_on_commit_callbacks):
    """Until the queued task runs, the event is stored but the payment is untouched (2xx fast)."""
    with django_capture_on_commit_callbacks(execute=False):
        response = post_sandbox(api_client, sandbox_body(payment))

    assert response.status_code == 200
    assert WebhookEvent.objects.get().processed_at is None
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert wallet_of(organization).balance == 0


def test_replay_of_the_same_event_answers_duplicate_and_credits_once(
    api_client, organization, payment, django_capture_on_commit_callbacks
):
    body = sandbox_body(payment, event_id="evt_replayed")
    with django_capture_on_commit_callbacks(execute=True):
        first = post_sandbox(api_client, body)
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        replays = [post_sandbox(api_client, body) for _ in range(3)]

    assert first.json() == {"received": True, "duplicate": False}
    assert [r.status_code for r in replays] == [200, 200, 200]
    assert all(r.json() == {"received": True, "duplicate": True} for r in replays)
    assert callbacks == []  # a duplicate queues nothing
    assert money_state(organization) == before
    assert WebhookEvent.objects.count() == 1
    assert_credited_once(payment)


def test_two_different_success_events_for_one_payment_credit_once(
    api_client, organization, payment, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = post_sandbox(api_client, sandbox_body(payment, event_id="evt_a"))
        second = post_sandbox(api_client, sandbox_body(payment, event_id="evt_b"))

    assert (first.status_code, second.status_code) == (200, 200)
    assert WebhookEvent.objects.filter(processed_at__isnull=False).count() == 2
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")


# --- Refusals: 400, and nothing stored, credited or changed -------------------------------------------


def _forged(payment, _):
    body = sandbox_body(payment)
    return body, {"HTTP_TOLLGATE_SIGNATURE": hmac_signature(body, secret="not-the-secret")}


def _tampered_after_signing(payment, _):
    signed = sandbox_body(payment, event_id="evt_t")
    header = hmac_signature(signed, secret=_secret())
    return sandbox_body(payment, event_id="evt_t", amount="2500"), {"HTTP_TOLLGATE_SIGNATURE": header}


def _missing_header(payment, _):
    return sandbox_body(payment), {}


def _empty_header(payment, _):
    return sandbox_body(payment), {"HTTP_TOLLGATE_SIGNATURE": ""}


def _garbage_header(payment, _):
    return sandbox_body(payment), {"HTTP_TOLLGATE_SIGNATURE": "garbage"}


def _no_v1(payment, _):
    body = sandbox_body(payment)
    return body, {"HTTP_TOLLGATE_SIGNATURE": hmac_signature(body, secret=_secret()).replace("v1=", "v0=")}


def _stale(payment, _):
    body = sandbox_body(payment)
    return body, {"HTTP_TOLLGATE_SIGNATURE": hmac_signature(body, secret=_secret(), timestamp=int(time.time()) - 330)}


def _far_future(payment, _):
    body = sandbox_body(payment)
    return body, {"HTTP_TOLLGATE_SIGNATURE": hmac_signature(body, secret=_secret(), timestamp=int(time.time()) + 330)}


def _signed(body: bytes) -> tuple[bytes, dict]:
    return body, {"HTTP_TOLLGATE_SIGNATURE": hmac_signature(body, secret=_secret())}


def _secret() -> str:
    from django.conf import settings

    return settings.SANDBOX_WEBHOOK_SECRET


ATTACKS = {
    "forged signature": _forged,
    "body changed after signing": _tampered_after_signing,
    "missing header": _missing_header,
    "empty header": _empty_header,
    "garbage header": _garbage_header,
    "no v1 signature": _no_v1,
    "stale timestamp": _stale,
    "timestamp from the future": _far_future,
    "amount above the payment": lambda p, _: _signed(sandbox_body(p, amount="25.01")),
    "amount below the payment": lambda p, _: _signed(sandbox_body(p, amount="2.5")),
    "amount as garbage": lambda p, _: _signed(sandbox_body(p, amount="lots")),
    "amount NaN": lambda p, _: _signed(sandbox_body(p, amount="NaN")),
    "currency mismatch": lambda p, _: _signed(sandbox_body(p, currency="EUR")),
    "unknown payment id": lambda p, _: _signed(sandbox_body(p, payment_id=999_999_999)),
    "payment id out of range": lambda p, _: _signed(sandbox_body(p, payment_id=10**30)),
    "payment id not a number": lambda p, _: _signed(sandbox_body(p, payment_id="abc")),
    "a Stripe payment through the sandbox": lambda _, stripe: _signed(sandbox_body(stripe)),
    "unknown event type": lambda p, _: _signed(sandbox_body(p, event_type="payment.refunded")),
    "missing field": lambda p, _: _signed(json.dumps({"id": "evt_x", "type": "payment.succeeded", "payment_id": p.pk}).encode()),
    "malformed JSON": lambda p, _: _signed(b'{"id": "evt_x", "type": "payment.succeeded",'),
    "JSON that is not an object": lambda p, _: _signed(b'["payment.succeeded"]'),
    "empty body": lambda p, _: _signed(b""),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_refused_notifications_change_nothing(
    api_client, organization, payment, attack, settings, django_capture_on_commit_callbacks
):
    settings.STRIPE_SECRET_KEY = "sk_test_webhooks"
    stripe = stripe_payment(organization, "25.00")
    body, headers = attack(payment, stripe)
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api_client.post(webhook_url("sandbox"), data=body, content_type="application/json", **headers)

    assert_error(response, 400, "invalid_signature")
    assert callbacks == []
    assert money_state(organization) == before
    assert WebhookEvent.objects.count() == 0
    assert recharge_credits(payment) == [] and recharge_credits(stripe) == []
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


def test_an_unknown_provider_endpoint_refuses(api_client, organization, payment):
    body = sandbox_body(payment)
    before = money_state(organization)

    response = api_client.post(
        webhook_url("paypal"),
        data=body,
        content_type="application/json",
        HTTP_TOLLGATE_SIGNATURE=hmac_signature(body, secret=_secret()),
    )

    assert_error(response, 400, "invalid_signature")
    assert money_state(organization) == before


def test_a_refusal_does_not_burn_the_event_id(api_client, organization, payment, django_capture_on_commit_callbacks):
    """A forged delivery of an event id must not stop the genuine one from being applied."""
    body = sandbox_body(payment, event_id="evt_contested")
    assert post_sandbox(api_client, body, signature=hmac_signature(body, secret="forged")).status_code == 400

    with django_capture_on_commit_callbacks(execute=True):
        genuine = post_sandbox(api_client, body)

    assert genuine.json() == {"received": True, "duplicate": False}
    assert_credited_once(payment)


# --- Failure, and the order of outcomes -----------------------------------------------------------------


def test_failed_event_fails_the_payment_and_moves_no_money(api_client, organization, payment, django_capture_on_commit_callbacks):
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_sandbox(api_client, sandbox_body(payment, event_type="payment.failed"))

    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert payment.transfer_id is None
    assert payment.settled_at is not None
    assert WebhookEvent.objects.get().processed_at is not None
    after = money_state(organization)
    assert (after["balance"], after["ledger_entries"]) == (before["balance"], before["ledger_entries"])


def test_success_after_failure_credits_nothing(api_client, organization, payment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        post_sandbox(api_client, sandbox_body(payment, event_type="payment.failed"))
        late = post_sandbox(api_client, sandbox_body(payment, event_type="payment.succeeded"))

    assert late.json() == {"received": True, "duplicate": False}
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert recharge_credits(payment) == []
    assert wallet_of(organization).balance == 0
    assert WebhookEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_failure_after_success_changes_nothing(api_client, organization, payment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        post_sandbox(api_client, sandbox_body(payment))
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True):
        post_sandbox(api_client, sandbox_body(payment, event_type="payment.failed"))

    assert_credited_once(payment)
    after = money_state(organization)
    assert (after["balance"], after["ledger_entries"], after["payments"]) == (
        before["balance"],
        before["ledger_entries"],
        before["payments"],
    )


# --- The sandbox's own checkout page delivers the notification over HTTP, like an outside provider --------


@pytest.mark.parametrize(
    ("decision", "status", "balance"), [("confirm", PaymentStatus.SUCCEEDED, D("25")), ("decline", PaymentStatus.FAILED, D("0"))]
)
def test_sandbox_checkout_decision_reaches_the_webhook_signed(
    api_client, organization, payment, settings, decision, status, balance, django_capture_on_commit_callbacks
):
    delivered = []

    def forward(request):
        # The "network": hand what the sandbox sent to our own webhook endpoint, untouched.
        delivered.append(request)
        response = APIClient().post(
            urlsplit(request.url).path,
            data=request.body,
            content_type="application/json",
            HTTP_TOLLGATE_SIGNATURE=request.headers["Tollgate-Signature"],
        )
        return response.status_code, {}, response.content

    with responses.RequestsMock() as rsps, django_capture_on_commit_callbacks(execute=True):
        rsps.add_callback(responses.POST, settings.SANDBOX_WEBHOOK_URL, callback=forward)
        page = api_client.post(urlsplit(payment.checkout_url).path, {"decision": decision})

    assert page.status_code == 302
    assert len(delivered) == 1
    sent = json.loads(delivered[0].body)
    assert sent["payment_id"] == payment.pk and D(sent["amount"]) == payment.amount and sent["currency"] == "USD"
    payment.refresh_from_db()
    assert payment.status == status
    assert wallet_of(organization).balance == balance


def test_sandbox_checkout_link_is_signed(api_client, payment):
    token = sandbox.checkout_token(payment.pk)

    assert api_client.get(f"/sandbox/checkout/{token}x/").status_code == 404
    assert api_client.get(f"/sandbox/checkout/{token}/").status_code == 200


# --- Concurrency: the same event delivered ten times at once --------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_of_one_event_credit_exactly_once(organization, eager_celery):
    payment = sandbox_payment(organization, "25.00")
    body = sandbox_body(payment, event_id="evt_storm")
    header = hmac_signature(body, secret=_secret())

    def deliver(_: int) -> tuple:
        response = APIClient().post(
            webhook_url("sandbox"), data=body, content_type="application/json", HTTP_TOLLGATE_SIGNATURE=header
        )
        return response.status_code, response.json()

    results = run_concurrently(10, deliver, reraise=True)

    assert {status for status, _ in results} == {200}
    assert sorted(body["duplicate"] for _, body in results) == [False] + [True] * 9
    assert WebhookEvent.objects.count() == 1
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("25")
    assert_money_invariants([organization.pk])
