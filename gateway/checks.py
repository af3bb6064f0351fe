"""System checks of the gateway's settings. Errors, not deploy warnings: `manage.py migrate` (the
release step) and `check` refuse to go on, so no process of a release serves without them."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Error, Tags, register

from gateway.crypto import configured_keys_problem


@register(Tags.security)
def encryption_keys_check(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[Error]:
    keys = [key for key in settings.GATEWAY_ENCRYPTION_KEYS if key.strip()]
    if not keys and not settings.DEVELOPMENT:
        return [
            Error(
                "GATEWAY_ENCRYPTION_KEYS is not set: upstream API keys cannot be encrypted or read.",
                hint='Set it to a Fernet key: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())" (comma-separate several to rotate; docs/operations.md).',
                id="gateway.E001",
            )
        ]
    problem = configured_keys_problem(keys)
    if problem:
        return [Error(problem + ".", hint="Generate keys with cryptography's Fernet.generate_key().", id="gateway.E002")]
    return []
