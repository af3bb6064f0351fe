"""Calling upstreams (docs/gateway.md, "Resilience").

An *attempt* takes the upstream's circuit-breaker permit and a slot of its concurrency cap (both shared by
every process, in Redis), sends the request, and waits for the first byte the client would see: the whole
body of a plain call, or the first event of a stream. Only then has anything reached the client, so only
until then may a failure be retried (with back-off, by tenacity) and then fall back to the route's next
upstream. One pooled httpx client per upstream and event loop keeps connections warm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from gateway import errors, metrics
from gateway.breaker import BreakerState, breaker_allow, breaker_failure, breaker_success
from gateway.limits import upstream_acquire, upstream_release
from gateway.selectors import UpstreamConfig

logger = logging.getLogger(__name__)

_clients: dict[tuple[int, str], httpx.AsyncClient] = {}


def client_for(upstream: UpstreamConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    key = (id(asyncio.get_running_loop()), upstream.base_url if transport is None else f"simulated:{id(transport)}")
    client = _clients.get(key)
    if client is None:
        client = httpx.AsyncClient(
            base_url=upstream.base_url.rstrip("/") + "/",
            transport=transport,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=settings.GATEWAY_KEEPALIVE_CONNECTIONS),
            follow_redirects=False,
            trust_env=False,  # an upstream is reached as configured, never through a proxy from the environment
        )
        _clients[key] = client
    return client


_SSE_LINE_END = re.compile(rb"\r\n|\r|\n")


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of a server-sent-event stream. SSE ends a line only at CR LF, LF or CR; httpx's aiter_lines splits
    like str.splitlines, also at U+2028, U+2029 and U+0085, which JSON carries unescaped inside a string."""
    pending = bytearray()  # the start of a line that has not ended yet
    after_cr = False  # a CR ended the last piece: an LF opening the next one belongs to it
    async for piece in chunks:
        if not piece:
            continue
        if after_cr and piece.startswith(b"\n"):
            piece = piece[1:]
        after_cr = piece.endswith(b"\r")
        *complete, rest = _SSE_LINE_END.split(piece)
        for line in complete:
            if pending:
                pending += line
                line, pending = bytes(pending), bytearray()
            yield line.decode("utf-8", "replace")
        pending += rest
    if pending:
        yield pending.decode("utf-8", "replace")


async def sse_events(response: httpx.Response, *, first_timeout: float, idle_timeout: float) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent-event stream, one per event; a stall longer than the
    timeout (the first-byte one for the first event, the idle one after it) raises TimeoutError."""
    lines = sse_lines(response.aiter_bytes()).__aiter__()
    data: list[str] = []
    timeout = first_timeout
    while True:
        try:
            async with asyncio.timeout(timeout):
                line = await anext(lines)
        except StopAsyncIteration:
            if data:
                yield "\n".join(data)
            return
        if not line:
            if data:
                yield "\n".join(data)
                data = []
                timeout = idle_timeout
            continue
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])


def error_event(payload: str) -> dict[str, Any] | None:
    """The `error` object of an event that carries one (cheap test first: most events are content)."""
    if '"error"' not in payload:
        return None
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else None


class _Failed(Exception):
    """An attempt failed before the first byte; `kind` says how (for the final status and the metrics)."""

    def __init__(self, kind: str, detail: str = "", *, counts_for_breaker: bool = True) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail
        self.counts_for_breaker = counts_for_breaker


class _Retryable(_Failed):
    pass


@dataclass(slots=True)
class Opened:
    """An upstream answer that has produced its first byte."""

    upstream: UpstreamConfig
    response: httpx.Response
    call_id: str
    started: float
    first_byte_at: float
    body: bytes | None = None  # a plain call's whole answer
    first_event: str | None = None  # a stream's first event
    events: AsyncIterator[str] | None = None  # the stream's following events
    released: bool = field(default=False)

    async def close(self) -> None:
        await self.response.aclose()
        if not self.released:
            self.released = True
            if not self.upstream.simulated:
                await upstream_release(upstream=self.upstream.name, call_id=self.call_id)


async def _attempt(
    *, upstream: UpstreamConfig, client: httpx.AsyncClient, path: str, content: bytes, stream: bool, call_id: str
) -> Opened:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if upstream.api_key:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    # httpx's read timeout bounds every read of a streamed body, so on a stream it must not be shorter than the
    # idle timeout (sse_events enforces both the first-event and the between-chunks bounds itself); the
    # answer's head is then bounded by the first-byte timeout here.
    # A plain call's first byte is its last: the whole generation comes before it (GATEWAY_PLAIN_TIMEOUT_SECONDS).
    read_timeout = (
        max(upstream.timeout, upstream.idle_timeout) if stream else max(upstream.timeout, settings.GATEWAY_PLAIN_TIMEOUT_SECONDS)
    )
    timeout = httpx.Timeout(
        connect=upstream.connect_timeout, read=read_timeout, write=upstream.timeout, pool=upstream.connect_timeout
    )
    request = client.build_request("POST", path, content=content, headers=headers, timeout=timeout)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(upstream.timeout if stream else None):
            response = await client.send(request, stream=True)
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as error:
        raise _Retryable("timeout", type(error).__name__) from None
    except (httpx.TimeoutException, TimeoutError) as error:
        # The request was sent: the upstream may be generating (and billing us). Another try here would pay
        # for a second generation; the route's next upstream is tried instead. A slow plain call says little
        # of the upstream's health (a long answer takes long), so only a stream's silence counts against it.
        raise _Failed("timeout", type(error).__name__, counts_for_breaker=stream) from None
    except httpx.TransportError as error:
        raise _Retryable("connect", type(error).__name__) from None
    opened = Opened(upstream=upstream, response=response, call_id=call_id, started=started, first_byte_at=started)
    try:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable("status", str(status))
        if status in (401, 403, 404):
            # The upstream refuses our credentials or does not know the model: a configuration fault of this
            # upstream, not of the client's request. The next upstream may serve it; this one will not on retry.
            raise _Failed("status", str(status))
        if status != 200:
            body = await response.aread()
            raise errors.UpstreamRefused(
                status=status, body=body, content_type=response.headers.get("content-type", "application/json")
            )
        if not stream:
            opened.body = await response.aread()
        elif response.headers.get("content-type", "").startswith("application/json"):
            # One JSON document for a stream: the upstream ignored `stream` (a whole answer, billed to us) or reports an
            # error with 200. A retry would only buy another; the next upstream may stream.
            raise _Failed("status", "a JSON answer to a stream")
        else:
            opened.events = sse_events(response, first_timeout=upstream.timeout, idle_timeout=upstream.idle_timeout)
            try:
                opened.first_event = await anext(opened.events)
            except StopAsyncIteration:
                raise _Retryable("empty", "the stream ended before its first event") from None
            if error_event(opened.first_event) is not None:
                raise _Retryable("status", "an error event before any content")
        opened.first_byte_at = time.perf_counter()
        return opened
    except TimeoutError:
        await response.aclose()
        raise _Failed("timeout", "no first byte in time", counts_for_breaker=stream) from None
    except httpx.TimeoutException as error:
        await response.aclose()
        raise _Failed("timeout", type(error).__name__, counts_for_breaker=stream) from None
    except httpx.TransportError as error:
        await response.aclose()
        raise _Retryable("connect", type(error).__name__) from None
    except BaseException:
        await response.aclose()
        raise


def _final_error(kinds: list[str]) -> errors.GatewayError:
    if not kinds or all(kind == "unavailable" for kind in kinds):
        return errors.UpstreamUnavailable()
    if kinds[-1] == "timeout":
        return errors.UpstreamTimeout()
    return errors.UpstreamError()


async def call_open(
    *,
    upstreams: Sequence[UpstreamConfig],
    path: str,
    body: dict[str, Any],
    stream: bool,
    call_id: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Opened:
    """The first upstream of the route that answers, in order; retried before the first byte. Raises the
    gateway error of the last failure (502/503/504), or the upstream's own refusal of the request (4xx)."""
    kinds: list[str] = []
    for upstream in upstreams:
        if not upstream.simulated:
            # The slot first: a half-open breaker's one probe permit must not be taken by a call that then finds
            # the upstream full and never reports back.
            if not await upstream_acquire(
                upstream=upstream.name,
                limit=upstream.max_concurrency,
                call_id=call_id,
                lease_seconds=settings.GATEWAY_LEASE_SECONDS,
            ):
                kinds.append("unavailable")
                metrics.UPSTREAM_ERRORS.labels(upstream.name, "concurrency").inc()
                continue
            if not await breaker_allow(upstream.name):
                await upstream_release(upstream=upstream.name, call_id=call_id)
                kinds.append("unavailable")
                metrics.UPSTREAM_ERRORS.labels(upstream.name, "breaker_open").inc()
                metrics.BREAKER_OPEN.labels(upstream.name).set(1)
                continue
        client = client_for(upstream, transport=transport if upstream.simulated else None)
        content = json.dumps({**body, "model": upstream.upstream_model}).encode()
        answered = False  # the slot then goes with the answer (Opened.close releases it)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(1 + settings.GATEWAY_UPSTREAM_RETRIES),
                wait=wait_exponential_jitter(multiplier=settings.GATEWAY_RETRY_BACKOFF_SECONDS, max=2.0),
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    try:
                        opened = await _attempt(
                            upstream=upstream, client=client, path=path, content=content, stream=stream, call_id=call_id
                        )
                    except _Failed as failed:
                        metrics.UPSTREAM_ERRORS.labels(upstream.name, failed.kind).inc()
                        if not upstream.simulated and failed.counts_for_breaker:
                            state = await breaker_failure(upstream.name)
                            metrics.BREAKER_OPEN.labels(upstream.name).set(0 if state == BreakerState.CLOSED else 1)
                            if state is BreakerState.OPEN:
                                # This failure opened the breaker (or was the probe's): no more tries while it is open.
                                raise _Failed(failed.kind, failed.detail) from None
                        raise
            if not upstream.simulated:
                await breaker_success(upstream.name)
                metrics.BREAKER_OPEN.labels(upstream.name).set(0)
            metrics.UPSTREAM_FIRST_BYTE.labels(upstream.name).observe(opened.first_byte_at - opened.started)
            answered = True
            return opened
        except _Failed as failed:
            kinds.append(failed.kind)
            logger.warning("gateway: upstream %s failed before the first byte (%s)", upstream.name, failed)
        except errors.UpstreamRefused:
            if not upstream.simulated:
                # It answered, and objects to the request itself: the upstream is healthy (a probe succeeded).
                await breaker_success(upstream.name)
            raise
        finally:
            if not answered and not upstream.simulated:
                await upstream_release(upstream=upstream.name, call_id=call_id)
    raise _final_error(kinds)
