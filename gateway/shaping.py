"""What each endpoint's request means for money: the prompt's tokens counted locally, the worst case the
hold reserves, and the body sent upstream (the client's, with the upstream's model name, a maximum when
the client set none, and a usage report asked for on streams). Pure functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway import tokens
from gateway.errors import InvalidRequest
from metering.models import CalcMethod

MAX_CHOICES = 128
MAX_IMAGES = 10
DEFAULT_IMAGE_SIZE = (1024, 1024)


class Endpoint(StrEnum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    IMAGES = "images/generations"


@dataclass(slots=True)
class CallPlan:
    endpoint: Endpoint
    body: dict[str, Any]  # what goes upstream, but for `model`, set per upstream
    stream: bool
    client_wants_usage: bool  # the client asked for the usage chunk itself
    prompt_tokens: int  # counted locally (TOKENS routes)
    worst_output_tokens: int
    maxima: dict[str, int] = field(default_factory=dict)  # the hold's quantities
    image_quantities: dict[str, int] = field(default_factory=dict)  # per image, for the capture

    @property
    def worst_tokens(self) -> int:
        return self.prompt_tokens + self.worst_output_tokens


def _positive_int(body: dict[str, Any], name: str, *, maximum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequest(f"`{name}` must be an integer between 1 and {maximum}.", param=name)
    return value


def _stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    return value


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Ask the upstream for usage on every stream; answer whether the client asked for it too."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
    if not stream:
        return False
    client_wants_usage = bool(options and options.get("include_usage") is True)
    body["stream_options"] = {**(options or {}), "include_usage": True}
    return client_wants_usage


def _token_plan(
    body: dict[str, Any], *, endpoint: Endpoint, prompt_tokens: int, max_field: str, default_max_tokens: int
) -> CallPlan:
    stream = _stream_flag(body)
    client_wants_usage = _stream_options(body, stream)
    max_output = default_max_tokens
    # Only the endpoint's own maxima bound it: /v1/completions knows `max_tokens` alone, and an upstream ignores a
    # `max_completion_tokens` there (or applies its own default, unbounded on some servers).
    maxima = ("max_completion_tokens", "max_tokens") if endpoint is Endpoint.CHAT else ("max_tokens",)
    named = [name for name in maxima if body.get(name) is not None]
    for name in named:
        max_output = _positive_int(body, name, maximum=10_000_000) or max_output
    if len(named) == 2:
        # Both sent: an upstream may obey either, so both become the smaller, which the hold covers.
        max_output = min(body["max_completion_tokens"], body["max_tokens"])
        body["max_completion_tokens"] = body["max_tokens"] = max_output
    if not named:
        body[max_field] = default_max_tokens  # so the hold is a true worst case
    choices = _positive_int(body, "n", maximum=MAX_CHOICES) or 1
    if endpoint is Endpoint.COMPLETIONS:
        choices = max(choices, _positive_int(body, "best_of", maximum=MAX_CHOICES) or 1)
    worst_output = max_output * choices
    if endpoint is Endpoint.COMPLETIONS and body.get("echo") is True:
        worst_output += prompt_tokens * choices  # the prompt comes back as output
    return CallPlan(
        endpoint=endpoint,
        body=body,
        stream=stream,
        client_wants_usage=client_wants_usage,
        prompt_tokens=prompt_tokens,
        worst_output_tokens=worst_output,
        maxima={"input_tokens": prompt_tokens, "output_tokens": worst_output},
    )


def _image_size(body: dict[str, Any]) -> tuple[int, int]:
    size = body.get("size")
    if size is None or size == "auto":
        return DEFAULT_IMAGE_SIZE
    if not isinstance(size, str):
        raise InvalidRequest("`size` must be a string like 1024x1024.", param="size")
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()) or not (1 <= int(width) <= 16384 and 1 <= int(height) <= 16384):
        raise InvalidRequest("`size` must be WIDTHxHEIGHT in pixels, each 1..16384.", param="size")
    return int(width), int(height)


def call_plan(*, endpoint: Endpoint, body: dict[str, Any], model: str, calc_method: str, default_max_tokens: int) -> CallPlan:
    """The plan of one call; InvalidRequest (400) for a body the money cannot be worked out from."""
    if endpoint is not Endpoint.IMAGES and calc_method != CalcMethod.TOKENS:
        raise InvalidRequest("This model is not priced by tokens; it serves images only.", param="model")
    try:
        if endpoint is Endpoint.CHAT:
            prompt = tokens.count_chat_prompt(body, model=model)
            return _token_plan(
                body,
                endpoint=endpoint,
                prompt_tokens=prompt,
                max_field="max_completion_tokens",
                default_max_tokens=default_max_tokens,
            )
        if endpoint is Endpoint.COMPLETIONS:
            if "prompt" not in body:
                raise InvalidRequest("`prompt` is required.", param="prompt")
            prompt = tokens.count_completion_prompt(body["prompt"], model=model)
            suffix = body.get("suffix")
            if suffix is not None:
                if not isinstance(suffix, str):
                    raise InvalidRequest("`suffix` must be a string.", param="suffix")
                prompt += tokens.count_text(suffix, model=model)  # the upstream reads it as input too
            plan = _token_plan(
                body, endpoint=endpoint, prompt_tokens=prompt, max_field="max_tokens", default_max_tokens=default_max_tokens
            )
            # Several prompts in one request each get their own completions.
            prompts = body["prompt"]
            if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int) and len(prompts) > 1:
                plan.worst_output_tokens *= len(prompts)
                plan.maxima["output_tokens"] = plan.worst_output_tokens
            return plan
        if endpoint is Endpoint.EMBEDDINGS:
            if "input" not in body:
                raise InvalidRequest("`input` is required.", param="input")
            prompt = tokens.count_embedding_input(body["input"], model=model)
            if body.get("stream"):
                raise InvalidRequest("Embeddings are not streamed.", param="stream")
            return CallPlan(
                endpoint=endpoint,
                body=body,
                stream=False,
                client_wants_usage=False,
                prompt_tokens=prompt,
                worst_output_tokens=0,
                maxima={"input_tokens": prompt, "output_tokens": 0},
            )
    except tokens.PromptInvalid as invalid:
        raise InvalidRequest(str(invalid), param=invalid.param) from None
    # Images: priced by the route's service method, per image returned.
    if body.get("stream"):
        raise InvalidRequest("Image generation is not streamed here.", param="stream")
    if not isinstance(body.get("prompt"), str):
        raise InvalidRequest("`prompt` must be a string.", param="prompt")
    images = _positive_int(body, "n", maximum=MAX_IMAGES) or 1
    width, height = _image_size(body)
    if calc_method == CalcMethod.IMAGE_RESOLUTION:
        per_image = {"width": width, "height": height}
        maxima = {**per_image, "images": images}
    elif calc_method == CalcMethod.REQUEST:
        per_image, maxima = {}, {}
    else:
        raise InvalidRequest("This model is not an image model.", param="model")
    return CallPlan(
        endpoint=endpoint,
        body=body,
        stream=False,
        client_wants_usage=False,
        prompt_tokens=0,
        worst_output_tokens=0,
        maxima=maxima,
        image_quantities=per_image,
    )
