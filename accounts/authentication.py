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


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`X-API-Key: <key>` or `Authorization: Bearer tg_…`. One indexed query; no write per request."""

    def authenticate(self, request):
        secret = _presented_key(request)
        if secret is None:
            return None
        digest = api_key_digest(secret)
        api_key = api_key_by_digest(digest=digest)
        # The digest lookup is an index probe, not a secret comparison; compare in constant time anyway.
        if api_key is None or not hmac.compare_digest(api_key.digest, digest):
            raise exceptions.AuthenticationFailed("Unknown API key.", code="invalid_api_key")
        now = timezone.now()
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key was revoked.", code="invalid_api_key")
        if api_key.expires_at is not None and api_key.expires_at <= now:
            raise exceptions.AuthenticationFailed("This API key has expired.", code="invalid_api_key")
        api_key_touch(api_key=api_key)
        return ApiKeyPrincipal(api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class JwtAuthentication(JWTAuthentication):
    """simplejwt, answering 401 (not 403) when no credentials are given."""

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
