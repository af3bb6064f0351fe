"""Payment providers behind one small interface. These modules are the only code that talks to
a provider; nothing here runs inside a transaction or under a row lock."""

from payments.providers.base import (
    Checkout,
    Provider,
    ProviderDeclined,
    ProviderError,
    ProviderEvent,
    ProviderUnreachable,
    WebhookRefused,
)


def providers_enabled() -> list[str]:
    """PAYMENT_PROVIDERS as they apply, the one list every surface (recharge, checkout, webhooks)
    obeys: the sandbox, which confirms payments without any money moving, only in development or
    with SANDBOX_IN_PRODUCTION."""
    from django.conf import settings

    sandbox_allowed = settings.DEVELOPMENT or settings.SANDBOX_IN_PRODUCTION
    return [name for name in settings.PAYMENT_PROVIDERS if name != "sandbox" or sandbox_allowed]


def provider_get(name: str) -> Provider:
    """The enabled provider `name`; KeyError for an unknown or disabled one."""
    from payments.providers.sandbox import SandboxProvider
    from payments.providers.stripe_provider import StripeProvider

    providers: dict[str, type[Provider]] = {"sandbox": SandboxProvider, "stripe": StripeProvider}
    if name not in providers or name not in providers_enabled():
        raise KeyError(name)
    return providers[name]()


__all__ = [
    "Checkout",
    "Provider",
    "ProviderDeclined",
    "ProviderError",
    "ProviderEvent",
    "ProviderUnreachable",
    "WebhookRefused",
    "provider_get",
    "providers_enabled",
]
