"""The sandbox provider: a checkout page on our own site, then a signed notification to our own
webhook, exactly as an outside provider would send it (docs/contract.md §3, payment providers)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from django.conf import settings
from django.core import signing
from django.urls import reverse

from payments.providers.base import Checkout, Outcome, ProviderDeclined, ProviderError, ProviderEvent, WebhookRefused

if TYPE_CHECKING:
    from payments.models import Payment

SIGNATURE_HEADER = "Tollgate-Signature"
TOLERANCE_SECONDS = 300
EVENT_TYPES = {"payment.succeeded": Outcome.SUCCEEDED, "payment.failed": Outcome.FAILED}
CHECKOUT_SALT = "payments.sandbox.checkout"


def sign(body: bytes, *, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(body: bytes, header: str, *, secret: str, now: float | None = None) -> None:
    """Raises WebhookRefused unless `header` signs `body` with `secret` within the tolerance."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError) as exc:
        raise WebhookRefused("missing or malformed signature header") from exc
    now = time.time() if now is None else now
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise WebhookRefused("signature timestamp outside the tolerance")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(
        hmac.compare_digest(expected, value)
        for key, value in (p.split("=", 1) for p in header.split(",") if "=" in p)
        if key == "v1"
    ):
        raise WebhookRefused("signature does not match")


def checkout_token(payment_id: int) -> str:
    return signing.dumps(payment_id, salt=CHECKOUT_SALT)


def checkout_payment_id(token: str, *, max_age: int = 86400) -> int:
    payment_id: int = signing.loads(token, salt=CHECKOUT_SALT, max_age=max_age)  # what checkout_token signed
    return payment_id


def event_body(payment: Payment, outcome: Outcome) -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "payment.succeeded" if outcome == Outcome.SUCCEEDED else "payment.failed",
        "payment_id": payment.pk,
        "amount": format(payment.amount.normalize(), "f"),
        "currency": payment.currency,
    }
    return json.dumps(event, separators=(",", ":")).encode()


class SandboxProvider:
    name = "sandbox"

    def create_checkout(self, payment: Payment, *, success_url: str, cancel_url: str) -> Checkout:
        token = checkout_token(payment.pk)
        url = settings.SITE_URL.rstrip("/") + reverse("sandbox-checkout", args=[token])
        return Checkout(reference=f"sbx_{payment.pk}", url=url, livemode=False)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        verify(body, headers.get(SIGNATURE_HEADER, ""), secret=settings.SANDBOX_WEBHOOK_SECRET)
        try:
            event = json.loads(body)
            outcome = EVENT_TYPES[event["type"]]
            return ProviderEvent(
                event_id=str(event["id"]),
                event_type=event["type"],
                outcome=outcome,
                payment_id=int(event["payment_id"]),
                amount=Decimal(str(event["amount"])),
                currency=str(event["currency"]).upper(),
                livemode=False,
                payload=event,
            )
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise WebhookRefused("malformed sandbox event") from exc

    def refund(self, payment: Payment, amount: Decimal, *, idempotency_key: str) -> str:
        return f"sbx_re_{uuid.uuid4().hex[:16]}"

    def charge_saved(self, payment: Payment, *, customer: str, payment_method: str) -> str:
        """`pm_sandbox_ok` is charged: the signed success notification goes out as a confirmed checkout's
        does (by a worker, over HTTP); `pm_sandbox_decline`, and any other method, is declined."""
        from payments.auto_models import SANDBOX_METHOD_OK
        from payments.tasks import sandbox_webhook_deliver

        if payment_method != SANDBOX_METHOD_OK:
            raise ProviderDeclined("The sandbox declined this payment method.")
        sandbox_webhook_deliver.delay(payment.pk, str(Outcome.SUCCEEDED))
        return f"sbx_{payment.pk}"


def deliver(*, payment_id: int, outcome: str) -> int:
    """What the sandbox "provider" does after the payer decides: POST a signed event to our own
    webhook over HTTP, exactly like an outside provider. Answers the HTTP status. ProviderError
    (not retried) once the sandbox is disabled: a confirmation queued before stays unsent."""
    import requests

    from payments.models import Payment
    from payments.providers import providers_enabled

    if "sandbox" not in providers_enabled():
        raise ProviderError("the sandbox provider is disabled")

    payment = Payment.objects.get(pk=payment_id, provider="sandbox")
    body = event_body(payment, Outcome(outcome))
    response = requests.post(
        settings.SANDBOX_WEBHOOK_URL,
        data=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret=settings.SANDBOX_WEBHOOK_SECRET)},
        timeout=10,
    )
    if response.status_code >= 500:
        raise ConnectionError(f"webhook answered {response.status_code}")  # retried by the task
    return response.status_code
