"""System checks for production settings (`manage.py check --deploy`)."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Tags, Warning, register

from payments.providers import providers_enabled

SANDBOX_ENABLED_IN_PRODUCTION = (
    "THE SANDBOX PAYMENT PROVIDER IS ENABLED IN PRODUCTION (SANDBOX_IN_PRODUCTION=true): anyone who signs up "
    "can confirm their own recharges and get credit without paying."
)


def sandbox_enabled_in_production() -> bool:
    return not settings.DEVELOPMENT and "sandbox" in providers_enabled()


@register(Tags.security, deploy=True)
def sandbox_in_production_check(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[Warning]:
    if not sandbox_enabled_in_production():
        return []
    return [
        Warning(
            SANDBOX_ENABLED_IN_PRODUCTION,
            hint="Only for a demo or staging stack: remove SANDBOX_IN_PRODUCTION, or `sandbox` from PAYMENT_PROVIDERS.",
            id="payments.W001",
        )
    ]
