from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from billing_site.money import currency_exponent

if TYPE_CHECKING:
    from collections.abc import Mapping

    from payments.models import Payment


class ProviderError(Exception):
    """The provider refused the call: a definitive answer."""


class ProviderUnreachable(ProviderError):
    """No definitive answer (network, timeout, rate limit, provider outage): the call may or may not
    have taken effect, so retry it with the same idempotency key rather than assume either."""


class ProviderDeclined(ProviderError):
    """The payment method was declined (an off-session charge: the card refused, or it needs the
    payer present to authenticate)."""


class WebhookRefused(Exception):
    """A notification we will not act on: bad signature, stale, malformed, or not matching."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    IGNORED = "ignored"  # a valid event that changes nothing (e.g. an unpaid async session)


@dataclass(frozen=True)
class Checkout:
    reference: str
    url: str
    livemode: bool = False


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    event_type: str
    outcome: Outcome
    payment_id: int | None  # our payment, as the provider echoes it back
    amount: Decimal | None
    currency: str | None
    livemode: bool
    payload: dict[str, Any] = field(default_factory=dict)
    provider_reference: str = ""


class Provider(Protocol):
    name: str

    def create_checkout(self, payment: Payment, *, success_url: str, cancel_url: str) -> Checkout: ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent: ...

    def refund(self, payment: Payment, amount: Decimal, *, idempotency_key: str) -> str:
        """Return `amount` of `payment` to the payer; one provider refund per idempotency key."""
        ...

    def charge_saved(self, payment: Payment, *, customer: str, payment_method: str) -> str:
        """Charge `payment` off-session to a saved method and answer the provider's reference; its
        success is settled by the provider's notification, as a checkout's is. ProviderDeclined when
        the method is refused, ProviderUnreachable without a definitive answer (retry: one charge
        per payment however often it is asked)."""
        ...


def to_minor_units(amount: Decimal, currency: str) -> int:
    minor = amount.scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return int(minor)


def from_minor_units(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-currency_exponent(currency))
