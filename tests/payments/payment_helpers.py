"""Helpers for the payment tests: providers' signed notifications built independently of the code
under test, and Stripe's HTTP API mocked with
`responses` (the only thing mocked: our code and the `stripe` package run for real)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from decimal import Decimal
from urllib.parse import parse_qs

import responses
from django.conf import settings
from django.db.models import Sum

from accounts.models import Organization, User
from payments import services
from payments.models import LedgerEntry, Payment, Transfer, TransferKind

D = Decimal
RECHARGE_URL = "/api/v1/payments/recharge/"
STRIPE_API = "https://api.stripe.com/v1"


def webhook_url(provider: str) -> str:
    return f"/api/v1/payments/webhooks/{provider}/"


def recharge_credits(payment: Payment) -> list[Transfer]:
    """The recharge transfers that credited this payment (there must never be more than one)."""
    return list(Transfer.objects.filter(kind=TransferKind.RECHARGE, reference=f"payment:{payment.pk}"))


def assert_credited_once(payment: Payment) -> Transfer:
    """The payment succeeded and exactly one recharge transfer moved its amount from
    payments_clearing into its organization's wallet."""
    payment.refresh_from_db()
    transfers = recharge_credits(payment)
    assert len(transfers) == 1, transfers
    transfer = transfers[0]
    legs = sorted(transfer.entries.values_list("account", "amount"))
    assert legs == [("payments_clearing", -payment.amount), ("wallet", payment.amount)], legs
    assert transfer.organization_id == payment.organization_id
    assert payment.status == "succeeded"
    assert payment.transfer_id == transfer.pk
    assert payment.settled_at is not None
    return transfer


def wallet_entries_total(organization: Organization) -> Decimal:
    total = LedgerEntry.objects.filter(organization_id=organization.pk, account="wallet").aggregate(s=Sum("amount"))["s"]
    return total or D(0)


# --- Sandbox ----------------------------------------------------------------------------------------


def sandbox_payment(organization: Organization, amount: str = "25.00", *, user: User | None = None) -> Payment:
    payment, replayed = services.payment_recharge_start(
        organization=organization, user=user, amount=D(amount), provider="sandbox"
    )
    assert not replayed
    return payment


def sandbox_body(payment: Payment, *, event_type: str = "payment.succeeded", event_id: str | None = None, **overrides) -> bytes:
    """A sandbox notification as docs/contract.md §3 defines it (amount as a decimal string)."""
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": event_type,
        "payment_id": payment.pk,
        "amount": format(payment.amount.normalize(), "f"),
        "currency": payment.currency,
    }
    event.update(overrides)
    return json.dumps(event).encode()


def hmac_signature(payload: bytes, *, secret: str, timestamp: int | None = None) -> str:
    """`t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<payload>">`: the scheme of both the sandbox and Stripe."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def post_sandbox(client, body: bytes, *, signature: str | None = "sign", timestamp: int | None = None):
    """POST a sandbox notification; `signature="sign"` signs it correctly, None sends no header."""
    headers = {}
    if signature == "sign":
        signature = hmac_signature(body, secret=settings.SANDBOX_WEBHOOK_SECRET, timestamp=timestamp)
    if signature is not None:
        headers["HTTP_TOLLGATE_SIGNATURE"] = signature
    return client.post(webhook_url("sandbox"), data=body, content_type="application/json", **headers)


# --- Stripe -----------------------------------------------------------------------------------------


def stripe_session(
    payment: Payment,
    *,
    session_id: str | None = None,
    payment_status: str = "paid",
    status: str = "complete",
    livemode: bool = False,
    amount_total: int | None = None,
    currency: str | None = None,
    client_reference_id: str | None = None,
    payment_intent: str = "pi_test_123",
) -> dict:
    """A Checkout Session object as Stripe sends it inside an event."""
    return {
        "id": session_id or payment.provider_reference,
        "object": "checkout.session",
        "amount_total": int(payment.amount * 100) if amount_total is None else amount_total,
        "currency": (currency or payment.currency).lower(),
        "client_reference_id": str(payment.pk) if client_reference_id is None else client_reference_id,
        "metadata": {"payment_id": str(payment.pk)},
        "livemode": livemode,
        "mode": "payment",
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": status,
        "url": None,
    }


def stripe_event_body(event_type: str, data_object: dict, *, event_id: str | None = None, livemode: bool = False) -> bytes:
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "livemode": livemode,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": data_object},
    }
    return json.dumps(event).encode()


def post_stripe(client, body: bytes, *, secret: str | None = None, timestamp: int | None = None, signature: str | None = None):
    signature = signature or hmac_signature(body, secret=secret or settings.STRIPE_WEBHOOK_SECRET, timestamp=timestamp)
    return client.post(webhook_url("stripe"), data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def form(request) -> dict[str, list[str]]:
    """The form-encoded body of a request the `stripe` package sent."""
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    return parse_qs(body, keep_blank_values=True)


def mock_checkout_sessions(rsps: responses.RequestsMock, *, livemode: bool = False) -> list:
    """Answer POST /v1/checkout/sessions like Stripe: a session whose id is derived from our payment id.
    Answers the list of requests seen, as they arrive."""
    seen: list = []

    def create(request):
        seen.append(request)
        params = form(request)
        payment_id = params["client_reference_id"][0]
        body = {
            "id": f"cs_test_{payment_id}",
            "object": "checkout.session",
            "url": f"https://checkout.stripe.com/c/pay/cs_test_{payment_id}",
            "livemode": livemode,
            "amount_total": int(params["line_items[0][price_data][unit_amount]"][0]),
            "currency": params["line_items[0][price_data][currency]"][0],
            "client_reference_id": payment_id,
            "payment_status": "unpaid",
            "status": "open",
        }
        return 200, {"Request-Id": f"req_{uuid.uuid4().hex[:12]}"}, json.dumps(body)

    rsps.add_callback(responses.POST, f"{STRIPE_API}/checkout/sessions", callback=create, content_type="application/json")
    return seen


def stripe_payment(organization: Organization, amount: str = "25.00", *, livemode: bool = False) -> Payment:
    """A pending Stripe payment made through the real recharge service (Stripe's HTTP API mocked)."""
    with responses.RequestsMock() as rsps:
        mock_checkout_sessions(rsps, livemode=livemode)
        payment, _ = services.payment_recharge_start(organization=organization, user=None, amount=D(amount), provider="stripe")
    assert payment.provider_reference == f"cs_test_{payment.pk}"
    return payment


def sandbox_notify(payment: Payment, event_type: str = "payment.succeeded") -> Payment:
    """What the worker does with a signed sandbox notification: receive and store it, then settle it."""
    body = sandbox_body(payment, event_type=event_type)
    headers = {"Tollgate-Signature": hmac_signature(body, secret=settings.SANDBOX_WEBHOOK_SECRET)}
    receipt = services.webhook_receive(provider="sandbox", body=body, headers=headers)
    services.payment_settle(event_id=receipt.event.pk)
    payment.refresh_from_db()
    return payment


def settled_sandbox_payment(organization: Organization, amount: str = "25.00") -> Payment:
    """A sandbox recharge taken through the real path: started, notified, settled."""
    payment = sandbox_notify(sandbox_payment(organization, amount))
    assert payment.status == "succeeded"
    return payment


def settled_stripe_payment(organization: Organization, amount: str = "25.00") -> Payment:
    """A Stripe recharge (STRIPE_* settings set by the caller) settled by its paid
    checkout.session.completed notification."""
    payment = stripe_payment(organization, amount)
    body = stripe_event_body("checkout.session.completed", stripe_session(payment))
    headers = {"Stripe-Signature": hmac_signature(body, secret=settings.STRIPE_WEBHOOK_SECRET)}
    receipt = services.webhook_receive(provider="stripe", body=body, headers=headers)
    services.payment_settle(event_id=receipt.event.pk)
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    return payment
