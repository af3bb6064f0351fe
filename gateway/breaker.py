"""A circuit breaker per upstream, kept in Redis so that every gateway process shares it.

closed → (GATEWAY_BREAKER_FAILURES consecutive failures) → open → (GATEWAY_BREAKER_COOLDOWN_SECONDS)
→ half-open: exactly one caller, across all processes, gets the probe → its success closes the breaker
(counter reset), its failure opens it for another cool-down. A success while closed resets the counter.
Every transition is one Lua script (EVALSHA), so two processes never both take the probe or both miss a
failure; time is Redis's clock, so processes on machines whose clocks differ still agree. The probe slot
is a key that expires after the cool-down: a probe holder that dies never wedges the breaker half-open.

Why not a library: pybreaker (1.4.1) protects async code only through Tornado (`call_async` is a
`tornado.gen.coroutine`), and its Redis storage is separate GET/SET/INCR calls on a synchronous client:
the open → half-open move is a plain SET after a read, so every process that reads "cool-down over"
sends its own probe, and consecutive-failure counts race with resets. aiobreaker (last release 1.2.0,
May 2021) is an asyncio fork of the same design: the state machine lives in each process, and its Redis
storage is the same non-atomic GET/SET on a synchronous client, which would block the event loop.
What we need is small (four scripts), and its one hard part, the atomic cross-process probe, is exactly
what neither library does.

Redis unreachable: every function answers as if the breaker were closed (calls go through) and the
outage is logged once. That is the right side to fail on: the breaker only spares a sick upstream and
our latency; money never depends on it (holds in PostgreSQL do), and an upstream that really is down
still fails each call, which the caller handles (retry, fallback, 5xx, nothing charged).
"""

from __future__ import annotations

import os
from enum import StrEnum

from django.conf import settings

from gateway.redis import LUA_NOW, REDIS_UNREACHABLE, LuaScript, OutageLog, key_prefix


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# A breaker's hash holds `failures` (consecutive, while closed) and `open_until` (ms, while open or
# half-open); its probe key exists while a half-open probe is out. Both carry a retention expiry so a
# removed upstream leaves nothing behind.
_RETENTION_MS = 24 * 3600 * 1000

_STATE = (
    LUA_NOW
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if not open_until then return 'closed' end
if now_ms(ARGV[1]) < open_until then return 'open' end
return 'half_open'
"""
)

# -> 1 allowed (closed), 2 allowed as the probe (half-open), 0 refused
_ALLOW = (
    LUA_NOW
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if not open_until then return 1 end
if now_ms(ARGV[1]) < open_until then return 0 end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
)

_SUCCESS = (
    LUA_NOW
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if not open_until then
  redis.call('HDEL', KEYS[1], 'failures')
  return 'closed'
end
-- A call that began before the breaker opened and succeeds during the cool-down does not cut it short.
if now_ms(ARGV[1]) < open_until then return 'open' end
redis.call('DEL', KEYS[1], KEYS[2])
return 'closed'
"""
)

_FAILURE = (
    LUA_NOW
    + """
local now = now_ms(ARGV[1])
local cooldown = tonumber(ARGV[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
local function open()
  redis.call('HSET', KEYS[1], 'open_until', now + cooldown)
  redis.call('HDEL', KEYS[1], 'failures')
  redis.call('PEXPIRE', KEYS[1], cooldown + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[2])
  return 'open'
end
if open_until then
  if now < open_until then return 'open' end
  return open()  -- half-open: the probe failed
end
if redis.call('HINCRBY', KEYS[1], 'failures', 1) >= tonumber(ARGV[3]) then return open() end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 'closed'
"""
)

_state_script = LuaScript(_STATE)
_allow_script = LuaScript(_ALLOW)
_success_script = LuaScript(_SUCCESS)
_failure_script = LuaScript(_FAILURE)

_outage = OutageLog("gateway breaker", "every upstream is treated as healthy (breakers closed)")


def _keys(upstream: str) -> tuple[str, str]:
    # One hash tag, so both keys live in the same slot of a Redis Cluster.
    base = f"{key_prefix()}:breaker:{{{upstream}}}"
    return base, f"{base}:probe"


def _cooldown_ms() -> int:
    return max(1, round(settings.GATEWAY_BREAKER_COOLDOWN_SECONDS * 1000))


async def breaker_allow(upstream: str) -> bool:
    """May this caller try `upstream` now? True while closed; while half-open, True for exactly one caller
    (the probe) until it reports or its slot expires after the cool-down; False while open."""
    try:
        verdict = await _allow_script(keys=_keys(upstream), args=("", _cooldown_ms(), os.getpid()))
    except REDIS_UNREACHABLE as error:
        _outage.failed(error)
        return True
    _outage.answered()
    return int(verdict) > 0


async def breaker_success(upstream: str) -> None:
    """Record a success: resets the consecutive failures; after the cool-down (the probe's answer) closes the breaker."""
    try:
        await _success_script(keys=_keys(upstream), args=("",))
    except REDIS_UNREACHABLE as error:
        _outage.failed(error)
        return
    _outage.answered()


async def breaker_failure(upstream: str) -> BreakerState:
    """Record a failure; answer the state after it. The GATEWAY_BREAKER_FAILURES-th consecutive failure,
    or a failed probe, opens the breaker for GATEWAY_BREAKER_COOLDOWN_SECONDS."""
    try:
        state = await _failure_script(
            keys=_keys(upstream), args=("", _cooldown_ms(), settings.GATEWAY_BREAKER_FAILURES, _RETENTION_MS)
        )
    except REDIS_UNREACHABLE as error:
        _outage.failed(error)
        return BreakerState.CLOSED
    _outage.answered()
    return BreakerState(state.decode())


async def breaker_state(upstream: str) -> BreakerState:
    """The breaker's state now (for metrics and the back office); CLOSED while Redis is unreachable,
    which is how the gateway then behaves."""
    try:
        state = await _state_script(keys=_keys(upstream), args=("",))
    except REDIS_UNREACHABLE as error:
        _outage.failed(error)
        return BreakerState.CLOSED
    _outage.answered()
    return BreakerState(state.decode())
