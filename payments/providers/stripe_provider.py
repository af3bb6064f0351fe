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
    ProviderDeclined,
    ProviderError,
    ProviderEvent,
    ProviderUnreachable,
    WebhookRefused,
    from_minor_units,
    to_minor_units,
)

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams, RefundCreateParams
    from stripe.params.checkout import SessionCreateParams

    from payments.models import Payment

SIGNATURE_HEADER = "Stripe-Signature"
ACTING_EVENTS = {
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
}
# An off-session PaymentIntent of auto top-up (docs/credits.md). A checkout's own PaymentIntent sends
# these too; only those marked `auto` in their metadata act (the session's events settle the others).
INTENT_EVENTS = {"payment_intent.succeeded": Outcome.SUCCEEDED, "payment_intent.payment_failed": Outcome.FAILED}
AUTO_METADATA = "tollgate_auto"


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise ProviderError("Stripe is not configured (STRIPE_SECRET_KEY).")
    if settings.STRIPE_API_BASE:
        return stripe.StripeClient(
            settings.STRIPE_SECRET_KEY, max_network_retries=2, base_addresses={"api": settings.STRIPE_API_BASE}
        )
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
        if event.type in INTENT_EVENTS:
            return _intent_event(event.id, event.type, payload, livemode=bool(event.livemode))
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

    def charge_saved(self, payment: Payment, *, customer: str, payment_method: str) -> str:
        """An off-session PaymentIntent confirmed at once, keyed by our payment (a retry never charges
        twice). A decline, or a card that needs its holder to authenticate, is a CardError."""
        params: PaymentIntentCreateParams = {
            "amount": to_minor_units(payment.amount, payment.currency),
            "currency": payment.currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "metadata": {"payment_id": str(payment.pk), AUTO_METADATA: "true"},
        }
        try:
            intent = _client().v1.payment_intents.create(
                params=params, options={"idempotency_key": f"tollgate-auto-{payment.pk}"}
            )
        except stripe.CardError as exc:
            code = exc.code or "card_declined"
            raise ProviderDeclined(f"Stripe declined the saved card ({code}).") from exc
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise ProviderUnreachable(f"Stripe did not answer the charge: {exc.__class__.__name__}") from exc
        except stripe.StripeError as exc:
            raise ProviderError(f"Stripe refused the charge: {exc.user_message or exc.__class__.__name__}") from exc
        if intent.status not in ("succeeded", "processing"):
            raise ProviderDeclined(f"Stripe left the charge {intent.status}.")
        return intent.id

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


def _intent_event(event_id: str, event_type: str, payload: dict[str, Any], *, livemode: bool) -> ProviderEvent:
    intent: dict[str, Any] = (payload.get("data") or {}).get("object") or {}
    metadata: dict[str, Any] = intent.get("metadata") or {}
    if metadata.get(AUTO_METADATA) != "true":
        return ProviderEvent(
            event_id=event_id,
            event_type=event_type,
            outcome=Outcome.IGNORED,
            payment_id=None,
            amount=None,
            currency=None,
            livemode=livemode,
            payload=payload,
        )
    try:
        payment_id = int(metadata["payment_id"])
        currency = str(intent["currency"]).upper()
        # What was charged: `amount_received` on a success, the intent's `amount` otherwise.
        minor = intent.get("amount_received") if event_type == "payment_intent.succeeded" else intent.get("amount")
        amount = from_minor_units(int(minor), currency)  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError) as exc:
        raise WebhookRefused("the Stripe PaymentIntent does not name a Tollgate payment") from exc
    return ProviderEvent(
        event_id=event_id,
        event_type=event_type,
        outcome=INTENT_EVENTS[event_type],
        payment_id=payment_id,
        amount=amount,
        currency=currency,
        livemode=livemode,
        payload=payload,
        provider_reference=str(intent.get("id", "")),
    )
