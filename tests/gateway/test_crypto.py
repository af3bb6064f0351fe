"""Upstream API keys at rest: Fernet through a MultiFernet (rotation), a key derived from SECRET_KEY
in development only, production refusing to start without keys, and `gateway_rotate_keys`."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from gateway.crypto import UpstreamKeyUnreadable, derived_development_key, upstream_key_decrypt, upstream_key_encrypt
from gateway.models import Upstream
from tests.gateway.config_helpers import PLAIN_KEY, upstream_add

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_a_key_round_trips_and_its_token_never_contains_it(settings):
    settings.GATEWAY_ENCRYPTION_KEYS = [OLD]

    token = upstream_key_encrypt(PLAIN_KEY)

    assert upstream_key_decrypt(token) == PLAIN_KEY
    assert PLAIN_KEY not in token and PLAIN_KEY[-6:] not in token
    assert upstream_key_encrypt(PLAIN_KEY) != token  # a fresh IV each time: equal keys do not look equal


def test_rotation_with_two_keys_then_the_old_one_dropped(settings, db):
    settings.GATEWAY_ENCRYPTION_KEYS = [OLD]
    upstream = upstream_add("openai")
    old_token = upstream.api_key_encrypted

    settings.GATEWAY_ENCRYPTION_KEYS = [NEW, OLD]  # the new key first: it encrypts, both decrypt
    assert upstream_key_decrypt(old_token) == PLAIN_KEY
    out = io.StringIO()
    call_command("gateway_rotate_keys", stdout=out)
    upstream.refresh_from_db()

    assert "Re-encrypted 1 upstream API key" in out.getvalue()
    assert upstream.api_key_encrypted != old_token
    settings.GATEWAY_ENCRYPTION_KEYS = [NEW]  # the old key is gone
    assert upstream_key_decrypt(upstream.api_key_encrypted) == PLAIN_KEY
    with pytest.raises(UpstreamKeyUnreadable):
        upstream_key_decrypt(old_token)


def test_rotation_names_the_keys_no_configured_key_opens(settings, db):
    settings.GATEWAY_ENCRYPTION_KEYS = [OLD]
    upstream_add("lost")
    upstream_add("keyless", api_key="")
    settings.GATEWAY_ENCRYPTION_KEYS = [NEW]
    before = Upstream.objects.get(name="lost").api_key_encrypted

    with pytest.raises(CommandError, match="lost"):
        call_command("gateway_rotate_keys", stdout=io.StringIO())

    assert Upstream.objects.get(name="lost").api_key_encrypted == before
    assert Upstream.objects.get(name="keyless").api_key_encrypted == ""


def test_a_token_from_another_key_or_tampered_is_unreadable_and_says_so_without_the_key(settings):
    settings.GATEWAY_ENCRYPTION_KEYS = [NEW]
    foreign = Fernet(Fernet.generate_key()).encrypt(PLAIN_KEY.encode()).decode()
    mine = upstream_key_encrypt(PLAIN_KEY)
    tampered = mine[:-4] + ("AAAA" if mine[-4:] != "AAAA" else "BBBB")

    for token in (foreign, tampered, "not a token"):
        with pytest.raises(UpstreamKeyUnreadable) as refused:
            upstream_key_decrypt(token)
        assert PLAIN_KEY not in str(refused.value)


def test_development_derives_a_key_from_secret_key_and_keeps_reading_it_once_keys_are_set(settings):
    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = True, []
    token = upstream_key_encrypt(PLAIN_KEY)
    assert Fernet(derived_development_key(settings.SECRET_KEY)).decrypt(token.encode()).decode() == PLAIN_KEY

    settings.GATEWAY_ENCRYPTION_KEYS = [NEW]
    assert upstream_key_decrypt(token) == PLAIN_KEY  # the derived key still decrypts, after the given ones
    assert Fernet(NEW.encode()).decrypt(upstream_key_encrypt(PLAIN_KEY).encode()).decode() == PLAIN_KEY

    settings.SECRET_KEY = "another secret key, another derived key"
    settings.GATEWAY_ENCRYPTION_KEYS = []
    with pytest.raises(UpstreamKeyUnreadable):
        upstream_key_decrypt(token)


def test_production_never_derives_a_key(settings):
    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = False, []
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_ENCRYPTION_KEYS"):
        upstream_key_encrypt(PLAIN_KEY)

    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = True, []
    derived_token = upstream_key_encrypt(PLAIN_KEY)
    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = False, [NEW]
    with pytest.raises(UpstreamKeyUnreadable):  # the development key is no fallback here
        upstream_key_decrypt(derived_token)


def _gateway_checks() -> set[str]:
    return {message.id for message in run_checks(tags=["security"]) if message.id.startswith("gateway.")}


@pytest.mark.parametrize(
    ("development", "keys", "expected"),
    [
        pytest.param(False, [], {"gateway.E001"}, id="production-without-keys"),
        pytest.param(False, [NEW], set(), id="production-with-a-key"),
        pytest.param(False, [NEW, "not-a-fernet-key"], {"gateway.E002"}, id="production-with-a-bad-key"),
        pytest.param(True, [], set(), id="development-derives"),
        pytest.param(True, ["short"], {"gateway.E002"}, id="development-with-a-bad-key"),
    ],
)
def test_the_system_check_refuses_missing_or_malformed_keys(settings, development, keys, expected):
    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = development, keys
    assert _gateway_checks() == expected


def test_the_check_never_quotes_a_key(settings):
    settings.DEVELOPMENT, settings.GATEWAY_ENCRYPTION_KEYS = False, ["my-secret-but-malformed-key"]
    messages = [str(message) for message in run_checks(tags=["security"]) if message.id.startswith("gateway.")]
    assert messages and all("my-secret-but-malformed-key" not in message for message in messages)
