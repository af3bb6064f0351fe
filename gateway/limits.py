"""Per-key requests and tokens per minute, concurrent streams per key, and calls in flight per upstream,
all in Redis so that every gateway process shares them. Each check is one Lua script: one round trip,
atomic, on Redis's clock.

**RPM and TPM are token buckets** (the continuous form of a sliding 60-second window, as OpenAI meters its
own limits): a bucket holds `limit` units and refills at `limit` per 60 s; a request takes 1 unit from
the requests bucket and its worst-case token estimate from the tokens bucket, both or neither. Chosen over
the two windowed counters because:
- a fixed window lets 2 × limit through in the second around its boundary, and its "reset" would tell a
  client that everything comes back at once; a sliding log needs one entry per request, and giving back
  a reservation's unused tokens needs to find that reservation (the settle call carries no id);
- a bucket is two numbers per key, and giving back unused tokens is exact: the bucket ends where it would
  be had only the actual tokens been reserved (it never holds more than its capacity);
- its headers are honest in OpenAI's own terms: `remaining` is what may be spent right now, `reset` is the
  time until the bucket is full again ("resets to its initial state"); OpenAI's 12 ms reset for 5,000 RPM
  is exactly one request's refill (60 s / 5,000).
Over any interval of t seconds a key gets at most limit × (1 + t / 60): never more than `limit` at once.

**Concurrency caps are leases**: a sorted set per key (streams) or per upstream (calls), member → expiry
time. A process killed mid-stream leaks its slot only until the lease ends; long streams renew.

**Redis unreachable.** The per-key limits (RPM, TPM, streams) raise LimitsUnavailable (a 503 for the
client, which retries): they are limits the key's owner set to bound a runaway or leaked key, and letting
traffic through unchecked is exactly what they exist to prevent, while refusing is safe and retryable. A
key without limits never touches Redis here, so it is not affected. The per-upstream cap fails open, like
the breaker: it spares the upstream, which still protects itself with 429s our retry and fallback handle,
and failing closed would stop every paid call over a Redis blip. Money depends on none of this: holds in
PostgreSQL bound every call's cost. Releases, give-backs and renewals that cannot reach Redis are dropped
(logged once): leases expire and buckets refill by themselves.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from gateway.redis import LUA_NOW, REDIS_UNREACHABLE, LuaScript, OutageLog, async_redis, key_prefix

WINDOW_MS = 60_000


class LimitsUnavailable(RuntimeError):
    """A key's limits cannot be checked now (Redis is unreachable): refuse the call, retryable (503)."""


@dataclass(frozen=True)
class RateWindow:
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again


@dataclass(frozen=True)
class Admission:
    allowed: bool
    # On a refusal: whole seconds until the same request would fit; None when it never can (its tokens
    # exceed the TPM limit). None when allowed.
    retry_after: int | None
    requests: RateWindow | None  # None: no RPM limit
    tokens: RateWindow | None  # None: no TPM limit


# A bucket is a hash {debt, at}: units taken (each unit counts WINDOW_MS) not yet refilled as of `at` (ms).
# It refills `limit` per ms, so integers stay exact (limit × WINDOW_MS < 2^53 for any 32-bit limit).
_BUCKETS = (
    LUA_NOW
    + """
local W = 60000
local now = now_ms(ARGV[1])
local function load(key, limit)
  local v = redis.call('HMGET', key, 'debt', 'at')
  local debt, at = tonumber(v[1]) or 0, tonumber(v[2]) or now
  if now > at then
    debt, at = math.max(0, debt - limit * (now - at)), now
  end
  return debt, at
end
local function store(key, limit, debt, at)
  if debt <= 0 then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'debt', debt, 'at', at)
    redis.call('PEXPIRE', key, (at - now) + math.ceil(debt / limit) + 1000)
  end
end
local function window(limit, debt, at)
  return {math.max(0, math.floor((limit * W - debt) / W)), (at - now) + math.ceil(debt / limit)}
end
"""
)

# KEYS: requests bucket, tokens bucket. ARGV: now, rpm (0: none), tpm (0: none), tokens.
# -> {allowed, wait ms (-1: never fits), rpm remaining, rpm reset ms, tpm remaining, tpm reset ms}
_ADMIT = (
    _BUCKETS
    + """
local rpm, tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rdebt, rat, tdebt, tat = 0, now, 0, now
local wait = 0
if rpm > 0 then
  rdebt, rat = load(KEYS[1], rpm)
  local over = rdebt + W - rpm * W
  if over > 0 then wait = math.max(wait, (rat - now) + math.ceil(over / rpm)) end
end
if tpm > 0 then
  tdebt, tat = load(KEYS[2], tpm)
  local over = tdebt + tokens * W - tpm * W
  if tokens > tpm then wait = -1
  elseif over > 0 and wait >= 0 then wait = math.max(wait, (tat - now) + math.ceil(over / tpm)) end
end
local allowed = 0
if wait == 0 then
  allowed = 1
  if rpm > 0 then rdebt = rdebt + W; store(KEYS[1], rpm, rdebt, rat) end
  if tpm > 0 then tdebt = tdebt + tokens * W; store(KEYS[2], tpm, tdebt, tat) end
end
local r, t = {0, 0}, {0, 0}
if rpm > 0 then r = window(rpm, rdebt, rat) end
if tpm > 0 then t = window(tpm, tdebt, tat) end
return {allowed, wait, r[1], r[2], t[1], t[2]}
"""
)

# KEYS: tokens bucket. ARGV: now, tpm, tokens to add back (negative: taken beyond the reservation).
_SETTLE = (
    _BUCKETS
    + """
local tpm = tonumber(ARGV[2])
local debt, at = load(KEYS[1], tpm)
store(KEYS[1], tpm, math.max(0, debt - tonumber(ARGV[3]) * W), at)
return 1
"""
)

# KEYS: a lease set. ARGV: now, limit, member, lease ms. -> 1 acquired (or already held: renewed), 0 full
_ACQUIRE = (
    LUA_NOW
    + """
local now = now_ms(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""
)

# KEYS: a lease set. ARGV: now, member, lease ms. -> 1 renewed, 0 no longer held
_RENEW = (
    LUA_NOW
    + """
local now = now_ms(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
)

_admit_script = LuaScript(_ADMIT)
_settle_script = LuaScript(_SETTLE)
_acquire_script = LuaScript(_ACQUIRE)
_renew_script = LuaScript(_RENEW)

_key_outage = OutageLog("gateway limits", "calls by keys with limits are refused (503)")
_upstream_outage = OutageLog("gateway upstream caps", "upstream concurrency is not capped")


def _bucket_keys(key_id: int) -> tuple[str, str]:
    # One hash tag per API key, so both buckets live in the same slot of a Redis Cluster.
    base = f"{key_prefix()}:rate:{{key:{key_id}}}"
    return f"{base}:requests", f"{base}:tokens"


def _streams_key(key_id: int) -> str:
    return f"{key_prefix()}:streams:{{key:{key_id}}}"


def _upstream_calls_key(upstream: str) -> str:
    return f"{key_prefix()}:upstream-calls:{{upstream:{upstream}}}"


def _now_arg(now: float | None) -> str:
    return "" if now is None else str(round(now * 1000))


def _check_limit(name: str, value: int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
    return value


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number ≥ 0, not {value!r}")
    return value


def _lease_ms(lease_seconds: float) -> int:
    if not lease_seconds > 0 or math.isinf(lease_seconds):
        raise ValueError(f"lease_seconds must be a positive number of seconds, not {lease_seconds!r}")
    return max(1, math.ceil(lease_seconds * 1000))


async def key_admit(
    *, key_id: int, rpm_limit: int | None, tpm_limit: int | None, tokens: int, now: float | None = None
) -> Admission:
    """Count one request against the key's RPM and reserve `tokens` (the worst-case estimate) against its
    TPM, atomically; when either would exceed, refuse and count nothing. `now` (Unix seconds) replaces
    Redis's clock, for tests. Raises LimitsUnavailable when Redis is unreachable and the key has a limit."""
    rpm, tpm = _check_limit("rpm_limit", rpm_limit), _check_limit("tpm_limit", tpm_limit)
    _check_count("tokens", tokens)
    if not rpm and not tpm:
        return Admission(allowed=True, retry_after=None, requests=None, tokens=None)
    try:
        allowed, wait_ms, r_remaining, r_reset_ms, t_remaining, t_reset_ms = await _admit_script(
            keys=_bucket_keys(key_id), args=(_now_arg(now), rpm, tpm, tokens)
        )
    except REDIS_UNREACHABLE as error:
        _key_outage.failed(error)
        raise LimitsUnavailable("rate limits cannot be checked: Redis is unreachable") from error
    _key_outage.answered()
    return Admission(
        allowed=bool(allowed),
        retry_after=None if allowed or wait_ms < 0 else max(1, math.ceil(wait_ms / 1000)),
        requests=RateWindow(limit=rpm, remaining=r_remaining, reset_seconds=r_reset_ms / 1000) if rpm else None,
        tokens=RateWindow(limit=tpm, remaining=t_remaining, reset_seconds=t_reset_ms / 1000) if tpm else None,
    )


async def key_tokens_settle(*, key_id: int, tpm_limit: int | None, reserved: int, actual: int, now: float | None = None) -> None:
    """Give back the part of a TPM reservation the call did not use (`reserved` - `actual`); a call that
    used more than it reserved takes the difference. Dropped (and logged once) when Redis is unreachable:
    the reservation then just refills with time."""
    tpm = _check_limit("tpm_limit", tpm_limit)
    unused = _check_count("reserved", reserved) - _check_count("actual", actual)
    if not tpm or not unused:
        return
    try:
        await _settle_script(keys=_bucket_keys(key_id)[1:], args=(_now_arg(now), tpm, unused))
    except REDIS_UNREACHABLE as error:
        _key_outage.failed(error)
        return
    _key_outage.answered()


def _duration(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-* (Go's notation): 12ms, 1s, 7.66s, 6m0s."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, fraction = divmod(ms, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers for the limits the key has
    (none for a key without limits). Retry-After, for a refusal, is the caller's (admission.retry_after)."""
    headers: dict[str, str] = {}
    for kind, window in (("requests", admission.requests), ("tokens", admission.tokens)):
        if window is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = _duration(window.reset_seconds)
    return headers


async def stream_acquire(*, key_id: int, limit: int | None, stream_id: str, lease_seconds: float) -> bool:
    """Take one of the key's `limit` concurrent-stream slots for `lease_seconds` (True), or answer False when
    all are held. Taking a slot `stream_id` already holds renews it. No limit: True without Redis.
    Raises LimitsUnavailable when Redis is unreachable and the key has a limit."""
    cap = _check_limit("limit", limit)
    lease_ms = _lease_ms(lease_seconds)
    if not cap:
        return True
    try:
        acquired = await _acquire_script(keys=(_streams_key(key_id),), args=("", cap, stream_id, lease_ms))
    except REDIS_UNREACHABLE as error:
        _key_outage.failed(error)
        raise LimitsUnavailable("stream limits cannot be checked: Redis is unreachable") from error
    _key_outage.answered()
    return bool(acquired)


async def stream_release(*, key_id: int, stream_id: str) -> None:
    """Free the stream's slot (nothing happens if it holds none)."""
    await _release(_streams_key(key_id), stream_id, _key_outage)


async def upstream_acquire(*, upstream: str, limit: int, call_id: str, lease_seconds: float) -> bool:
    """Take one of the upstream's `limit` in-flight slots for `lease_seconds` (True), or answer False when
    all are held. True while Redis is unreachable (fails open, logged once)."""
    cap = _check_limit("limit", limit)
    lease_ms = _lease_ms(lease_seconds)
    if not cap:
        raise ValueError("an upstream always has a concurrency limit")
    try:
        acquired = await _acquire_script(keys=(_upstream_calls_key(upstream),), args=("", cap, call_id, lease_ms))
    except REDIS_UNREACHABLE as error:
        _upstream_outage.failed(error)
        return True
    _upstream_outage.answered()
    return bool(acquired)


async def upstream_release(*, upstream: str, call_id: str) -> None:
    """Free the call's slot on the upstream (nothing happens if it holds none)."""
    await _release(_upstream_calls_key(upstream), call_id, _upstream_outage)


async def _release(key: str, member: str, outage: OutageLog) -> None:
    try:
        await async_redis().zrem(key, member)
    except REDIS_UNREACHABLE as error:
        outage.failed(error)  # the lease ends by itself
        return
    outage.answered()


async def lease_renew(
    *,
    lease_seconds: float,
    key_id: int | None = None,
    stream_id: str | None = None,
    upstream: str | None = None,
    call_id: str | None = None,
) -> bool:
    """Extend a long call's leases to `lease_seconds` from now: its stream slot (`key_id` + `stream_id`)
    and/or its upstream slot (`upstream` + `call_id`). False when a named lease had already ended (its slot
    may have gone to another call); True otherwise, also when Redis is unreachable (nothing to extend)."""
    lease_ms = _lease_ms(lease_seconds)
    if (key_id is None) != (stream_id is None) or (upstream is None) != (call_id is None):
        raise ValueError("name a stream lease by key_id and stream_id, an upstream lease by upstream and call_id")
    leases: list[tuple[str, str, OutageLog]] = []
    if key_id is not None and stream_id is not None:
        leases.append((_streams_key(key_id), stream_id, _key_outage))
    if upstream is not None and call_id is not None:
        leases.append((_upstream_calls_key(upstream), call_id, _upstream_outage))
    if not leases:
        raise ValueError("name at least one lease to renew")
    held = await asyncio.gather(*(_renew(key, member, lease_ms, outage) for key, member, outage in leases))
    return all(held)


async def _renew(key: str, member: str, lease_ms: int, outage: OutageLog) -> bool:
    try:
        renewed = await _renew_script(keys=(key,), args=("", member, lease_ms))
    except REDIS_UNREACHABLE as error:
        outage.failed(error)
        return True
    outage.answered()
    return bool(renewed)
