"""A fake OpenAI upstream that is a real HTTP server: a raw ASGI app served by uvicorn on 127.0.0.1, in a
background thread for the tests (`FakeUpstream().start()`, or the `fake_upstream` fixture) or as a process for the
benchmark (`python -m tests.gateway.fake_upstream --port N` from the repository root; `--help` lists the
default behaviour it can be given, e.g. `--chunk-delay 0.05 --chunks 20` for slow streams).

It speaks OpenAI's wire format as the official `openai` SDK reads it: chat completions and completions (JSON, or
SSE `data: {chunk}` lines ending in `data: [DONE]`, with a final `choices: []` usage chunk only when the request
asks `stream_options.include_usage`), embeddings (float lists, or base64 float32 as the SDK asks by default),
image generations and the model list. Prompt tokens are counted with the gateway's own counter
(`gateway.tokens`), so by default the upstream and the gateway agree; a behaviour can make them differ.

A test scripts how the next requests are answered (`fake.script(Behaviour(status=500), times=2)`, FIFO) or sets
the default (`fake.set_default(chunk_delay=0.05)`); every request is recorded in `fake.requests` with its headers,
its JSON body and, for streams, how many chunks were written and whether the client went away mid-stream."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, TypeVar

import uvicorn

from gateway.tokens import (
    PromptInvalid,
    TokenEncoding,
    count_chat_prompt,
    count_completion_prompt,
    count_embedding_input,
    count_text,
    encoding_for,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

HOST = "127.0.0.1"
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."
)
DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "dall-e-3",
    "gpt-image-1",
)
SYSTEM_FINGERPRINT = "fp_fake"
EMBEDDING_DIMENSIONS = 8
# /v1/completions stops after 16 tokens when the request sets no max_tokens (OpenAI's API reference).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# gpt-image-1 bills a 1024×1024 image of medium quality as 1,056 output tokens.
IMAGE_OUTPUT_TOKENS = 1056
# A 1×1 transparent PNG: what `b64_json` and the image URLs serve.
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one request. The defaults answer normally and report usage.

    Failures before the first byte: `status` (an OpenAI error body with that status; 429 carries `retry_after`,
    default "1"), `close_before_first_byte` (accept, read the request, reset the connection), and
    `stall_before_first_byte` seconds. Streams: `chunk_delay` seconds between chunks; `stall_mid_stream` =
    (k, seconds) pauses after k chunks; `fail_mid_stream` = k resets the TCP connection after k chunks;
    `error_event_mid_stream` = k sends `data: {"error": …}` after k chunks and ends the response. A non-stream
    answer under `fail_mid_stream` sends its headers and half its body, then resets. A "chunk" is one SSE event:
    a chat stream sends a role chunk, one chunk per reply token, a finish chunk and the usage chunk(s).

    Usage: `omit_usage` (no usage chunk; a JSON answer without `usage`), `repeat_usage` (the usage chunk twice),
    `cached_tokens`, and overrides of `prompt_tokens` / `completion_tokens` (otherwise counted). The reply is
    `reply` (default lorem ipsum) cut to `max_completion_tokens` / `max_tokens`; `chunks` = N makes it N tokens."""

    status: int | None = None
    retry_after: str | None = None
    close_before_first_byte: bool = False
    stall_before_first_byte: float = 0.0
    chunk_delay: float = 0.0
    stall_mid_stream: tuple[int, float] | None = None
    fail_mid_stream: int | None = None
    error_event_mid_stream: int | None = None
    omit_usage: bool = False
    repeat_usage: bool = False
    cached_tokens: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reply: str | None = None
    chunks: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status, not {self.status}")
        if self.omit_usage and self.repeat_usage:
            raise ValueError("omit_usage and repeat_usage exclude each other")
        if self.chunks is not None and self.chunks < 0:
            raise ValueError("chunks must be >= 0")


@dataclass
class ReceivedRequest:
    """One request the fake received, and what it did with it."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    raw_body: bytes
    body: Any  # the parsed JSON body; None when absent or not JSON
    behaviour: Behaviour
    stream: bool = False
    chunks_sent: int = 0  # SSE events written, `data: [DONE]` not counted (one written as the client left may count)
    content_sent: str = ""  # the reply text the chunks written carried
    client_disconnected: bool = False  # the client went away before the answer was complete
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def wait_finished(self, timeout: float = 10.0) -> ReceivedRequest:
        """Wait until the fake is done with this request (answered, failed, or saw the client leave)."""
        if not self.finished.wait(timeout):
            raise AssertionError(f"the fake upstream was still answering {self.method} {self.path} after {timeout}s")
        return self


class _Exchange:
    """One request being answered: its record, its behaviour, and whether the client left."""

    def __init__(self, record: ReceivedRequest, receive: Receive, send: Send) -> None:
        self.record = record
        self.behaviour = record.behaviour
        self.receive = receive
        self.send = send
        self.client_left = asyncio.Event()
        self.answered = False  # the last byte is going out: a disconnect after it is the ordinary end
        self.dropped_by_us = False
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
        if not self.answered and not self.dropped_by_us:
            self.record.client_disconnected = True
        self.client_left.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep, unless the client leaves first; answers whether the client is still there."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.client_left.wait(), seconds)
        return not self.client_left.is_set()

    async def start(self, status: int, headers: dict[str, str]) -> None:
        await self.send(
            {"type": "http.response.start", "status": status, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        )

    async def body(self, data: bytes, *, more: bool) -> None:
        if not more:
            self.answered = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def reset_connection(self) -> None:
        """Drop the TCP connection abruptly (RST, no more bytes)."""
        # ASGI has no message for this: the transport is the one uvicorn's request cycle (which `send` is bound
        # to) writes to. SO_LINGER 0 makes the close a reset rather than an orderly FIN.
        self.dropped_by_us = True
        transport = self.send.__self__.transport  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # uvicorn must see the connection lost before the app returns, or it would try to answer a 500.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client_left.wait(), 5)


class _BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class FakeUpstream:
    """The fake OpenAI server (an ASGI app) and its control surface for tests."""

    def __init__(self, *, host: str = HOST, port: int = 0, record: bool = True, models: tuple[str, ...] = DEFAULT_MODELS):
        self.host, self.port = host, port
        self.record_requests = record
        self.models = list(models)
        self.api_key: str | None = None  # when set, other Authorization headers are answered 401
        self.default = Behaviour()
        self.requests: list[ReceivedRequest] = []
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------------------------

    def script(self, *behaviours: Behaviour, times: int = 1) -> None:
        """Answer the next requests with these behaviours, in order (each repeated `times`), then the default."""
        with self._lock:
            for behaviour in behaviours:
                self._script.extend([behaviour] * times)

    def push(self, *, times: int = 1, **settings: Any) -> Behaviour:
        """`fake.push(status=500, times=2)`: script `Behaviour(**settings)` for the next `times` requests."""
        behaviour = Behaviour(**settings)
        self.script(behaviour, times=times)
        return behaviour

    def set_default(self, behaviour: Behaviour | None = None, **settings: Any) -> Behaviour:
        """The behaviour of every request nothing is scripted for."""
        self.default = replace(behaviour or Behaviour(), **settings)
        return self.default

    def reset(self) -> None:
        """Forget requests, script, default behaviour, API key and model list (between tests)."""
        with self._lock:
            self._script.clear()
            self.requests = []
        self.default = Behaviour()
        self.api_key = None
        self.models = list(DEFAULT_MODELS)

    @property
    def pending_script(self) -> int:
        with self._lock:
            return len(self._script)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake upstream got {len(self.requests)} requests, not {count}, in {timeout}s")
            time.sleep(0.005)
        return self.requests

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    # --- serving -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        """Serve on `host` and a free port (or `port`) in a daemon thread; returns once it accepts connections."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        self.port = listener.getsockname()[1]
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, name=f"fake-upstream-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("the fake upstream did not stop")
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _config(self, **overrides: Any) -> uvicorn.Config:
        settings: dict[str, Any] = {
            "http": "httptools",
            "loop": "uvloop",
            "lifespan": "off",
            "access_log": False,
            "log_level": "warning",
            "timeout_keep_alive": 30,
            "timeout_graceful_shutdown": 1,
            "backlog": 2048,
        }
        return uvicorn.Config(self, **(settings | overrides))

    # --- the ASGI app --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw_body = await _read_body(receive)
        record = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            headers={name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]},
            raw_body=raw_body,
            body=_json_or_none(raw_body),
            behaviour=self._next_behaviour(),
        )
        if self.record_requests:
            self.requests.append(record)
        exchange = _Exchange(record, receive, send)
        try:
            await self._answer(exchange)
        finally:
            exchange.watcher.cancel()
            record.finished.set()

    async def _answer(self, exchange: _Exchange) -> None:
        behaviour, record = exchange.behaviour, exchange.record
        if not await exchange.pause(behaviour.stall_before_first_byte):
            return
        if behaviour.close_before_first_byte:
            await exchange.reset_connection()
            return
        if behaviour.status is not None:
            await self._error(exchange, behaviour.status)
            return
        if self.api_key is not None and record.authorization != f"Bearer {self.api_key}":
            await self._error(exchange, 401)
            return
        handler = self._route(record.method, record.path)
        if handler is None:
            await self._error(exchange, 404, message=f"Unknown request URL: {record.method} {record.path}.", code="unknown_url")
            return
        try:
            if record.method == "POST" and not isinstance(record.body, dict):
                raise _BadRequest("We could not parse the JSON body of your request.")
            await handler(exchange)
        except PromptInvalid as invalid:
            await self._error(exchange, 400, message=invalid.message, param=invalid.param)
        except _BadRequest as bad:
            await self._error(exchange, bad.status, message=bad.message, param=bad.param, code=bad.code)

    def _route(self, method: str, path: str) -> Callable[[_Exchange], Awaitable[None]] | None:
        routes: dict[tuple[str, str], Callable[[_Exchange], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/images/generations"): self._image_generations,
            ("GET", "/v1/models"): self._model_list,
        }
        if method == "GET" and path.startswith("/files/"):
            return self._file
        return routes.get((method, path))

    # --- endpoints -----------------------------------------------------------------------------------------

    async def _chat_completions(self, exchange: _Exchange) -> None:
        body, behaviour = exchange.record.body, exchange.behaviour
        model = _model_of(body)
        stream = _stream_flag(body)
        choices = _int_field(body, "n", default=1, low=1, high=128)
        prompt_tokens = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else count_chat_prompt(body, model=model)
        reply = _Reply.make(model=model, behaviour=behaviour, limit=_max_tokens(body))
        usage = _usage(behaviour, prompt_tokens=prompt_tokens, completion_tokens=choices * reply.tokens)
        base = {"id": f"chatcmpl-fake{next(self._ids)}", "created": int(time.time()), "model": model}
        if not stream:
            answer: dict[str, Any] = {
                **base,
                "object": "chat.completion",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                    for index in range(choices)
                ],
                "service_tier": "default",
            }
            if usage is not None:
                answer["usage"] = usage
            await self._json(exchange, answer)
            return
        base |= {"object": "chat.completion.chunk", "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}
        include_usage = _include_usage(body)
        extra = {"usage": None} if include_usage else {}

        def chunk(choice_deltas: list[dict[str, Any]]) -> dict[str, Any]:
            return {**base, "choices": choice_deltas, **extra}

        def events() -> Iterator[tuple[dict[str, Any], str]]:
            yield (
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                        for i in range(choices)
                    ]
                ),
                "",
            )
            for piece in reply.pieces:
                for i in range(choices):
                    yield chunk([{"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]), piece
            yield (
                chunk(
                    [{"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason} for i in range(choices)]
                ),
                "",
            )
            yield from _usage_events(base, usage, include_usage=include_usage, behaviour=behaviour)

        await self._stream(exchange, events())

    async def _completions(self, exchange: _Exchange) -> None:
        body, behaviour = exchange.record.body, exchange.behaviour
        model = _model_of(body)
        stream = _stream_flag(body)
        per_prompt = _int_field(body, "n", default=1, low=1, high=128)
        prompt = body.get("prompt")
        counted = count_completion_prompt(prompt, model=model)
        prompt_tokens = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else counted
        choices = _prompt_count(prompt) * per_prompt
        limit = _int_field(body, "max_tokens", default=COMPLETIONS_DEFAULT_MAX_TOKENS, low=0)
        reply = _Reply.make(model=model, behaviour=behaviour, limit=limit)
        usage = _usage(behaviour, prompt_tokens=prompt_tokens, completion_tokens=choices * reply.tokens, details=False)
        base = {"id": f"cmpl-fake{next(self._ids)}", "object": "text_completion", "created": int(time.time()), "model": model}
        if not stream:
            answer: dict[str, Any] = {
                **base,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {"text": reply.text, "index": index, "logprobs": None, "finish_reason": reply.finish_reason}
                    for index in range(choices)
                ],
            }
            if usage is not None:
                answer["usage"] = usage
            await self._json(exchange, answer)
            return
        include_usage = _include_usage(body)
        extra = {"usage": None} if include_usage else {}

        def events() -> Iterator[tuple[dict[str, Any], str]]:
            for piece in reply.pieces:
                for i in range(choices):
                    choice = {"text": piece, "index": i, "logprobs": None, "finish_reason": None}
                    yield {**base, "choices": [choice], **extra}, piece
            for i in range(choices):
                choice = {"text": "", "index": i, "logprobs": None, "finish_reason": reply.finish_reason}
                yield {**base, "choices": [choice], **extra}, ""
            yield from _usage_events(base, usage, include_usage=include_usage, behaviour=behaviour)

        await self._stream(exchange, events())

    async def _embeddings(self, exchange: _Exchange) -> None:
        body, behaviour = exchange.record.body, exchange.behaviour
        model = _model_of(body)
        items = body.get("input")
        counted = count_embedding_input(items, model=model)
        prompt_tokens = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else counted
        dimensions = _int_field(body, "dimensions", default=EMBEDDING_DIMENSIONS, low=1, high=4096)
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            raise _BadRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        data = []
        for index, item in enumerate(_prompt_items(items)):
            vector = embedding_vector(item, dimensions=dimensions)
            value: list[float] | str = (
                vector if encoding_format == "float" else base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            )
            data.append({"object": "embedding", "index": index, "embedding": value})
        answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not behaviour.omit_usage:
            answer["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        await self._json(exchange, answer)

    async def _image_generations(self, exchange: _Exchange) -> None:
        body, behaviour = exchange.record.body, exchange.behaviour
        model = body.get("model", "dall-e-2")
        if not isinstance(model, str):
            raise _BadRequest("'model' must be a string.", param="model")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _BadRequest("'prompt' must be a non-empty string.", param="prompt")
        images = _int_field(body, "n", default=1, low=1, high=10)
        response_format = body.get("response_format", "url")
        if response_format not in ("url", "b64_json"):
            raise _BadRequest("'response_format' must be 'url' or 'b64_json'.", param="response_format")
        token_billed = model.startswith("gpt-image")
        answer: dict[str, Any] = {"created": int(time.time())}
        if token_billed or response_format == "b64_json":
            answer["data"] = [{"b64_json": base64.b64encode(PNG_1X1).decode()} for _ in range(images)]
        else:
            answer["data"] = [
                {"url": f"{self.url}/files/image-{next(self._ids)}.png", "revised_prompt": prompt} for _ in range(images)
            ]
        if token_billed:
            answer |= {"background": "opaque", "output_format": "png", "quality": "medium", "size": body.get("size", "1024x1024")}
            if not behaviour.omit_usage:
                text_tokens = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else count_text(prompt, model=model)
                output = behaviour.completion_tokens if behaviour.completion_tokens is not None else images * IMAGE_OUTPUT_TOKENS
                answer["usage"] = {
                    "input_tokens": text_tokens,
                    "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
                    "output_tokens": output,
                    "total_tokens": text_tokens + output,
                }
        await self._json(exchange, answer)

    async def _model_list(self, exchange: _Exchange) -> None:
        created = 1_700_000_000
        data = [{"id": model, "object": "model", "created": created, "owned_by": "fake-upstream"} for model in self.models]
        await self._json(exchange, {"object": "list", "data": data})

    async def _file(self, exchange: _Exchange) -> None:
        await exchange.start(200, self._headers("image/png", len(PNG_1X1)))
        await exchange.body(PNG_1X1, more=False)

    # --- answering -----------------------------------------------------------------------------------------

    def _headers(self, content_type: str, length: int | None = None) -> dict[str, str]:
        headers = {
            "content-type": content_type,
            "x-request-id": f"req_fake{next(self._ids)}",
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
        }
        if length is not None:
            headers["content-length"] = str(length)
        return headers

    async def _json(
        self, exchange: _Exchange, answer: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        data = _dumps(answer)
        await exchange.start(status, self._headers("application/json", len(data)) | (headers or {}))
        if status == 200 and exchange.behaviour.fail_mid_stream is not None:
            await exchange.body(data[: len(data) // 2], more=True)
            await exchange.reset_connection()
            return
        await exchange.body(data, more=False)

    async def _error(
        self, exchange: _Exchange, status: int, *, message: str | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        kind, default_code, default_message = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, HTTPStatus(status).phrase + ".")
        )
        error = {"message": message or default_message, "type": kind, "param": param, "code": code or default_code}
        headers: dict[str, str] = {}
        retry_after = exchange.behaviour.retry_after or ("1" if status == 429 else None)
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if status == 429:
            headers |= {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
            }
        data = _dumps({"error": error})
        await exchange.start(status, self._headers("application/json", len(data)) | headers)
        await exchange.body(data, more=False)

    async def _stream(self, exchange: _Exchange, events: Iterator[tuple[dict[str, Any], str]]) -> None:
        behaviour, record = exchange.behaviour, exchange.record
        record.stream = True
        await exchange.start(200, self._headers("text/event-stream; charset=utf-8") | {"cache-control": "no-cache"})
        for payload, content in events:
            sent = record.chunks_sent
            if sent and not await exchange.pause(behaviour.chunk_delay):
                return
            stall = behaviour.stall_mid_stream
            if stall is not None and sent == stall[0] and not await exchange.pause(stall[1]):
                return
            if behaviour.fail_mid_stream is not None and sent == behaviour.fail_mid_stream:
                await exchange.reset_connection()
                return
            if behaviour.error_event_mid_stream is not None and sent == behaviour.error_event_mid_stream:
                error = {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
                await exchange.body(b"data: " + _dumps({"error": error}) + b"\n\n", more=False)
                return
            if exchange.client_left.is_set():
                return
            await exchange.body(b"data: " + _dumps(payload) + b"\n\n", more=True)
            record.chunks_sent += 1
            record.content_sent += content
            await asyncio.sleep(0)  # let a disconnect be seen between chunks, as a real server's writes would
        if exchange.client_left.is_set():
            return
        await exchange.body(b"data: [DONE]\n\n", more=False)


class _Reply:
    """The reply text: whole tokens of the model's encoding, one piece per token (a token that ends inside a
    UTF-8 character is sent together with the next)."""

    def __init__(self, pieces: list[str], tokens: int, finish_reason: str) -> None:
        self.pieces, self.tokens, self.finish_reason = pieces, tokens, finish_reason
        self.text = "".join(pieces)

    @classmethod
    def make(cls, *, model: str, behaviour: Behaviour, limit: int | None) -> _Reply:
        encoding = encoding_for(model)
        text = behaviour.reply if behaviour.reply is not None else LOREM
        ids = encoding.encode(text)
        if behaviour.chunks is not None:
            while ids and len(ids) < behaviour.chunks:
                ids = encoding.encode(" ".join([text] * (2 * behaviour.chunks // len(ids) + 1)))
            ids = ids[: behaviour.chunks]
        finish_reason = "stop"
        if limit is not None and len(ids) > limit:
            ids, finish_reason = ids[:limit], "length"
        return cls(_token_pieces(ids, encoding), len(ids), finish_reason)


def _token_pieces(ids: list[int], encoding: TokenEncoding) -> list[str]:
    pieces: list[str] = []
    pending: list[int] = []
    for token_id in ids:
        pending.append(token_id)
        try:
            pieces.append(encoding.decode(pending))
        except ValueError:
            continue
        pending = []
    if pending:
        pieces.append("\ufffd")
    return pieces


def embedding_vector(item: str | list[int], *, dimensions: int) -> list[float]:
    """A deterministic vector for one input; its values are exact in float32, so base64 round-trips exactly."""
    seed = hashlib.blake2b(json.dumps(item).encode(), digest_size=8).digest()
    start = int.from_bytes(seed, "big")
    return [((start + 7919 * k) % 2001 - 1000) / 1024 for k in range(dimensions)]


def _usage(behaviour: Behaviour, *, prompt_tokens: int, completion_tokens: int, details: bool = True) -> dict[str, Any] | None:
    if behaviour.omit_usage:
        return None
    if behaviour.completion_tokens is not None:
        completion_tokens = behaviour.completion_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _usage_events(
    base: dict[str, Any], usage: dict[str, Any] | None, *, include_usage: bool, behaviour: Behaviour
) -> Iterator[tuple[dict[str, Any], str]]:
    if not include_usage or usage is None:
        return
    for _ in range(2 if behaviour.repeat_usage else 1):
        yield {**base, "choices": [], "usage": usage}, ""


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", param="model")
    return model


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", param="stream")
    if body.get("stream_options") is not None and not stream:
        raise _BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options")
    return bool(stream)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _max_tokens(body: dict[str, Any]) -> int | None:
    field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _int_field(body, field_name, default=None, low=1)


def _int_field(body: dict[str, Any], name: str, *, default: int | None, low: int, high: int | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise _BadRequest(f"'{name}' must be an integer {bounds}.", param=name)
    return value


def _prompt_items(value: object) -> list[Any]:
    """The separate inputs of a prompt or embedding input (already checked by the token counter)."""
    if isinstance(value, str) or value is None:
        return [value or ""]
    assert isinstance(value, list)
    return value if isinstance(value[0], str | list) else [value]


def _prompt_count(value: object) -> int:
    return len(_prompt_items(value))


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def closed_port(host: str = HOST) -> int:
    """A port on `host` that nothing listens on (reserved, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def run_async(coroutine: Coroutine[Any, Any, T], *, timeout: float = 60) -> T:
    """asyncio.run in a thread of its own, for tests that drive an async client: the browser tests' sync
    Playwright keeps an event loop running in the main thread for the rest of the session."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI upstream (for the gateway benchmark).")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", help="answer 401 to any other bearer key")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream chunks")
    parser.add_argument("--chunks", type=int, help="reply length in tokens (one chunk each)")
    parser.add_argument("--stall-before-first-byte", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = FakeUpstream(host=args.host, port=args.port, record=False)
    fake.api_key = args.api_key
    fake.set_default(chunk_delay=args.chunk_delay, chunks=args.chunks, stall_before_first_byte=args.stall_before_first_byte)
    uvicorn.Server(fake._config(host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
