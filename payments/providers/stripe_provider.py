"""Stripe Checkout through the official `stripe` package. Webhooks are verified with
`stripe.Webhook.construct_event` and the endpoint secret, as Stripe documents."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings

from payments.providers.base import (
    Checkout,
    Outcome,
    ProviderError,
    ProviderEvent,
    ProviderUnreachable,
    WebhookRefused,
    from_minor_units,
    to_minor_units,
)

if TYPE_CHECKING:
    from stripe.params import RefundCreateParams
    from stripe.params.checkout import SessionCreateParams

    from payments.models import Payment

SIGNATURE_HEADER = "Stripe-Signature"
ACTING_EVENTS = {
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
}


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise ProviderError("Stripe is not configured (STRIPE_SECRET_KEY).")
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, max_network_retries=2)


class StripeProvider:
    name = "stripe"

    def create_checkout(self, payment: Payment, *, success_url: str, cancel_url: str) -> Checkout:
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": payment.currency.lower(),
                        "unit_amount": to_minor_units(payment.amount, payment.currency),
                        "product_data": {"name": f"Tollgate balance top-up ({payment.organization.name})"},
                    },
                }
            ],
            "client_reference_id": str(payment.pk),
            "metadata": {"payment_id": str(payment.pk), "organization": payment.organization.slug},
            "payment_intent_data": {"metadata": {"payment_id": str(payment.pk)}},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        try:
            session = _client().v1.checkout.sessions.create(
                params=params, options={"idempotency_key": f"tollgate-payment-{payment.pk}"}
            )
        except stripe.StripeError as exc:
            raise ProviderError(f"Stripe refused the checkout: {exc.user_message or exc.__class__.__name__}") from exc
        if session.url is None:  # a new hosted-page session always has one; without it nobody can pay
            raise ProviderError(f"Stripe answered checkout session {session.id} without a payment page URL")
        return Checkout(reference=session.id, url=session.url, livemode=bool(session.livemode))

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        if not settings.STRIPE_WEBHOOK_SECRET:
            raise WebhookRefused("Stripe webhooks are not configured")
        try:
            event = stripe.Webhook.construct_event(body, headers.get(SIGNATURE_HEADER, ""), settings.STRIPE_WEBHOOK_SECRET)
        except ValueError as exc:
            raise WebhookRefused("malformed Stripe payload") from exc
        except stripe.SignatureVerificationError as exc:
            raise WebhookRefused("Stripe signature does not verify") from exc
        payload = event.to_dict()
        if event.type not in ACTING_EVENTS:
            return ProviderEvent(
                event_id=event.id,
                event_type=event.type,
                outcome=Outcome.IGNORED,
                payment_id=None,
                amount=None,
                currency=None,
                livemode=bool(event.livemode),
                payload=payload,
            )
        # A plain dict: the pinned `stripe` package's objects are no longer dicts (no `.get`).
        session: dict[str, Any] = (payload.get("data") or {}).get("object") or {}
        metadata: dict[str, Any] = session.get("metadata") or {}
        reference = session.get("client_reference_id") or metadata.get("payment_id")
        if event.type == "checkout.session.completed":
            outcome = Outcome.SUCCEEDED if session.get("payment_status") in ("paid", "no_payment_required") else Outcome.IGNORED
        elif event.type == "checkout.session.async_payment_succeeded":
            outcome = Outcome.SUCCEEDED
        elif event.type == "checkout.session.async_payment_failed":
            outcome = Outcome.FAILED
        else:
            outcome = Outcome.CANCELED
        try:
            if reference is None:
                raise TypeError("no payment id")
            payment_id = int(reference)
            currency = str(session["currency"]).upper()
            amount = from_minor_units(int(session["amount_total"]), currency)
        except (TypeError, ValueError, KeyError) as exc:
            raise WebhookRefused("the Stripe session does not name a Tollgate payment") from exc
        return ProviderEvent(
            event_id=event.id,
            event_type=event.type,
            outcome=outcome,
            payment_id=payment_id,
            amount=amount,
            currency=currency,
            livemode=bool(event.livemode),
            payload=payload,
            provider_reference=session.get("id", ""),
        )

    def refund(self, payment: Payment, amount: Decimal, *, idempotency_key: str) -> str:
        client = _client()
        try:
            session = client.v1.checkout.sessions.retrieve(payment.provider_reference)
            params: RefundCreateParams = {
                "amount": to_minor_units(amount, payment.currency),
                "metadata": {"payment_id": str(payment.pk)},
            }
            # An id (it is not expanded), or None before the session is paid: Stripe then refuses the refund.
            if session.payment_intent is not None:
                params["payment_intent"] = (
                    session.payment_intent if isinstance(session.payment_intent, str) else session.payment_intent.id
                )
            refund = client.v1.refunds.create(params=params, options={"idempotency_key": idempotency_key})
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise ProviderUnreachable(f"Stripe did not answer the refund: {exc.__class__.__name__}") from exc
        except stripe.StripeError as exc:
            raise ProviderError(f"Stripe refused the refund: {exc.user_message or exc.__class__.__name__}") from exc
        return refund.id
