"""Which address a request comes from, and counting attempts per subject in the shared cache (Redis):
the one sign-in lockout of the API token, the dashboard and the back office, and plain rate limits.

A lockout counts failures per (account, client address). Once the pair reaches LOGIN_FAILURE_LIMIT,
it is refused until LOGIN_LOCKOUT_SECONDS after its last failure; a success clears it. Keying on the
pair, not the account, means an attacker's failures never lock the account's owner out from the
owner's own address. The cache must not swallow errors here (STYLE: no IGNORE_EXCEPTIONS on it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING, cast

from django.conf import settings
from django.core.cache import cache as django_cache
from django.http import HttpRequest

if TYPE_CHECKING:
    from django_redis.cache import RedisCache

# The django-redis cache (settings.CACHES), whose ttl() and expire() Django's own cache type lacks.
cache = cast("RedisCache", django_cache)


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or with TRUSTED_PROXY_COUNT = N proxies in front, the N-th
    entry from the right of X-Forwarded-For, the address our outermost proxy saw. Entries further left
    are whatever the client sent, so they are never read; a header shorter than the proxy chain (or
    not an address there) means the request did not come through it, and REMOTE_ADDR is used."""
    remote = request.META.get("REMOTE_ADDR", "") or "unknown"
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if len(forwarded) < proxies:
        return remote
    try:
        return str(ipaddress.ip_address(forwarded[-proxies].strip()))
    except ValueError:
        return remote


def _key(scope: str, *parts: str) -> str:
    return f"throttle:{scope}:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def retry_after(scope: str, *parts: str, limit: int) -> int:
    """Seconds until the subject may try again; 0 when it is not locked out."""
    key = _key(scope, *parts)
    count = cache.get(key) or 0
    if count < limit:
        return 0
    return max(int(cache.ttl(key) or 0), 1)


def failure_count(scope: str, *parts: str, window: int, sliding: bool = True) -> int:
    """Count one failure. With `sliding`, the window restarts with each failure (a lockout lasts
    `window` from the last attempt); otherwise it runs from the first."""
    key = _key(scope, *parts)
    cache.add(key, 0, timeout=window)
    try:
        count = cache.incr(key)
    except ValueError:  # the key vanished between add and incr (expired, or the cache was flushed)
        cache.set(key, 1, timeout=window)
        count = 1
    if sliding:
        cache.expire(key, timeout=window)
    return count


def failures_clear(scope: str, *parts: str) -> None:
    cache.delete(_key(scope, *parts))


def rate_exceeded(scope: str, subject: str, *, limit: int, window: int) -> bool:
    """A plain rate limit (sign-ups, reset emails, invitations): count this attempt; True once over `limit`."""
    return failure_count(scope, subject, window=window, sliding=False) > limit


def _account(email: str) -> str:
    return email.strip().lower()


def signin_retry_after(*, email: str, ip: str) -> int:
    """Seconds before `email` may try to sign in again from `ip`; 0 when it may now."""
    return retry_after("login", _account(email), ip, limit=settings.LOGIN_FAILURE_LIMIT)


def signin_failed(*, email: str, ip: str) -> int:
    return failure_count("login", _account(email), ip, window=settings.LOGIN_LOCKOUT_SECONDS)


def signin_succeeded(*, email: str, ip: str) -> None:
    failures_clear("login", _account(email), ip)
