"""One gateway call from its hold to its one capture or release (docs/gateway.md, "Money" and "Outcomes").

The call runs in its own task, not in the view's: when the client goes away, Django cancels the view, but
the call must still end in exactly one capture or release. Under the route's `drain` policy the task keeps
reading the upstream (for at most GATEWAY_DRAIN_SECONDS) for its usage report; under `cancel` it is
cancelled, closes the upstream, and charges what was delivered. A stream's events go to the client through
a queue; the client's side counts what it actually handed to the server, which is what `delivered` means.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from accounts.models import ApiKey
from accounts.tenancy import Tenant
from gateway import billing, limits, metrics, tokens
from gateway.errors import GatewayError, UpstreamError
from gateway.models import Outcome
from gateway.selectors import RouteConfig, UpstreamConfig
from gateway.shaping import CallPlan, Endpoint
from gateway.simulate import SIMULATED_TRANSPORT
from gateway.upstream import Opened, call_open, error_event
from metering.models import Hold

logger = logging.getLogger(__name__)

# Calls whose task outlives its view (a client that left, a drain): kept here so they are not collected.
_running: set[asyncio.Task[None]] = set()
_END = object()
CAPTURE_ATTEMPTS = 4
HOLD_MARGIN_SECONDS = 120
RECEIVED_JSON_BYTES = 64 * 1024  # a stream's events kept as JSON for an estimate; past it, as their text
CAPTURE_BACKOFF_SECONDS = 0.25
# Bytes of events waiting for a client's socket before the relay stops reading the upstream (backpressure).
QUEUE_MAX_BYTES = 256 * 1024


def in_thread(function: Any) -> Any:
    """A blocking function (the database, the cache) as a coroutine, on a worker thread."""
    return sync_to_async(function, thread_sensitive=False)


def release_when_written(writing: asyncio.Future[Hold], *, api_key: ApiKey, reserved: int) -> None:
    """Free the hold of a call that will never start (its client left while the hold was being written) once its
    thread has written it, and give back the call's TPM reservation."""

    async def release() -> None:
        try:
            hold = await writing
        except GatewayError:
            pass  # refused (402 and the like): no hold was written
        else:
            await in_thread(billing.call_release)(hold=hold)
        await limits.key_tokens_settle(key_id=api_key.pk, tpm_limit=api_key.tpm_limit, reserved=reserved, actual=0)

    task = asyncio.create_task(release(), name="gateway-orphan-hold")
    _running.add(task)
    task.add_done_callback(_running.discard)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**12 else None


def usage_quantities(usage: Any, *, with_output: bool = True) -> dict[str, int] | None:
    """The TOKENS quantities of an upstream's usage report; None when it is not a sound report. A report
    of a call with output (chat, completions) must name `completion_tokens`: without it the output would
    be charged as none. An embedding's report has none to name."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens")) if with_output else _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    quantities = {"input_tokens": prompt, "output_tokens": completion}
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached:
        quantities["cached_input_tokens"] = min(cached, prompt)
    return quantities


def _event_text(payload: str) -> str:
    """The output text of one stream event's JSON ("" when it is not JSON)."""
    try:
        return _output_text(json.loads(payload))
    except (ValueError, RecursionError):
        return ""


def _output_text(answer: Any) -> str:
    """The text a chat or completion answer (or one stream chunk) delivered: content, refusals, reasoning (as
    reasoning upstreams stream it) and function / tool-call arguments. Never an error's text."""
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return ""
    parts: list[str] = []
    for choice in answer["choices"]:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        message = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message")
        if not isinstance(message, dict):
            continue
        for key in ("content", "refusal", "reasoning_content", "reasoning"):
            if isinstance(message.get(key), str):
                parts.append(message[key])
        tool_calls = message.get("tool_calls")
        functions = (
            [call.get("function") for call in tool_calls if isinstance(call, dict)] if isinstance(tool_calls, list) else []
        )
        for function in [*functions, message.get("function_call")]:  # function_call: the legacy `functions` API
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                parts.append(function["arguments"])
    return "".join(parts)


def _sse(payload: str) -> str:
    """One event for the client. An upstream may spread an event's data over several `data:` lines (joined by
    "\n"): each line needs its own field name, or the client drops all but the first."""
    return "data: " + payload.replace("\n", "\ndata: ") + "\n\n"


@dataclass(eq=False)
class Call:
    request_id: str
    tenant: Tenant
    route: RouteConfig
    plan: CallPlan
    hold: Hold
    upstreams: tuple[UpstreamConfig, ...]
    stream_slot: bool = False
    opened: Opened | None = None
    usage: dict[str, int] | None = None
    usage_relayed: bool = False  # a stream's usage chunk went to the client (who asked for it)
    received: list[str] = field(default_factory=list)  # a stream's content events, in order
    received_as_text: int = 0  # how many of `received` are already their text, not their JSON
    received_bytes: int = 0  # of JSON kept in `received`
    delivered: int = 0  # how many of them the client was handed
    failed: bool = False
    client_gone: bool = False
    answer: bytes | None = None
    images_returned: int = 0
    done_seen: bool = False
    failure_event: str | None = None  # a stream's error event, sent after the charge like [DONE]
    reading_upstream: bool = False  # what `cancel` may interrupt: never the close and the charge that follow
    drain_deadline: float | None = None  # loop time: `drain` reads the upstream until then once the client left
    _waiting: asyncio.Timeout | None = None  # the relay's wait for the upstream's next event
    task: asyncio.Task[None] | None = None
    ready: asyncio.Future[GatewayError | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0
    _taken: asyncio.Event = field(default_factory=asyncio.Event)  # the client took an event (or left)

    @property
    def model(self) -> str:
        return self.route.model

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"gateway-call-{self.request_id}")
        _running.add(self.task)
        self.task.add_done_callback(_running.discard)

    def client_left(self) -> None:
        """The client went away. `cancel` stops the upstream now; `drain` lets the task read on."""
        if self.client_gone:
            return
        self.client_gone = True
        self._taken.set()
        if self.route.on_disconnect == "cancel":
            if self.reading_upstream and self.task is not None and not self.task.done():
                self.task.cancel()
            return
        self.drain_deadline = asyncio.get_running_loop().time() + settings.GATEWAY_DRAIN_SECONDS
        if self._waiting is not None:
            self._waiting.reschedule(self.drain_deadline)

    def _announce(self, result: GatewayError | None) -> None:
        if not self.ready.done():
            self.ready.set_result(result)

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            # A shutdown: a capture already under way still completes (it is shielded), so this cannot promise
            # that nothing was charged.
            self._announce(UpstreamError("The gateway stopped while serving this call; check its usage record before retrying."))
            raise
        except Exception:
            # The charge could not be written (the database stayed away through the retries) or the call broke:
            # a plain answer is not given out unpaid, and the hold expires by itself (docs/gateway.md).
            logger.exception("gateway: call %s could not be charged", self.request_id)
            self._announce(GatewayError("The gateway could not record this call; please retry."))
        finally:
            self._announce(None)
            if self.plan.stream:
                if self.done_seen:
                    self._send("data: [DONE]\n\n")
                elif self.failure_event is not None:
                    self._send(self.failure_event)
                self.queue.put_nowait(_END)

    async def _serve(self) -> None:
        outcome: Outcome | None = None
        try:
            try:
                self.reading_upstream = True
                self.opened = await call_open(
                    upstreams=self.upstreams,
                    path=self.plan.endpoint.value,
                    body=self.plan.body,
                    stream=self.plan.stream,
                    call_id=self.request_id,
                    transport=SIMULATED_TRANSPORT,
                )
                outcome = await (self._relay() if self.plan.stream else self._read_answer())
            except asyncio.CancelledError:
                if not self.client_gone and not (self.plan.stream and self.received):
                    raise  # the server is shutting down and nothing reached the client: the hold expires by itself
                task = asyncio.current_task()
                if task is not None:
                    # Ours (`cancel` policy), or the server shutting down mid-stream (the client's connection is cut
                    # with it; which of the two tasks hears it first is chance): the call goes on to its charge.
                    task.uncancel()
                outcome = Outcome.CLIENT_DISCONNECTED
            finally:
                self.reading_upstream = False
        except GatewayError as error:
            await self._release()
            self._announce(error)
            return
        finally:
            if self.opened is not None:
                await asyncio.shield(self.opened.close())
                metrics.UPSTREAM_LATENCY.labels(self.opened.upstream.name).observe(time.perf_counter() - self.opened.started)
        assert outcome is not None
        await self._charge(outcome)

    async def _read_answer(self) -> Outcome:
        assert self.opened is not None and self.opened.body is not None
        try:
            answer = json.loads(self.opened.body)
        except (ValueError, RecursionError):
            raise UpstreamError("The upstream's answer is not JSON; nothing was charged.") from None
        self.answer = self.opened.body
        if self.plan.endpoint is Endpoint.IMAGES:
            images = answer.get("data") if isinstance(answer, dict) else None
            self.images_returned = len(images) if isinstance(images, list) else 0
            return Outcome.CLIENT_DISCONNECTED if self.client_gone else Outcome.COMPLETED
        self.usage = usage_quantities(
            answer.get("usage") if isinstance(answer, dict) else None, with_output=self.plan.endpoint is not Endpoint.EMBEDDINGS
        )
        if self.usage is None:
            self.received.append(_output_text(answer))
            self.received_as_text = 1
        if self.client_gone:
            return Outcome.CLIENT_DISCONNECTED
        return Outcome.COMPLETED if self.usage is not None else Outcome.NO_USAGE_REPORTED

    async def _relay(self) -> Outcome:
        """Pass the upstream's events on as they arrive; keep the first usage report (an upstream may repeat
        it); stop at an error event or a broken stream."""
        assert self.opened is not None and self.opened.events is not None and self.opened.first_event is not None
        metrics.STREAMS_OPEN.inc()
        self._announce(None)
        renew_at = time.monotonic() + settings.GATEWAY_LEASE_SECONDS / 3
        # The hold must still be active at the capture: a stream is cut before the hold's expiry could free it.
        cut_at = time.monotonic() + settings.GATEWAY_HOLD_SECONDS - HOLD_MARGIN_SECONDS
        try:
            events = self.opened.events
            payload: str | None = self.opened.first_event
            while payload is not None:
                if payload == "[DONE]":
                    self.done_seen = True  # sent after the charge: a client that ends its stream sees it recorded
                    break
                if '"usage"' in payload and self._usage_event(payload):
                    pass
                elif (error := error_event(payload)) is not None:
                    self.failed = True
                    metrics.UPSTREAM_ERRORS.labels(self.opened.upstream.name, "mid_stream").inc()
                    self._send_error("The upstream failed mid-stream: " + str(error.get("message", ""))[:200])
                    break
                else:
                    self._receive(payload)
                    self._send(_sse(payload), content=True)
                if time.monotonic() >= cut_at:
                    self._mid_stream_failure("the stream outlived its hold")
                    break
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + settings.GATEWAY_LEASE_SECONDS / 3
                    await self._renew_leases()
                await self._client_keeps_up()
                # Unbounded until the client leaves; client_left bounds it by the drain even mid-wait.
                waiting = self._waiting = asyncio.timeout_at(self.drain_deadline)
                try:
                    async with waiting:
                        payload = await anext(events, None)
                except TimeoutError:
                    if waiting.expired():
                        break  # drained as long as we may: charge what was received
                    raise
                finally:
                    self._waiting = None
        except (TimeoutError, OSError) as error:
            self._mid_stream_failure(type(error).__name__)
        except Exception as error:  # httpx's transport errors: a dropped connection, a broken chunk
            if type(error).__module__.startswith(("httpx", "httpcore")):
                self._mid_stream_failure(type(error).__name__)
            else:
                raise
        finally:
            metrics.STREAMS_OPEN.dec()
        if self.client_gone:
            return Outcome.CLIENT_DISCONNECTED
        if self.usage is not None:
            return Outcome.COMPLETED
        return Outcome.UPSTREAM_FAILED if self.failed else Outcome.NO_USAGE_REPORTED

    async def _renew_leases(self) -> None:
        """A stream outliving its leases' first term keeps its concurrency slots (docs/gateway-resilience.md)."""
        assert self.opened is not None and self.tenant.api_key is not None
        upstream = None if self.opened.upstream.simulated else self.opened.upstream.name
        if not self.stream_slot and upstream is None:
            return
        await limits.lease_renew(
            lease_seconds=settings.GATEWAY_LEASE_SECONDS,
            key_id=self.tenant.api_key.pk if self.stream_slot else None,
            stream_id=self.request_id if self.stream_slot else None,
            upstream=upstream,
            call_id=self.request_id if upstream else None,
        )

    async def _client_keeps_up(self) -> None:
        """Read the upstream no faster than the client reads. A client that takes nothing for the upstream's idle
        timeout while events wait for it is treated as gone: a reader that stalls costs a bounded queue, not the
        whole answer in memory."""
        assert self.opened is not None
        while self.queued_bytes > QUEUE_MAX_BYTES and not self.client_gone:
            self._taken.clear()
            try:
                async with asyncio.timeout(self.opened.upstream.idle_timeout):
                    await self._taken.wait()
            except TimeoutError:
                while not self.queue.empty():  # what waits now was never handed to the client, and is not charged
                    self.queue.get_nowait()
                self.queued_bytes = 0
                message = f"The client read nothing for {self.opened.upstream.idle_timeout:g} s; the stream was ended."
                body = {"error": {"message": message, "type": "api_error", "param": None, "code": "client_stalled"}}
                self._send(f"data: {json.dumps(body)}\n\n")
                self.client_left()

    def _usage_event(self, payload: str) -> bool:
        """Handle a usage report; False when the event carries none after all."""
        try:
            parsed = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        if not isinstance(parsed, dict) or not parsed.get("usage"):
            return False
        reported = usage_quantities(parsed["usage"])
        if reported is not None:
            # Reports are running totals (some upstreams send one on every chunk, some repeat the last): the latest
            # is the whole call's, and replaces the earlier ones. Usage is counted once.
            self.usage = reported
        if parsed.get("choices"):
            self._receive(payload)  # content that carries a report: on the last chunk, or on every chunk
            self._send(_sse(payload), content=True)
        elif self.plan.client_wants_usage and not self.usage_relayed:
            self.usage_relayed = True  # a repeated usage chunk reaches the client once
            self._send(_sse(payload))
        return True

    def _mid_stream_failure(self, kind: str) -> None:
        assert self.opened is not None
        self.failed = True
        metrics.UPSTREAM_ERRORS.labels(self.opened.upstream.name, "mid_stream").inc()
        self._send_error(f"The upstream failed mid-stream ({kind}).")

    def _send(self, text: str, *, content: bool = False) -> None:
        if not self.client_gone:
            data = text.encode()
            self.queued_bytes += len(data)
            self.queue.put_nowait((data, content))

    def _send_error(self, message: str) -> None:
        """The error event that ends a failed stream: sent once the call is charged, so that a client that stops
        at it (the SDK raises) finds its usage recorded."""
        body = {"error": {"message": message, "type": "api_error", "param": None, "code": "upstream_error"}}
        self.failure_event = f"data: {json.dumps(body)}\n\n"

    async def client_events(self) -> AsyncIterator[bytes]:
        """The stream the client reads. Stopping early (the client left) tells the call."""
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                chunk, content = item
                self.queued_bytes -= len(chunk)
                self._taken.set()
                yield chunk
                if content:
                    self.delivered += 1
        except BaseException:
            self.client_left()
            raise

    def _receive(self, payload: str) -> None:
        """Keep a content event for a possible estimate: as its JSON (parsed only if an estimate is needed), until
        a long stream's JSON passes RECEIVED_JSON_BYTES; then as its text alone (a fraction of the JSON)."""
        self.received.append(payload)
        self.received_bytes += len(payload)
        if self.received_bytes > RECEIVED_JSON_BYTES:
            for index in range(self.received_as_text, len(self.received)):
                self.received[index] = _event_text(self.received[index])
            self.received_as_text, self.received_bytes = len(self.received), 0

    def _estimated_output(self, outcome: Outcome) -> int:
        count = len(self.received)
        if outcome is Outcome.CLIENT_DISCONNECTED and self.route.on_disconnect == "cancel":
            count = self.delivered if self.plan.stream else 0
        text = [
            event if index < self.received_as_text else _event_text(event) for index, event in enumerate(self.received[:count])
        ]
        return tokens.count_text("".join(text), model=self.model)

    def _quantities(self, outcome: Outcome) -> tuple[dict[str, int] | None, bool]:
        """What to charge, and whether it is a local estimate; None: charge nothing."""
        if self.plan.endpoint is Endpoint.IMAGES:
            if self.images_returned == 0:
                return None, False
            if self.plan.image_quantities:
                return {**self.plan.image_quantities, "images": self.images_returned}, False
            return {}, False
        if self.usage is not None:
            return self.usage, False
        return {"input_tokens": self.plan.prompt_tokens, "output_tokens": self._estimated_output(outcome)}, True

    async def _charge(self, outcome: Outcome) -> None:
        quantities, estimated = self._quantities(outcome)
        upstream = self.opened.upstream.name if self.opened is not None else None
        metadata = {
            "request_id": self.request_id,
            "model": self.model,
            "endpoint": self.plan.endpoint.value,
            "upstream": upstream,
            "stream": self.plan.stream,
            "outcome": outcome.value,
            "estimated": estimated,
        }
        metrics.REQUESTS.labels(self.model, self.plan.endpoint.value, outcome.value).inc()
        if estimated:
            metrics.ESTIMATED.labels(self.model, outcome.value).inc()
        if quantities is None:
            await self._release()
            return
        record = await asyncio.shield(self._capture(quantities=quantities, metadata=metadata))
        used = quantities.get("input_tokens", 0) + quantities.get("output_tokens", 0)
        # The call is charged: what follows is bookkeeping, whose failure must not turn a paid answer into an error.
        try:
            for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
                if quantities.get(kind):
                    metrics.TOKENS.labels(self.model, outcome.value, kind.removesuffix("_tokens")).inc(quantities[kind])
            if not self.tenant.is_test:
                metrics.COST.labels(self.model, outcome.value).inc(float(record.cost))
        except Exception:
            logger.exception("gateway: call %s is charged, but its metrics could not be updated", self.request_id)
        await self._settle_limits(used)

    async def _capture(self, *, quantities: dict[str, int], metadata: dict[str, Any]) -> Any:
        """The capture, retried through a short database outage: it is idempotent (a capture that committed
        but whose answer was lost is answered again, not written twice)."""
        for attempt in range(CAPTURE_ATTEMPTS):
            try:
                return await in_thread(billing.call_capture)(
                    tenant=self.tenant, hold=self.hold, quantities=quantities, metadata=metadata
                )
            except DatabaseError:
                if attempt == CAPTURE_ATTEMPTS - 1:
                    raise
                logger.warning("gateway: capture of call %s failed; retrying", self.request_id, exc_info=True)
                await asyncio.sleep(CAPTURE_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def _release(self) -> None:
        await asyncio.shield(in_thread(billing.call_release)(hold=self.hold))
        await self._settle_limits(0)

    async def _settle_limits(self, used: int) -> None:
        """Give back the unused TPM reservation and free the stream slot. The call's money is settled by now: an error
        here (Redis refusing writes: full, or read-only in a failover) is logged, and the leases expire by themselves."""
        api_key = self.tenant.api_key
        assert api_key is not None
        try:
            await limits.key_tokens_settle(
                key_id=api_key.pk, tpm_limit=api_key.tpm_limit, reserved=self.plan.worst_tokens, actual=used
            )
        except Exception:
            logger.exception("gateway: the TPM reservation of call %s could not be settled", self.request_id)
        if self.stream_slot:
            self.stream_slot = False
            try:
                await limits.stream_release(key_id=api_key.pk, stream_id=self.request_id)
            except Exception:
                logger.exception("gateway: the stream slot of call %s could not be freed", self.request_id)
