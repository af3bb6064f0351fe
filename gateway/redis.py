"""The gateway's asyncio Redis: one client per running event loop, and Lua scripts run on it.

The gateway's request path is async (ASGI), and a `redis.asyncio` client is bound to the loop it first
ran on, so each loop gets its own (a server process has one loop; the tests run several). Timeouts are
short and a connection error is retried once at most: the request path would rather get an answer
"Redis is unreachable" in a second than wait for a back-off, and each caller decides what that means
(the breaker lets calls through, the per-key limits refuse them; see docs/gateway-resilience.md).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# What "Redis cannot be reached" looks like to callers; anything else (a script error) is a bug and propagates.
REDIS_UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass
class _LoopClient:
    url: str
    client: Redis
    scripts: dict[LuaScript, AsyncScript] = field(default_factory=dict)


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()


def _loop_client() -> _LoopClient:
    loop = asyncio.get_running_loop()
    url = settings.GATEWAY_REDIS_URL
    bound = _clients.get(loop)
    if bound is None or bound.url != url:
        timeout = settings.GATEWAY_REDIS_TIMEOUT_SECONDS
        client = Redis.from_url(
            url,  # redis:// or rediss:// (tcp) and unix:// (the embedded server's socket) alike
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Only a connection error is retried: the command was not sent, so running it again cannot
            # count anything twice. A timeout may have run the script, so it is not retried.
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        )
        bound = _LoopClient(url=url, client=client)
        _clients[loop] = bound
    return bound


def async_redis() -> Redis:
    """The Redis client of the running event loop (created on first use, for settings.GATEWAY_REDIS_URL)."""
    return _loop_client().client


async def async_redis_close() -> None:
    """Close the running loop's client, if it has one (at the end of a loop that is about to close)."""
    loop = asyncio.get_running_loop()
    bound = _clients.pop(loop, None)
    if bound is not None:
        await bound.client.aclose()


class LuaScript:
    """A Lua script, registered once per client and run with EVALSHA (loaded again if Redis lost it)."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        bound = _loop_client()
        script = bound.scripts.get(self)
        if script is None:
            script = bound.scripts[self] = bound.client.register_script(self.source)
        return await script(keys=list(keys), args=list(args))


class OutageLog:
    """Logs that Redis is unreachable once per outage, not once per request, and when it answers again."""

    def __init__(self, what: str, consequence: str) -> None:
        self.what = what
        self.consequence = consequence
        self.down = False

    def failed(self, error: BaseException) -> None:
        if not self.down:
            logger.error("%s: Redis is unreachable, %s: %r", self.what, self.consequence, error)
        self.down = True

    def answered(self) -> None:
        if self.down:
            logger.warning("%s: Redis is reachable again", self.what)
            self.down = False


def key_prefix() -> str:
    """Every gateway key starts with the cache's prefix, so tests (and several installations on one Redis) stay apart."""
    return f"{settings.CACHES['default']['KEY_PREFIX']}:gateway"


# Milliseconds from Redis's own clock, so that every process agrees on time; ARGV[1] overrides it (tests).
LUA_NOW = """
local function now_ms(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
