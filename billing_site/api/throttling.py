"""Rate limits kept in Redis, so they hold across processes and machines.

A fixed one-minute window per (scope, principal): one INCRBY+EXPIRE round trip, atomic in Redis,
instead of DRF's SimpleRateThrottle (a read-modify-write of a timestamp list, racy across
processes and heavy at thousands of requests per minute). Organizations may carry staff-set
overrides; the defaults are generous enough that an honest busy client never meets them.
"""

from __future__ import annotations

import time

from django.conf import settings
from django_redis import get_redis_connection
from rest_framework.throttling import BaseThrottle

from billing_site.throttle import client_ip

WINDOW_SECONDS = 60
clock = time.time  # the tests pin it, so a window boundary never splits an assertion


def window_hit(*, scope: str, ident: str, cost: int, limit: int, now: float | None = None) -> tuple[bool, int]:
    """Count `cost` hits for (scope, ident) in the current window; answer (allowed, seconds until the
    window ends). A refused hit still counts, so hammering does not reset anything."""
    now = clock() if now is None else now
    window = int(now // WINDOW_SECONDS)
    key = f"{settings.CACHES['default']['KEY_PREFIX']}:throttle:{scope}:{ident}:{window}"
    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.incrby(key, cost)
    pipe.expire(key, WINDOW_SECONDS * 2)
    count, _ = pipe.execute()
    retry_after = int((window + 1) * WINDOW_SECONDS - now) + 1
    return count <= limit, retry_after


class PrincipalRateThrottle(BaseThrottle):
    """Requests per minute per API key, or per person (JWT)."""

    scope = "requests"

    def limit(self, request) -> int:
        organization = getattr(getattr(request, "tenant", None), "organization", None)
        override = getattr(organization, "requests_per_minute", None)
        if override:
            return override
        return (
            settings.THROTTLE_KEY_PER_MINUTE
            if request.auth is not None and hasattr(request.auth, "digest")
            else settings.THROTTLE_USER_PER_MINUTE
        )

    def cost(self, request) -> int:
        return 1

    def ident(self, request) -> str | None:
        if request.auth is not None and hasattr(request.auth, "digest"):
            return f"key:{request.auth.pk}"
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "pk", None):
            return f"user:{user.pk}"
        return None  # anonymous endpoints (sign-up, tokens) are limited by the anonymous throttle

    def allow_request(self, request, view) -> bool:
        ident = self.ident(request)
        if ident is None or not settings.THROTTLE_ENABLED:
            return True
        allowed, self._wait = window_hit(scope=self.scope, ident=ident, cost=self.cost(request), limit=self.limit(request))
        return allowed

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


class BatchEventRateThrottle(PrincipalRateThrottle):
    """Events per minute for usage/batch/: a batch of 1,000 costs 1,000."""

    scope = "batch-events"

    def limit(self, request) -> int:
        organization = getattr(getattr(request, "tenant", None), "organization", None)
        return getattr(organization, "batch_events_per_minute", None) or settings.THROTTLE_BATCH_EVENTS_PER_MINUTE

    def cost(self, request) -> int:
        events = request.data.get("events") if isinstance(request.data, dict) else None
        return max(1, len(events)) if isinstance(events, list) else 1


class AnonymousRateThrottle(BaseThrottle):
    """Per client address, for endpoints anyone may call (sign-up, tokens)."""

    def allow_request(self, request, view) -> bool:
        if not settings.THROTTLE_ENABLED:
            return True
        allowed, self._wait = window_hit(
            scope="anonymous", ident=client_ip(request), cost=1, limit=settings.THROTTLE_ANONYMOUS_PER_MINUTE
        )
        return allowed

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


class DocumentRateThrottle(PrincipalRateThrottle):
    """Downloads of rendered documents (receipts, statements) per minute per key or person: a PDF costs
    tens of milliseconds of CPU, a hundred times an ordinary request."""

    scope = "documents"

    def limit(self, request) -> int:
        return settings.THROTTLE_DOCUMENTS_PER_MINUTE


def document_download_allowed(*, user_id: int) -> tuple[bool, int]:
    """The same limit for a page's download (dashboard, signed in): (allowed, seconds to wait)."""
    if not settings.THROTTLE_ENABLED:
        return True, 0
    return window_hit(
        scope=DocumentRateThrottle.scope, ident=f"user:{user_id}", cost=1, limit=settings.THROTTLE_DOCUMENTS_PER_MINUTE
    )
