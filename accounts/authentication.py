"""JWT and API-key authentication for the REST API."""

import hmac

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework_simplejwt.authentication import JWTAuthentication

from accounts.models import ApiKey
from accounts.selectors import api_key_by_digest
from accounts.services import API_KEY_PREFIXES, api_key_digest, api_key_touch

_KEY_PREFIXES = tuple(API_KEY_PREFIXES.values())


class ApiKeyPrincipal:
    """`request.user` for a request made with an API key: authenticated, but not a person."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    pk = id = None

    def __init__(self, api_key: ApiKey):
        self.api_key = api_key

    def __str__(self) -> str:
        return f"api key {self.api_key.prefix}"


def _presented_key(request) -> str | None:
    header_key = request.headers.get("X-API-Key")
    if header_key:
        return header_key.strip()
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials.startswith(_KEY_PREFIXES):
        return credentials
    return None


class ApiKeyRefused(Exception):
    """The presented secret is not a usable key (unknown, revoked or expired); the message says which."""


def api_key_for_secret(secret: str) -> ApiKey:
    """The live or test key this secret opens, its organization loaded; ApiKeyRefused otherwise. The one
    rule for every face that takes API keys (the REST API and the gateway). One indexed query at most;
    no write per request."""
    digest = api_key_digest(secret)
    api_key = api_key_by_digest(digest=digest)
    # The digest lookup is an index probe, not a secret comparison; compare in constant time anyway.
    if api_key is None or not hmac.compare_digest(api_key.digest, digest):
        raise ApiKeyRefused("Unknown API key.")
    now = timezone.now()
    if api_key.revoked_at is not None:
        raise ApiKeyRefused("This API key was revoked.")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise ApiKeyRefused("This API key has expired.")
    api_key_touch(api_key=api_key)
    return api_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`X-API-Key: <key>` or `Authorization: Bearer tg_…`."""

    def authenticate(self, request):
        secret = _presented_key(request)
        if secret is None:
            return None
        try:
            api_key = api_key_for_secret(secret)
        except ApiKeyRefused as refused:
            raise exceptions.AuthenticationFailed(str(refused), code="invalid_api_key") from None
        return ApiKeyPrincipal(api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class JwtAuthentication(JWTAuthentication):
    """simplejwt, answering 401 (not 403) when no credentials are given."""

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
