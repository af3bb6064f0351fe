"""Counting failures in the shared cache (Redis), to slow down password guessing and abuse.

A key counts failures for one subject (e.g. an email from one IP address). Once it reaches the
limit, the subject is refused until the window since its last failure has passed; a success
clears it. The cache must not swallow errors here (STYLE: no IGNORE_EXCEPTIONS on this cache).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

LOGIN_FAILURE_LIMIT = getattr(settings, "LOGIN_FAILURE_LIMIT", 5)
LOGIN_LOCKOUT_SECONDS = getattr(settings, "LOGIN_LOCKOUT_SECONDS", 15 * 60)


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client wants it to be unless a known proxy set it.
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _key(scope: str, *parts: str) -> str:
    return f"throttle:{scope}:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def retry_after(scope: str, *parts: str, limit: int) -> int:
    """Seconds until the subject may try again; 0 when it is not locked out."""
    key = _key(scope, *parts)
    count = cache.get(key) or 0
    if count < limit:
        return 0
    ttl = cache.ttl(key) if hasattr(cache, "ttl") else None
    return max(int(ttl or 0), 1)


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
    if sliding and hasattr(cache, "expire"):
        cache.expire(key, timeout=window)
    return count


def failures_clear(scope: str, *parts: str) -> None:
    cache.delete(_key(scope, *parts))


def login_retry_after(email: str, ip: str) -> int:
    return retry_after("login", email.strip().lower(), ip, limit=LOGIN_FAILURE_LIMIT)


def login_failed(email: str, ip: str) -> int:
    return failure_count("login", email.strip().lower(), ip, window=LOGIN_LOCKOUT_SECONDS)


def login_succeeded(email: str, ip: str) -> None:
    failures_clear("login", email.strip().lower(), ip)


def rate_exceeded(scope: str, subject: str, *, limit: int, window: int) -> bool:
    """A plain rate limit (sign-ups, reset emails): count this attempt; True once over `limit`."""
    return failure_count(scope, subject, window=window, sliding=False) > limit
