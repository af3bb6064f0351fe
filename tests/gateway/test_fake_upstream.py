"""The fake upstream speaks the wire format the official `openai` SDK reads: every endpoint and every behaviour is
driven here with the real SDK (sync `OpenAI` and async `AsyncOpenAI`, no retries) straight against the fake."""

import base64
import itertools
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.tokens import count_chat_prompt, count_completion_prompt, count_embedding_input, count_text, encoding_for
from tests.gateway.fake_upstream import (
    DEFAULT_MODELS,
    LOREM,
    PNG_1X1,
    Behaviour,
    FakeUpstream,
    closed_port,
    embedding_vector,
    run_async,
)

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
KEY = "sk-upstream-test"


@pytest.fixture
def client(fake_upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_upstream.url + "/v1", api_key=KEY, max_retries=0, timeout=10)


def async_client(fake: FakeUpstream, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0, **({"timeout": 10} | options))


def reply_tokens(limit: int | None = None) -> int:
    tokens = count_text(LOREM, model=MODEL)
    return tokens if limit is None else min(tokens, limit)


def reply_prefix(tokens: int, *, model: str = MODEL) -> str:
    """The first `tokens` tokens of the default reply."""
    encoding = encoding_for(model)
    return encoding.decode(encoding.encode(LOREM)[:tokens])


def stream_chat(client: openai.OpenAI, **options) -> list:
    return list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **options))


def content_of(chunks: list) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


# --- Chat completions ---------------------------------------------------------------------------------------


def test_chat_completion_reports_the_usage_the_gateway_would_count(client, fake_upstream):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == LOREM
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == count_chat_prompt({"messages": MESSAGES}, model=MODEL)
    assert answer.usage.completion_tokens == reply_tokens()
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.prompt_tokens_details.cached_tokens == 0
    received = fake_upstream.requests[0]
    assert (received.method, received.path, received.authorization) == ("POST", "/v1/chat/completions", f"Bearer {KEY}")
    assert received.body == {"model": MODEL, "messages": MESSAGES}


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_chat_reply_stops_at_the_requests_maximum(client, limit_field):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, **{limit_field: 5})

    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert count_text(answer.choices[0].message.content, model=MODEL) == 5


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(client, fake_upstream):
    chunks = stream_chat(client, stream_options={"include_usage": True})

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_of(chunks) == LOREM
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) == reply_tokens()
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == reply_tokens()
    assert chunks[-1].usage.prompt_tokens == count_chat_prompt({"messages": MESSAGES}, model=MODEL)
    assert [chunk.usage for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    received = fake_upstream.requests[0].wait_finished()
    assert received.stream and not received.client_disconnected
    assert received.chunks_sent == len(chunks) == reply_tokens() + 3
    assert received.content_sent == LOREM


def test_chat_stream_without_include_usage_sends_no_usage(client):
    chunks = stream_chat(client)

    assert content_of(chunks) == LOREM
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_async_client_reads_a_stream_and_a_completion(fake_upstream):
    async def call() -> tuple:
        async with async_client(fake_upstream) as sdk:
            stream = await sdk.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=4
            )
            chunks = [chunk async for chunk in stream]
            answer = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
            return chunks, answer

    chunks, answer = run_async(call())

    assert content_of(chunks) == answer.choices[0].message.content[: len(content_of(chunks))]
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == reply_tokens()


def test_omit_usage_answers_without_usage(client, fake_upstream):
    fake_upstream.set_default(omit_usage=True)

    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    chunks = stream_chat(client, stream_options={"include_usage": True})

    assert answer.usage is None
    assert content_of(chunks) == LOREM
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_repeat_usage_sends_the_usage_chunk_twice(client, fake_upstream):
    fake_upstream.push(repeat_usage=True)

    chunks = stream_chat(client, stream_options={"include_usage": True})

    assert [chunk.choices for chunk in chunks[-2:]] == [[], []]
    assert chunks[-1].usage == chunks[-2].usage
    assert chunks[-1].usage.completion_tokens == reply_tokens()


def test_usage_overrides_and_cached_tokens_are_reported(client, fake_upstream):
    fake_upstream.push(prompt_tokens=1000, completion_tokens=7, cached_tokens=600, times=2)

    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    chunks = stream_chat(client, stream_options={"include_usage": True})

    for usage in (answer.usage, chunks[-1].usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1000, 7, 1007)
        assert usage.prompt_tokens_details.cached_tokens == 600


def test_reply_and_chunks_shape_the_stream(client, fake_upstream):
    fake_upstream.script(Behaviour(reply="héllo 日本語 🙂 done"), Behaviour(chunks=50))

    custom = stream_chat(client)
    long = stream_chat(client, stream_options={"include_usage": True})

    assert content_of(custom) == "héllo 日本語 🙂 done"
    assert sum(1 for chunk in long if chunk.choices and chunk.choices[0].delta.content) == 50
    assert long[-1].usage.completion_tokens == 50 == count_text(content_of(long), model=MODEL)


def test_n_choices_are_answered_and_billed(client):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, max_tokens=3)

    assert [choice.index for choice in answer.choices] == [0, 1]
    assert answer.usage.completion_tokens == 6


# --- Errors before the first byte ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (404, openai.NotFoundError, "model_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, None),
        (503, openai.InternalServerError, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_status_raises_the_sdks_class_before_any_chunk(client, fake_upstream, status, error_class, code, stream):
    fake_upstream.push(status=status)

    with pytest.raises(error_class) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)

    assert raised.value.status_code == status
    assert raised.value.code == code
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "1"
    assert fake_upstream.requests[0].chunks_sent == 0


def test_retry_after_is_the_behaviours(client, fake_upstream):
    fake_upstream.push(status=503, retry_after="7")

    with pytest.raises(openai.InternalServerError) as raised:
        client.models.list()

    assert raised.value.response.headers["retry-after"] == "7"


def test_close_before_first_byte_is_a_connection_error(client, fake_upstream):
    fake_upstream.push(close_before_first_byte=True, times=2)

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.APIConnectionError):
        run_async(_async_chat(fake_upstream, stream=True))

    assert len(fake_upstream.requests) == 2


async def _async_chat(fake: FakeUpstream, **options):
    async with async_client(fake) as sdk:
        answer = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **options)
        if options.get("stream"):
            return [chunk async for chunk in answer]
        return answer


def test_connection_refused_on_a_closed_port():
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key=KEY, max_retries=0)

    with pytest.raises(openai.APIConnectionError) as raised:
        sdk.models.list()

    assert "refused" in repr(raised.value.__cause__).lower()


def test_stall_before_first_byte_times_the_client_out(fake_upstream):
    fake_upstream.push(stall_before_first_byte=5)
    sdk = openai.OpenAI(base_url=fake_upstream.url + "/v1", api_key=KEY, max_retries=0, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert time.monotonic() - started < 3
    received = fake_upstream.requests[0].wait_finished(timeout=3)
    assert received.client_disconnected and received.chunks_sent == 0


def test_an_unparseable_prompt_is_the_upstreams_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 42}])

    assert raised.value.param == "messages"


def test_stream_options_without_stream_is_refused_as_openai_does(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream_options={"include_usage": True})

    assert raised.value.param == "stream_options"


def test_an_unknown_path_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)


def test_the_api_key_is_enforced_when_set(client, fake_upstream):
    fake_upstream.api_key = "sk-other"

    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    fake_upstream.api_key = KEY
    assert [model.id for model in client.models.list()] == list(DEFAULT_MODELS)


# --- Failures mid-stream ------------------------------------------------------------------------------------


def test_fail_mid_stream_drops_the_connection_after_k_chunks(client, fake_upstream):
    fake_upstream.push(fail_mid_stream=4)
    received_chunks = []

    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received_chunks.append(chunk)

    received = fake_upstream.requests[0].wait_finished()
    assert received.chunks_sent == 4 and not received.client_disconnected
    assert received.content_sent == reply_prefix(3)
    assert len(received_chunks) <= 4
    assert received.content_sent.startswith(content_of(received_chunks))


def test_fail_mid_stream_on_a_json_answer_cuts_its_body(client, fake_upstream):
    fake_upstream.push(fail_mid_stream=0)

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_error_event_mid_stream_raises_an_api_error_after_k_chunks(client, fake_upstream):
    fake_upstream.push(error_event_mid_stream=3)
    received_chunks = []

    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received_chunks.append(chunk)

    assert "error while processing" in raised.value.message
    assert len(received_chunks) == 3
    assert content_of(received_chunks) == fake_upstream.requests[0].content_sent == reply_prefix(2)


def test_async_client_sees_a_mid_stream_drop(fake_upstream):
    fake_upstream.push(fail_mid_stream=2)

    with pytest.raises(openai.APIConnectionError):
        run_async(_async_chat(fake_upstream, stream=True))


# --- Slow streams and clients that leave --------------------------------------------------------------------


def test_chunk_delay_and_a_mid_stream_stall_slow_the_stream(client, fake_upstream):
    fake_upstream.push(chunk_delay=0.02, chunks=5, stall_mid_stream=(3, 0.3))
    arrivals = []

    for _chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
        arrivals.append(time.monotonic())

    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) == 7  # role, 5 tokens, finish
    assert gaps[2] >= 0.3  # between the 3rd and 4th chunk
    assert all(gap >= 0.015 for gap in gaps)


def test_a_client_that_closes_mid_stream_is_recorded(client, fake_upstream):
    fake_upstream.push(chunk_delay=0.05, chunks=100)

    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    read = [next(stream) for _ in range(3)]
    stream.close()

    received = fake_upstream.requests[0].wait_finished(timeout=5)
    assert received.client_disconnected
    assert 3 <= received.chunks_sent < 10
    assert received.content_sent.startswith(content_of(read))


def test_a_client_that_reads_to_the_end_is_not_a_disconnect(client, fake_upstream):
    fake_upstream.push(chunk_delay=0.01, chunks=5)

    chunks = stream_chat(client)

    received = fake_upstream.requests[0].wait_finished()
    assert not received.client_disconnected and received.chunks_sent == len(chunks) == 7


# --- Completions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "choices"),
    [("Once upon a time", 1), (["one", "two", "three"], 3), ([83, 1609, 5963], 1), ([[83, 1609], [5963]], 2)],
)
def test_completions_answer_each_prompt_form(client, prompt, choices):
    answer = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, max_tokens=4)

    assert answer.object == "text_completion"
    assert len(answer.choices) == choices
    assert answer.choices[0].text == reply_prefix(4, model="gpt-3.5-turbo-instruct")
    assert answer.usage.prompt_tokens == count_completion_prompt(prompt, model="gpt-3.5-turbo-instruct")
    assert answer.usage.completion_tokens == 4 * choices


def test_completions_stop_after_16_tokens_by_default(client):
    answer = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")

    assert answer.usage.completion_tokens == 16
    assert answer.choices[0].finish_reason == "length"


def test_completions_stream_with_usage(client):
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Hi", stream=True, max_tokens=6, stream_options={"include_usage": True}
        )
    )

    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == reply_prefix(6, model="gpt-3.5-turbo-instruct")
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_async_completions(fake_upstream):
    async def call():
        async with async_client(fake_upstream) as sdk:
            return await sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=2)

    assert run_async(call()).usage.completion_tokens == 2


# --- Embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_answer_base64_as_the_sdk_asks_by_default(client, fake_upstream):
    answer = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])

    assert fake_upstream.requests[0].body["encoding_format"] == "base64"
    assert [item.embedding for item in answer.data] == [embedding_vector(word, dimensions=8) for word in ("alpha", "beta")]
    assert answer.usage.prompt_tokens == count_embedding_input(["alpha", "beta"], model="text-embedding-3-small")


def test_embeddings_as_floats_or_raw_base64(client):
    floats = client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=4)
    raw = client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="base64", dimensions=4)

    assert floats.data[0].embedding == embedding_vector("alpha", dimensions=4)
    assert list(struct.unpack("<4f", base64.b64decode(raw.data[0].embedding))) == floats.data[0].embedding


def test_embeddings_of_token_ids_and_without_usage(fake_upstream):
    fake_upstream.push(omit_usage=True)

    async def call():
        async with async_client(fake_upstream) as sdk:
            return await sdk.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])

    answer = run_async(call())

    assert len(answer.data) == 2 and answer.usage is None


# --- Images and models --------------------------------------------------------------------------------------


def test_image_generation_answers_urls_or_base64(client, fake_upstream):
    by_url = client.images.generate(model="dall-e-3", prompt="a lighthouse", n=2)
    inline = client.images.generate(model="dall-e-3", prompt="a lighthouse", response_format="b64_json")
    token_billed = client.images.generate(model="gpt-image-1", prompt="a lighthouse")

    assert len(by_url.data) == 2 and by_url.usage is None
    assert by_url.data[0].url.startswith(fake_upstream.url) and by_url.data[0].revised_prompt == "a lighthouse"
    assert base64.b64decode(inline.data[0].b64_json) == PNG_1X1
    assert token_billed.usage.input_tokens == count_text("a lighthouse", model="gpt-image-1")
    assert token_billed.usage.output_tokens == 1056
    assert httpx.get(by_url.data[0].url).content == PNG_1X1


def test_model_list_sync_and_async(client, fake_upstream):
    fake_upstream.models = ["gpt-4o", "text-embedding-3-small"]

    async def call():
        async with async_client(fake_upstream) as sdk:
            return [model.id async for model in sdk.models.list()]

    assert [model.id for model in client.models.list()] == ["gpt-4o", "text-embedding-3-small"]
    assert run_async(call()) == ["gpt-4o", "text-embedding-3-small"]


# --- The script, the second upstream, the process --------------------------------------------------------------


def test_the_script_is_fifo_then_the_default(client, fake_upstream, fake_upstream_b):
    fake_upstream.script(Behaviour(status=500), Behaviour(status=429))
    fake_upstream_b.set_default(status=503)

    with pytest.raises(openai.InternalServerError):
        client.models.list()
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    client.models.list()

    assert fake_upstream.pending_script == 0 and len(fake_upstream.requests) == 3
    assert fake_upstream_b.url != fake_upstream.url and fake_upstream_b.requests == []
    sdk_b = openai.OpenAI(base_url=fake_upstream_b.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        sdk_b.models.list()


def test_runs_as_a_process_for_the_benchmark():
    port = closed_port()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.fake_upstream", "--port", str(port), "--chunks", "3"],
        cwd=root,
        env=os.environ | {"PYTHONPATH": str(root)},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the fake upstream process did not start"
                time.sleep(0.05)
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)

        chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

        assert len(chunks) == 5
    finally:
        process.terminate()
        process.wait(timeout=10)
