"""Local token counting (gateway/tokens.py), offline. Known counts come from OpenAI's cookbook notebook "How to count
tokens with tiktoken" (tiktoken's token ids, and the prompt_tokens the OpenAI API reported): the corpus is
tests/gateway/fixtures/cookbook_token_counts.json, its source named in its `_source` field."""

import json
import math
from pathlib import Path

import pytest

from gateway import tokens
from gateway.tokens import (
    PromptInvalid,
    count_chat_prompt,
    count_completion_prompt,
    count_embedding_input,
    count_text,
    encoding_for,
    image_tokens_for,
)

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "cookbook_token_counts.json").read_text())
JARGON, WEATHER = CORPUS["chat"]


def user(content, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content, **fields}]}


def one_message_overhead(*, role: str = "user", model: str = "gpt-4o") -> int:
    return tokens.REPLY_PRIMING_TOKENS + tokens.TOKENS_PER_MESSAGE + count_text(role, model=model)


# --- Text ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", CORPUS["strings"], ids=lambda example: example["text"])
@pytest.mark.parametrize("encoding_name", ["cl100k_base", "o200k_base"])
def test_known_strings_encode_to_tiktokens_ids(example, encoding_name):
    model = {"cl100k_base": "gpt-4", "o200k_base": "gpt-4o"}[encoding_name]

    assert encoding_for(model).encode(example["text"]) == example[encoding_name]
    assert count_text(example["text"], model=model) == len(example[encoding_name])


def test_tiktoken_is_great_is_six_tokens_in_both_encodings():
    assert count_text("tiktoken is great!", model="gpt-3.5-turbo") == 6
    assert count_text("tiktoken is great!", model="gpt-4o-mini") == 6


@pytest.mark.parametrize(
    ("model", "encoding_name"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("azure/gpt-35-turbo", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::8x1", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("llama-3.1-70b-instruct", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for_picks_the_models_vocabulary(model, encoding_name):
    assert encoding_for(model).name == encoding_name


def test_encoding_for_loads_each_vocabulary_once():
    assert encoding_for("gpt-4o") is encoding_for("openai/gpt-4o") is encoding_for("some-unknown-model")


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
def test_special_token_text_counts_as_plain_text(model):
    text = "before <|endoftext|> after <|endofprompt|>"

    assert count_text("<|endoftext|>", model=model) == 7
    assert count_text(text, model=model) == len(encoding_for(model).encode(text)) > 7


def test_a_lone_surrogate_counts_as_a_replacement_character():
    assert count_text("a\ud800b", model="gpt-4o") == count_text("a\ufffdb", model="gpt-4o")


def test_a_text_longer_than_the_libraries_wrapper_accepts_is_counted():
    text = " ".join(["word"] * 300_000)  # 1.5M characters, 300,000 tokens

    assert count_text(text, model="gpt-4o") == 300_000


# --- Chat completions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "reported"), JARGON["api_prompt_tokens"].items())
def test_cookbook_messages_count_what_the_openai_api_reported(model, reported):
    assert count_chat_prompt({"messages": JARGON["messages"]}, model=model) == reported


@pytest.mark.parametrize(("model", "reported"), WEATHER["api_prompt_tokens"].items())
def test_tool_definitions_are_an_estimate_at_or_above_the_api_count(model, reported):
    without_tools = count_chat_prompt({"messages": WEATHER["messages"]}, model=model)
    with_tools = count_chat_prompt({"messages": WEATHER["messages"], "tools": WEATHER["tools"]}, model=model)

    definitions_json = json.dumps(WEATHER["tools"], separators=(",", ":"))
    assert with_tools == without_tools + count_text(definitions_json, model=model)
    assert reported <= with_tools <= reported * 1.2


def test_functions_and_a_response_schema_are_counted_as_json_text():
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    functions = [{"name": "f", "parameters": {"type": "object"}}]
    body = user("hi") | {"functions": functions, "response_format": {"type": "json_schema", "json_schema": schema}}

    expected = count_chat_prompt(user("hi"), model="gpt-4o") + sum(
        count_text(json.dumps(value, separators=(",", ":")), model="gpt-4o") for value in (functions, schema)
    )
    assert count_chat_prompt(body, model="gpt-4o") == expected


def test_a_name_costs_one_token_more_than_its_text():
    plain = count_chat_prompt(user("hello"), model="gpt-4o")

    named = count_chat_prompt(user("hello", name="alice"), model="gpt-4o")

    assert named == plain + count_text("alice", model="gpt-4o") + 1


def test_text_parts_count_like_string_content():
    as_parts = user([{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}])

    expected = one_message_overhead() + count_text("hello ", model="gpt-4o") + count_text("world", model="gpt-4o")
    assert count_chat_prompt(as_parts, model="gpt-4o") == expected


@pytest.mark.parametrize(
    ("model", "image_tokens"),
    [
        ("gpt-4o", 85 + 8 * 170),
        ("openai/gpt-4o-2024-08-06", 85 + 8 * 170),
        ("gpt-4.1", 85 + 8 * 170),
        ("gpt-4o-mini", 2833 + 8 * 5667),
        ("gpt-4.1-mini", math.ceil(1536 * 1.62)),
        ("gpt-4.1-nano", math.ceil(1536 * 2.46)),
        ("o4-mini", math.ceil(1536 * 1.72)),
        ("o1", 75 + 8 * 150),
        ("a-vision-model-we-do-not-know", math.ceil(1536 * 2.46)),
    ],
)
def test_an_image_part_counts_as_its_models_worst_high_detail_image(model, image_tokens):
    body = user([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}])

    assert image_tokens_for(model) == image_tokens
    assert count_chat_prompt(body, model=model) == one_message_overhead(model=model) + image_tokens


def test_an_audio_part_is_counted_from_its_size():
    data = "A" * 80_000  # 60,000 bytes: 300 tokens at 200 bytes a token
    body = user([{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}])

    assert count_chat_prompt(body, model="gpt-4o") == one_message_overhead() + 300


def test_a_file_part_counts_the_fixed_estimate():
    body = user([{"type": "file", "file": {"file_id": "file-abc"}}])

    assert count_chat_prompt(body, model="gpt-4o") == one_message_overhead() + tokens.OPAQUE_MEDIA_TOKENS


def test_assistant_tool_calls_and_tool_results_are_counted():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    body = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
    }

    def n(text: str) -> int:
        return count_text(text, model="gpt-4o")

    expected = (
        tokens.REPLY_PRIMING_TOKENS
        + 3 * tokens.TOKENS_PER_MESSAGE
        + n("user")
        + n("weather?")
        + n("assistant")
        + tokens.TOKENS_PER_TOOL_CALL
        + n("get_weather")
        + n('{"city":"Paris"}')
        + n("tool")
        + n("call_1")
        + n("sunny")
    )
    assert count_chat_prompt(body, model="gpt-4o") == expected


# --- Completions and embeddings -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [count_completion_prompt, count_embedding_input])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tiktoken is great!", 6),
        (["tiktoken is great!", "2 + 2 = 4"], 6 + 7),
        ([83, 1609, 5963, 374, 2294, 0], 6),
        ([[83, 1609], [5963, 374, 2294], [0]], 6),
        ([999_999_999], 1),  # ids are counted, never decoded: an id outside the vocabulary is the upstream's to judge
        ("", 0),
    ],
)
def test_every_prompt_form_is_counted(count, value, expected):
    assert count(value, model="gpt-3.5-turbo-instruct") == expected


def test_a_completion_without_a_prompt_is_one_endoftext_token():
    assert count_completion_prompt(None, model="gpt-3.5-turbo-instruct") == 1


# --- Hostile input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({}, "messages", "non-empty array"),
        ({"messages": []}, "messages", "non-empty array"),
        ({"messages": "hi"}, "messages", "non-empty array"),
        ({"messages": ["hi"]}, "messages", "messages[0] must be an object"),
        ({"messages": [{"content": "hi"}]}, "messages", "messages[0].role"),
        ({"messages": [{"role": 1, "content": "hi"}]}, "messages", "messages[0].role"),
        (user(42), "messages", "messages[0].content must be a string or an array"),
        (user({"text": "hi"}), "messages", "messages[0].content must be a string or an array"),
        (user(["hi"]), "messages", "messages[0].content[0] must be an object"),
        (user([{"text": "hi"}]), "messages", "string 'type'"),
        (user([{"type": "text", "text": ["nested"]}]), "messages", "content[0].text must be a string"),
        (user([{"type": "image_url", "image_url": 5}]), "messages", "image_url must be an object"),
        (user([{"type": "input_audio", "input_audio": {"data": 5}}]), "messages", "input_audio.data"),
        (user("hi", name=["alice"]), "messages", "name must be a string"),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}, "messages", "tool_calls must be an array"),
        ({"messages": [{"role": "assistant", "tool_calls": ["x"]}]}, "messages", "tool_calls[0] must be an object"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}]},
            "messages",
            "arguments must be a string",
        ),
        ({"messages": [{"role": "user", "content": "x"}] * 2049}, "messages", "at most 2048"),
        (user([{"type": "text", "text": "x"}] * 2049), "messages", "at most 2048"),
        (user("hi") | {"tools": {"type": "function"}}, "tools", "array of objects"),
        (user("hi") | {"tools": ["f"]}, "tools", "array of objects"),
        (user("hi") | {"functions": [{}] * 2049}, "functions", "at most 2048"),
    ],
)
def test_a_chat_body_the_counter_cannot_read_is_refused(body, param, says):
    with pytest.raises(PromptInvalid) as refused:
        count_chat_prompt(body, model="gpt-4o")

    assert refused.value.param == param
    assert says in refused.value.message
    assert isinstance(refused.value, ValueError)


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(PromptInvalid) as refused:
        count_chat_prompt([{"role": "user", "content": "hi"}], model="gpt-4o")  # type: ignore[arg-type]

    assert refused.value.param is None


def test_a_model_that_is_not_a_string_is_refused():
    with pytest.raises(PromptInvalid) as refused:
        count_chat_prompt(user("hi"), model=["gpt-4o"])  # type: ignore[arg-type]

    assert refused.value.param == "model"


@pytest.mark.parametrize(("count", "param"), [(count_completion_prompt, "prompt"), (count_embedding_input, "input")])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([], "must be a string, an array"),
        ({"text": "hi"}, "must be a string, an array"),
        (42, "must be a string, an array"),
        ([None], "only integer token ids"),
        (["a", 1], "mixes strings"),
        ([1, "a"], "only integer token ids"),
        ([1, 2.0], "only integer token ids"),
        ([True, 1], "only integer token ids"),
        ([-1], "outside 0.."),
        ([2**31], "outside 0.."),
        ([[1, 2], [3, "x"]], "only integer token ids"),
        ([[[1]]], "only integer token ids"),
        ([[1], []], "non-empty array of token ids"),
        ([[1], 2], "non-empty array of token ids"),
        (["x"] * 2049, "at most 2048"),
        ([[1]] * 2049, "at most 2048"),
        ([0] * (tokens.MAX_TOKEN_IDS + 1), "more than"),
        ([[0] * (tokens.MAX_TOKEN_IDS // 2 + 1)] * 2, "more than"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_a_prompt_the_counter_cannot_read_is_refused(count, param, value, says):
    with pytest.raises(PromptInvalid) as refused:
        count(value, model="text-embedding-3-small")

    assert refused.value.param == param
    assert says in refused.value.message
