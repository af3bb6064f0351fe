"""Upstream API keys, encrypted at rest with Fernet (AES-128-CBC with an HMAC-SHA256 tag, from the
`cryptography` package) through a MultiFernet, so keys can be rotated.

Keys come from `GATEWAY_ENCRYPTION_KEYS` (comma-separated Fernet keys): the first encrypts, every one
decrypts. Rotation: put the new key first and keep the old one after it, restart every process, run
`manage.py gateway_rotate_keys`, then drop the old key (docs/operations.md, "Upstream API keys").

In development and tests, with the variable unset, the one key is derived from SECRET_KEY with HKDF
(SHA-256, a fixed label), so a fresh checkout works and no key sits in the repository; with the
variable set, that derived key still decrypts (after the given ones), so a development database can
move to explicit keys and be re-encrypted. Production never derives: it needs the variable
(`gateway.E001`, and every use raises ImproperlyConfigured).
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_DERIVATION_LABEL = b"tollgate gateway upstream api keys v1"


class UpstreamKeyUnreadable(Exception):
    """A stored key that none of the configured keys decrypts (a key was dropped before rotating)."""


def derived_development_key(secret_key: str) -> bytes:
    """The Fernet key development uses when GATEWAY_ENCRYPTION_KEYS is unset: HKDF of SECRET_KEY."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_LABEL).derive(secret_key.encode())
    return base64.urlsafe_b64encode(raw)


def configured_keys_problem(keys: list[str]) -> str | None:
    """Why `keys` (GATEWAY_ENCRYPTION_KEYS) cannot be used, or None. Never quotes a key."""
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.strip().encode())
        except (ValueError, TypeError):
            return f"entry {position} of GATEWAY_ENCRYPTION_KEYS is not a Fernet key (32 url-safe base64-encoded bytes)"
    return None


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str, development: bool) -> MultiFernet:
    if not keys and not development:
        raise ImproperlyConfigured("GATEWAY_ENCRYPTION_KEYS is required in production (comma-separated Fernet keys).")
    problem = configured_keys_problem(list(keys))
    if problem:
        raise ImproperlyConfigured(problem)
    fernets = [Fernet(key.strip().encode()) for key in keys]
    if development:
        fernets.append(Fernet(derived_development_key(secret_key)))
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    """The MultiFernet of the current settings (cached per setting values, so tests may change them)."""
    keys = tuple(key for key in settings.GATEWAY_ENCRYPTION_KEYS if key.strip())
    return _fernet(keys, settings.SECRET_KEY, settings.DEVELOPMENT)


def upstream_key_encrypt(plain: str) -> str:
    """The token to store for `plain`, under the first key."""
    return fernet().encrypt(plain.encode()).decode("ascii")


def upstream_key_decrypt(token: str) -> str:
    """The plain key of a stored token; UpstreamKeyUnreadable when no configured key opens it."""
    try:
        return fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as error:
        raise UpstreamKeyUnreadable("No key of GATEWAY_ENCRYPTION_KEYS decrypts this upstream key.") from error


def upstream_key_reencrypt(token: str) -> str:
    """`token` decrypted with whichever key opens it and encrypted again under the first key."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError) as error:
        raise UpstreamKeyUnreadable("No key of GATEWAY_ENCRYPTION_KEYS decrypts this upstream key.") from error
