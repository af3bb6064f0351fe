"""Payment providers behind one small interface. These modules are the only code that talks to
a provider; nothing here runs inside a transaction or under a row lock."""

from payments.providers.base import Checkout, Provider, ProviderError, ProviderEvent, ProviderUnreachable, WebhookRefused


def provider_get(name: str) -> Provider:
    from django.conf import settings

    from payments.providers.sandbox import SandboxProvider
    from payments.providers.stripe_provider import StripeProvider

    providers: dict[str, type[Provider]] = {"sandbox": SandboxProvider, "stripe": StripeProvider}
    if name not in providers or name not in settings.PAYMENT_PROVIDERS:
        raise KeyError(name)
    return providers[name]()


__all__ = ["Checkout", "Provider", "ProviderError", "ProviderEvent", "ProviderUnreachable", "WebhookRefused", "provider_get"]
