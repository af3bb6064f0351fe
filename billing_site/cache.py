"""The two-level cache: a dictionary in each process in front of the database, kept honest by one
version token per namespace in Redis. What is cached and when it changes is decided next to each
selector (`accounts/selectors.py`: API keys; `metering/selectors.py`: the price in force); this
module is only the mechanism, the same for both.

- **Reading.** A local entry is used only while (1) its namespace's token in Redis is still the one
  it was stored under, (2) its own expiry has not come (a price's next `effective_from`), and (3) it
  is younger than `CACHE_LOCAL_SECONDS` (a backstop). A request reads the tokens of every namespace
  at its first lookup, with one MGET, and keeps them until it ends (`CacheVersionsMiddleware`); code
  outside a request (tasks, shells) reads them at every lookup.
- **Filling.** The token is read *before* the database, and the row is stored under that token: a
  row read just before a write commits is stored under the token the write then replaces, so it is
  never used again. Rows are stored only from reads outside any transaction of ours (committed data
  only): a transaction that wrote a row and rolls back cannot leave it behind.
- **Writing.** Every write of a cached row goes through `TwoLevelCache.invalidating()` (a service's
  queryset update) or the model signals of `invalidated_by` (admin forms, any `save()` or
  `delete()`): the namespace gets a new token *before* the write and again *after its commit*. The
  first bump refuses the write while Redis is unreachable, so nothing changes that other processes
  are not told about; the second disposes of rows that other processes read between the first bump
  and the commit. Once the writing request has answered, every process's next request sees the
  change: a revoked key lives on only in requests already in flight.
- **Redis unreachable.** Lookups fall back to the database (correct, slower) and the process drops
  its local entries; writes of cached rows are refused (`CacheUnavailable`) until Redis is back.
- A token that is missing (a fresh or flushed Redis) is created at random, never counted up from a
  number an older entry might carry.

Nothing secret is stored: API keys are cached by the SHA-256 digest of their secret.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model, signals
from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
V = TypeVar("V")

_namespaces: dict[str, TwoLevelCache[Any]] = {}
_redis_down = False  # logged once per outage, not once per request


class CacheUnavailable(RuntimeError):
    """A cached row cannot be changed now: Redis, which tells the other processes, is unreachable."""


@dataclass(slots=True)
class _RequestVersions:
    values: dict[str, bytes | None] | None = None  # None until read; {} while Redis is unreachable


_request_versions: contextvars.ContextVar[_RequestVersions | None] = contextvars.ContextVar("cache_versions", default=None)


def _version_key(namespace: str) -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:cachever:{namespace}"


def _redis() -> Any:
    return get_redis_connection("default")


def _unreachable(error: Exception) -> None:
    global _redis_down
    if not _redis_down:
        logger.error("cache: Redis is unreachable, cached lookups fall back to the database: %s", error)
    _redis_down = True
    for cache in _namespaces.values():
        cache.clear_local()


def _read_versions() -> dict[str, bytes | None]:
    """Every namespace's token (None for each while Redis is unreachable). A missing token (a fresh or
    flushed Redis) is created at random, never counted up from a value an old entry may carry."""
    global _redis_down
    names = list(_namespaces)
    try:
        values = _redis().mget([_version_key(name) for name in names])
        missing = [index for index, value in enumerate(values) if value is None]
        if missing:
            pipe = _redis().pipeline(transaction=False)
            for index in missing:
                pipe.set(_version_key(names[index]), secrets.token_hex(8), nx=True)
            pipe.mget([_version_key(names[index]) for index in missing])
            for index, value in zip(missing, pipe.execute()[-1], strict=True):
                values[index] = value
    except RedisError as error:
        _unreachable(error)
        return {}
    if _redis_down:
        logger.warning("cache: Redis is reachable again")
        _redis_down = False
    return dict(zip(names, values, strict=True))


def _versions() -> dict[str, bytes | None]:
    scope = _request_versions.get()
    if scope is None:
        return _read_versions()
    if scope.values is None:
        scope.values = _read_versions()
    return scope.values


def _bump(namespaces: tuple[str, ...]) -> None:
    """New tokens for `namespaces`; CacheUnavailable when Redis cannot be told."""
    try:
        pipe = _redis().pipeline(transaction=False)
        for name in namespaces:
            pipe.set(_version_key(name), secrets.token_hex(8))
        pipe.execute()
    except RedisError as error:
        _unreachable(error)
        raise CacheUnavailable(f"Redis is unreachable: the change of {', '.join(namespaces)} was not made.") from error
    scope = _request_versions.get()
    if scope is not None:
        scope.values = None  # this request's later lookups read the new tokens
    for name in namespaces:
        _namespaces[name].clear_local()


def _bump_after_commit(namespaces: tuple[str, ...]) -> None:
    try:
        _bump(namespaces)
    except CacheUnavailable:
        # The write is committed and cannot be refused any more. Every process that meets the outage
        # drops its entries; one that does not is bounded by CACHE_LOCAL_SECONDS.
        logger.exception("cache: a committed change of %s could not be announced", ", ".join(namespaces))


def _reads_committed_data() -> bool:
    """Outside any transaction of ours. The test suite's wrapping transaction counts as committed
    (as it does for Django's `durable`)."""
    return not connection.in_atomic_block or (
        bool(connection.atomic_blocks) and all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    )


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    version: bytes
    stored_at: float  # time.monotonic()
    expires_at: datetime | None  # the value's own end (a price's next change), if any


class TwoLevelCache(Generic[V]):
    """One namespace: `get(key, load)` answers the value for `key`, from this process when its entry
    is still valid, else from `load()` (the database), which answers (value, expires_at) or None
    (not found: answered, never stored)."""

    def __init__(self, namespace: str, *, max_entries: int = 10_000) -> None:
        if namespace in _namespaces:
            raise ValueError(f"cache namespace {namespace!r} exists")
        self.namespace = namespace
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()
        _namespaces[namespace] = self

    def get(self, key: Hashable, load: Callable[[], tuple[V, datetime | None] | None]) -> V | None:
        version = _versions().get(self.namespace)
        if version is not None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
            if (
                entry is not None
                and entry.version == version
                and time.monotonic() - entry.stored_at < settings.CACHE_LOCAL_SECONDS
                and (entry.expires_at is None or timezone.now() < entry.expires_at)
            ):
                return entry.value
        loaded = load()
        if loaded is None:
            return None
        value, expires_at = loaded
        if version is not None and _reads_committed_data():
            with self._lock:
                self._entries[key] = _Entry(value, version, time.monotonic(), expires_at)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def update_local(self, key: Hashable, change: Callable[[V], V]) -> None:
        """Replace this process's entry for `key` (if any) by `change(value)`, keeping its version:
        for a column that is not part of what the cache promises (a key's `last_used_at`)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.value = change(entry.value)

    def clear_local(self) -> None:
        with self._lock:
            self._entries.clear()

    @contextmanager
    def invalidating(self) -> Iterator[None]:
        """Wrap a write of cached rows, inside its transaction: a new token before it (CacheUnavailable,
        and no write, while Redis is unreachable) and another once it commits."""
        _bump((self.namespace,))
        yield
        transaction.on_commit(partial(_bump_after_commit, (self.namespace,)))

    def invalidated_by(self, model: type[Model], *, creation: bool) -> None:
        """Every save and delete of a `model` row is wrapped like `invalidating` (pre_ and post_ signals:
        admin forms, services, commands alike). A creation counts only with `creation` (a new price
        changes the price in force; a new key or service replaces no cached row, misses are not cached)."""
        namespaces = (self.namespace,)

        def before_save(sender: Any, instance: Model, raw: bool = False, **kwargs: Any) -> None:
            if creation or not instance._state.adding:
                _bump(namespaces)

        def after_save(sender: Any, instance: Model, created: bool, **kwargs: Any) -> None:
            if creation or not created:
                transaction.on_commit(partial(_bump_after_commit, namespaces))

        def before_delete(sender: Any, instance: Model, **kwargs: Any) -> None:
            _bump(namespaces)

        def after_delete(sender: Any, instance: Model, **kwargs: Any) -> None:
            transaction.on_commit(partial(_bump_after_commit, namespaces))

        uid = f"cache:{self.namespace}:{model._meta.label}"
        for signal, receiver in (
            (signals.pre_save, before_save),
            (signals.post_save, after_save),
            (signals.pre_delete, before_delete),
            (signals.post_delete, after_delete),
        ):
            signal.connect(receiver, sender=model, weak=False, dispatch_uid=f"{uid}:{receiver.__name__}")


@contextmanager
def versions_scope() -> Iterator[None]:
    """Within it, the version tokens are read once (at the first cached lookup) and kept to its end."""
    token = _request_versions.set(_RequestVersions())
    try:
        yield
    finally:
        _request_versions.reset(token)


class CacheVersionsMiddleware:
    """Scopes the version tokens to one request (`versions_scope`)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with versions_scope():
            return self.get_response(request)


def clear_local() -> None:
    """Drop every namespace's entries in this process (tests, after flushing Redis)."""
    for cache in _namespaces.values():
        cache.clear_local()
