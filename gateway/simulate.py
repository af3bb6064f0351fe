"""Simulated answers in OpenAI's wire format, for test-mode keys (they never reach a paid upstream,
docs/gateway.md "Test keys") and for the demo's sandbox upstream. Usage is counted locally, like the
gateway's own estimates. As an httpx transport, a simulated answer takes exactly the path a real one takes
through the gateway: streaming, usage, the capture.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway import tokens
from gateway.selectors import UpstreamConfig

REPLY = (
    "This is a simulated answer from Tollgate: no model was called. A test key is never charged for it; "
    "a route to a real upstream answers a live key with the model itself."
)
EMBEDDING_DIMENSIONS = 8
_PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def _reply_words(max_tokens: int | None, model: str) -> list[str]:
    words = REPLY.split(" ")
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    if max_tokens is None:
        return pieces
    kept: list[str] = []
    for piece in pieces:
        if tokens.count_text("".join([*kept, piece]), model=model) > max_tokens:
            break
        kept.append(piece)
    return kept


def _max_tokens(body: dict[str, Any]) -> int | None:
    values = [v for v in (body.get("max_completion_tokens"), body.get("max_tokens")) if isinstance(v, int)]
    return min(values) if values else None


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def simulated_answer(path: str, body: dict[str, Any]) -> tuple[int, str, AsyncIterator[bytes] | bytes]:
    """(status, content type, body or stream of bytes) for one request to the simulated upstream."""
    model = str(body.get("model", "simulated"))
    created = int(time.time())
    ident = uuid.uuid4().hex[:24]
    path = path.strip("/").removeprefix("v1/")
    if path == "models":
        return 200, "application/json", json.dumps({"object": "list", "data": []}).encode()
    if path == "embeddings":
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
        vector = [0.0] * EMBEDDING_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64"
        embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
        data = [{"object": "embedding", "index": i, "embedding": embedding} for i in range(len(items))]
        prompt = tokens.count_embedding_input(inputs, model=model)
        answer: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return 200, "application/json", json.dumps(answer).encode()
    if path == "images/generations":
        requested = body.get("n")
        count = requested if isinstance(requested, int) and 1 <= requested <= 10 else 1
        data = [{"b64_json": _PIXEL_PNG, "revised_prompt": str(body.get("prompt", ""))[:200]} for _ in range(count)]
        return 200, "application/json", json.dumps({"created": created, "data": data}).encode()
    chat = path == "chat/completions"
    if not chat and path != "completions":
        return (
            404,
            "application/json",
            json.dumps({"error": {"message": "Unknown path.", "type": "invalid_request_error"}}).encode(),
        )
    prompt = (
        tokens.count_chat_prompt(body, model=model)
        if chat
        else tokens.count_completion_prompt(body.get("prompt", ""), model=model)
    )
    pieces = _reply_words(_max_tokens(body), model)
    completion = tokens.count_text("".join(pieces), model=model)
    usage = _usage(prompt, completion)
    kind = "chat.completion" if chat else "text_completion"
    if not body.get("stream"):
        text = "".join(pieces)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        )
        answer = {"id": f"sim-{ident}", "object": kind, "created": created, "model": model, "choices": [choice], "usage": usage}
        return 200, "application/json", json.dumps(answer).encode()
    include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage") is True

    async def events() -> AsyncIterator[bytes]:
        base = {"id": f"sim-{ident}", "object": f"{kind}.chunk" if chat else kind, "created": created, "model": model}
        for i, piece in enumerate(pieces):
            delta: dict[str, Any] = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            choice = (
                {"index": 0, "delta": delta, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            yield b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"
        last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {"index": 0, "text": "", "finish_reason": "stop"}
        yield b"data: " + json.dumps({**base, "choices": [last]}).encode() + b"\n\n"
        if include_usage:
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return 200, "text/event-stream", events()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class SimulatedTransport(httpx.AsyncBaseTransport):
    """The simulated upstream as an httpx transport: no socket, same wire format."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        status, content_type, answer = simulated_answer(request.url.path, body)
        headers = {"content-type": content_type}
        if isinstance(answer, bytes):
            return httpx.Response(status, headers=headers, content=answer)
        return httpx.Response(status, headers=headers, stream=_Stream(answer))


SIMULATED_TRANSPORT = SimulatedTransport()

# The upstream a test key's call goes to when its route has no sandbox upstream: this module, in process.
SIMULATED_UPSTREAM = UpstreamConfig(
    name="simulated",
    base_url="http://simulated.invalid/v1",
    api_key="",
    connect_timeout=1.0,
    timeout=10.0,
    idle_timeout=10.0,
    max_concurrency=1_000_000,
    sandbox=True,
    upstream_model="simulated",
    simulated=True,
)
