"""What a call may cost at worst, and what goes upstream (gateway/shaping.py): pure functions, no server."""

import pytest

from gateway import tokens
from gateway.errors import InvalidRequest
from gateway.shaping import Endpoint, call_plan
from metering.models import CalcMethod

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello there"}]


def plan(endpoint=Endpoint.CHAT, calc_method=CalcMethod.TOKENS, default_max_tokens=100, **body):
    return call_plan(
        endpoint=endpoint,
        body={"model": MODEL, **body},
        model=MODEL,
        calc_method=calc_method,
        default_max_tokens=default_max_tokens,
    )


def test_a_chat_without_a_maximum_is_sent_the_routes_default_and_held_for_it():
    shaped = plan(messages=MESSAGES)
    prompt = tokens.count_chat_prompt({"messages": MESSAGES}, model=MODEL)
    assert shaped.body["max_completion_tokens"] == 100 and "max_tokens" not in shaped.body
    assert shaped.maxima == {"input_tokens": prompt, "output_tokens": 100}
    assert not shaped.stream and "stream_options" not in shaped.body


@pytest.mark.parametrize(
    ("fields", "worst"),
    [
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": 30, "max_completion_tokens": 12}, 12),
        ({"max_tokens": 5, "n": 3}, 15),
    ],
)
def test_the_worst_output_is_the_clients_maximum_times_its_choices(fields, worst):
    shaped = plan(messages=MESSAGES, **fields)
    assert shaped.worst_output_tokens == worst == shaped.maxima["output_tokens"]


def test_both_maxima_are_sent_as_the_smaller():
    shaped = plan(messages=MESSAGES, max_tokens=30, max_completion_tokens=12)
    assert shaped.body["max_tokens"] == shaped.body["max_completion_tokens"] == 12


@pytest.mark.parametrize("client_options", [None, {}, {"include_usage": False}, {"include_usage": True}])
def test_a_stream_always_asks_the_upstream_for_usage(client_options):
    body = {"messages": MESSAGES, "stream": True}
    if client_options is not None:
        body["stream_options"] = client_options
    shaped = plan(**body)
    assert shaped.stream and shaped.body["stream_options"]["include_usage"] is True
    assert shaped.client_wants_usage is (client_options == {"include_usage": True})


def test_completions_count_every_prompt_and_echo():
    single = plan(Endpoint.COMPLETIONS, prompt="Say this is a test", max_tokens=10)
    assert single.body["max_tokens"] == 10 and single.worst_output_tokens == 10
    several = plan(Endpoint.COMPLETIONS, prompt=["one", "two", "three"], max_tokens=10, n=2)
    assert several.worst_output_tokens == 3 * 2 * 10
    echoed = plan(Endpoint.COMPLETIONS, prompt="Say this is a test", max_tokens=10, echo=True)
    assert echoed.worst_output_tokens == 10 + echoed.prompt_tokens
    defaulted = plan(Endpoint.COMPLETIONS, prompt="x")
    assert defaulted.body["max_tokens"] == 100
    suffixed = plan(Endpoint.COMPLETIONS, prompt="Say this is a test", suffix=" and that was the test", max_tokens=10)
    assert suffixed.prompt_tokens == single.prompt_tokens + tokens.count_text(" and that was the test", model=MODEL)


def test_embeddings_hold_their_input_only():
    shaped = plan(Endpoint.EMBEDDINGS, input=["alpha", "beta"])
    assert shaped.maxima == {"input_tokens": shaped.prompt_tokens, "output_tokens": 0} and shaped.prompt_tokens > 0


@pytest.mark.parametrize(
    ("body", "maxima"),
    [
        ({"prompt": "a cat"}, {"width": 1024, "height": 1024, "images": 1}),
        ({"prompt": "a cat", "size": "1792x1024", "n": 3}, {"width": 1792, "height": 1024, "images": 3}),
        ({"prompt": "a cat", "size": "auto"}, {"width": 1024, "height": 1024, "images": 1}),
    ],
)
def test_images_hold_their_size_and_count(body, maxima):
    assert plan(Endpoint.IMAGES, CalcMethod.IMAGE_RESOLUTION, **body).maxima == maxima


def test_images_priced_per_request_hold_one_request():
    assert plan(Endpoint.IMAGES, CalcMethod.REQUEST, prompt="a cat", n=4).maxima == {}


@pytest.mark.parametrize(
    ("endpoint", "calc_method", "body", "param"),
    [
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": "hello"}, "messages"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "max_tokens": 10**9}, "max_tokens"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "max_completion_tokens": "5"}, "max_completion_tokens"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "n": 129}, "n"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "stream": "yes"}, "stream"),
        (Endpoint.CHAT, CalcMethod.TOKENS, {"messages": MESSAGES, "stream": True, "stream_options": []}, "stream_options"),
        (Endpoint.CHAT, CalcMethod.IMAGE_RESOLUTION, {"messages": MESSAGES}, "model"),
        (Endpoint.COMPLETIONS, CalcMethod.TOKENS, {}, "prompt"),
        (Endpoint.COMPLETIONS, CalcMethod.TOKENS, {"prompt": "x", "best_of": -1}, "best_of"),
        (Endpoint.COMPLETIONS, CalcMethod.TOKENS, {"prompt": "x", "suffix": 5}, "suffix"),
        (Endpoint.EMBEDDINGS, CalcMethod.TOKENS, {}, "input"),
        (Endpoint.EMBEDDINGS, CalcMethod.TOKENS, {"input": "x", "stream": True}, "stream"),
        (Endpoint.IMAGES, CalcMethod.IMAGE_RESOLUTION, {"prompt": 5}, "prompt"),
        (Endpoint.IMAGES, CalcMethod.IMAGE_RESOLUTION, {"prompt": "x", "size": "big"}, "size"),
        (Endpoint.IMAGES, CalcMethod.IMAGE_RESOLUTION, {"prompt": "x", "size": "0x512"}, "size"),
        (Endpoint.IMAGES, CalcMethod.IMAGE_RESOLUTION, {"prompt": "x", "n": 11}, "n"),
        (Endpoint.IMAGES, CalcMethod.TOKENS, {"prompt": "x"}, "model"),
    ],
)
def test_a_body_the_money_cannot_be_worked_out_from_is_400(endpoint, calc_method, body, param):
    with pytest.raises(InvalidRequest) as refused:
        plan(endpoint, calc_method, **body)
    assert refused.value.param == param and refused.value.status == 400
