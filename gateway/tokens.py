"""Prompt tokens counted locally and offline: the gateway holds the worst case before it calls an upstream, and
charges a local count when the upstream reports none (docs/gateway.md). The vocabularies (cl100k_base, o200k_base) ship
inside the bpe-openai wheel; nothing is downloaded. Method, constants and accuracy: docs/gateway-tokens.md.

Every function here reads a request body that `json.loads` produced and trusts nothing in it: a wrong type, a
too-long array or a bad token id raises `PromptInvalid` (the gateway answers OpenAI's 400 with its `param`)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import cast

with warnings.catch_warnings():
    # bpe-openai 0.1.4 reads its bundled vocabularies with importlib.resources.open_binary, deprecated since 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from bpe_openai import _bindings as bpe_backend  # type: ignore[import-untyped]
    from bpe_openai import encoding_name_for_model

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
DEFAULT_ENCODING = O200K_BASE
_EMBEDDED_ENCODINGS = frozenset(bpe_backend.supported_encodings())

# OpenAI's tiktoken maps these model-name prefixes to cl100k_base; every newer family (gpt-4o, gpt-4.1, gpt-4.5,
# gpt-5, o1, o3, o4, gpt-oss) and anything unknown uses o200k_base.
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-", "davinci-002", "babbage-002")
_CL100K_NAMES = frozenset({"gpt-4", "gpt-3.5", "gpt-35"})

# The chat format (OpenAI cookbook, "How to count tokens with tiktoken", for gpt-3.5-turbo-0125 and later):
# every message is wrapped in <|start|>{role}<|message|>{content}<|end|>, a name costs one more token, and the
# reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# A tool call an assistant message carries is rendered like a small message of its own (estimate).
TOKENS_PER_TOOL_CALL = 3

# One image counted at its worst case in high detail. Tile-billed models scale an image to fit 2048×2048, then
# its short side to 768 px, and bill 512-px tiles: at most 2 × 4 = 8 tiles (a 768×2048 image), so
# base + 8 × per-tile. Patch-billed models bill 32-px patches, at most 1,536, times a model multiplier.
_MAX_TILES = 8
_MAX_PATCHES = 1536
IMAGE_TOKENS_BY_MODEL_PREFIX: tuple[tuple[str, int], ...] = tuple(
    sorted(
        (
            ("gpt-4o-mini", 2833 + _MAX_TILES * 5667),  # 48,169: gpt-4o-mini counts images in many more, cheaper tokens
            ("gpt-4o", 85 + _MAX_TILES * 170),  # 1,445
            ("chatgpt-4o", 85 + _MAX_TILES * 170),
            ("gpt-4.1-mini", math.ceil(_MAX_PATCHES * 1.62)),  # 2,489
            ("gpt-4.1-nano", math.ceil(_MAX_PATCHES * 2.46)),  # 3,779
            ("gpt-4.1", 85 + _MAX_TILES * 170),
            ("gpt-4.5", 85 + _MAX_TILES * 170),
            ("gpt-4-turbo", 85 + _MAX_TILES * 170),
            ("o4-mini", math.ceil(_MAX_PATCHES * 1.72)),  # 2,642
            ("o1", 75 + _MAX_TILES * 150),  # 1,275
            ("o3", 75 + _MAX_TILES * 150),
        ),
        key=lambda entry: -len(entry[0]),  # the longest prefix wins
    )
)
# Any other model: the largest documented figure but gpt-4o-mini's (gpt-4.1-nano's), an upper bound for the
# tile and patch rules of every other OpenAI model.
IMAGE_TOKENS_OTHER_MODELS = math.ceil(_MAX_PATCHES * 2.46)

# Audio: OpenAI meters user audio at 10 tokens a second (gpt-4o-audio-preview: $0.06 a minute at $100 per 1M
# tokens = 600 tokens a minute). The length is estimated from the payload's size at 16 kbit/s (2,000 bytes a
# second), a lower bitrate than any wav or ordinary mp3 has, so the estimate is high: 200 bytes a token.
AUDIO_BYTES_PER_TOKEN = 200
# Media the counter cannot size without reading it: a file part (a PDF is billed as its text plus an image of
# each page) or an assistant message's reference to an earlier audio answer. A fixed estimate.
OPAQUE_MEDIA_TOKENS = 16_384

MAX_ARRAY_ITEMS = 2048
MAX_TOKEN_IDS = 1 << 20
_MAX_TOKEN_ID = (1 << 31) - 1  # the upstream's vocabulary is unknown here: any int32 id is let through
# A prompt given as no text at all is read by the model as one <|endoftext|> token.
EMPTY_COMPLETION_PROMPT_TOKENS = 1


class PromptInvalid(ValueError):
    """A request body the token counter cannot read; `param` names the field, as OpenAI's 400 does."""

    def __init__(self, message: str, *, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class TokenEncoding:
    """One BPE vocabulary. Text is always plain text: "<|endoftext|>" in user text counts as the characters it is
    (tiktoken's encode_ordinary), never as a special token and never as an error."""

    __slots__ = ("_tokenizer", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        # The extension itself, not bpe_openai.Encoding: that wrapper copies the vocabulary into Python dicts and
        # refuses texts over 200,000 tokens or 1,000,000 characters, and its count goes through a list.
        self._tokenizer = bpe_backend.tokenizer_for_encoding(name)

    def __repr__(self) -> str:
        return f"<TokenEncoding {self.name}>"

    def count(self, text: str) -> int:
        try:
            return int(self._tokenizer.count(text))
        except UnicodeEncodeError:
            return int(self._tokenizer.count(_without_lone_surrogates(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return list(self._tokenizer.encode(text))
        except UnicodeEncodeError:
            return list(self._tokenizer.encode(_without_lone_surrogates(text)))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ids this encoding produced (an id outside the vocabulary aborts inside the extension).
        Raises ValueError when the ids end inside a UTF-8 character."""
        return str(self._tokenizer.decode(list(token_ids)))


def _without_lone_surrogates(text: str) -> str:
    # JSON may carry "\ud800" alone; tiktoken replaces such a code point with U+FFFD before encoding.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@cache
def _encoding_named(name: str) -> TokenEncoding:
    return TokenEncoding(name)


def bare_model_name(model: str) -> str:
    """`model` without its provider prefix or fine-tune decoration, in lower case: "openai/GPT-4o" → "gpt-4o",
    "ft:gpt-4o-mini:acme::x1" → "gpt-4o-mini"."""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name.rsplit("/", 1)[-1]


@lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> str:
    """The name of `model`'s vocabulary (see `encoding_for`)."""
    name = bare_model_name(model)
    try:
        known = encoding_name_for_model(name)
    except KeyError:
        known = None
    if known in _EMBEDDED_ENCODINGS:
        return str(known)
    if name in _CL100K_NAMES or name.startswith(_CL100K_PREFIXES):
        return CL100K_BASE
    return DEFAULT_ENCODING


def encoding_for(model: str) -> TokenEncoding:
    """The encoding of `model`: bpe-openai's when it knows the model, cl100k_base for the gpt-4 / gpt-3.5 /
    text-embedding families, else o200k_base. Loaded once per vocabulary."""
    if not isinstance(model, str):
        raise PromptInvalid("'model' must be a string.", param="model")
    return _encoding_named(encoding_name_for(model))


def count_text(text: str, *, model: str) -> int:
    """Tokens of `text` as plain text (special-token text counts as ordinary characters)."""
    return encoding_for(model).count(text)


def image_tokens_for(model: str) -> int:
    """Tokens one image part is counted as: its model's worst case in high detail."""
    name = bare_model_name(model)
    for prefix, tokens in IMAGE_TOKENS_BY_MODEL_PREFIX:
        if name.startswith(prefix):
            return tokens
    return IMAGE_TOKENS_OTHER_MODELS


# --- Chat completions ---------------------------------------------------------------------------------------


def count_chat_prompt(body: Mapping[str, object], *, model: str) -> int:
    """Prompt tokens of a chat completion request: its messages by OpenAI's documented formula, plus its tool
    and function definitions and its response schema counted as JSON text (an estimate)."""
    encoding = encoding_for(model)
    if not isinstance(body, Mapping):
        raise PromptInvalid("The request body must be a JSON object.", param=None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PromptInvalid("'messages' must be a non-empty array of message objects.", param="messages")
    _check_length(messages, "messages", param="messages")
    total = REPLY_PRIMING_TOKENS
    for index, message in enumerate(messages):
        total += _message_tokens(message, f"messages[{index}]", encoding, model)
    for field in ("tools", "functions"):
        definitions = body.get(field)
        if definitions is None:
            continue
        if not isinstance(definitions, list) or not all(isinstance(item, dict) for item in definitions):
            raise PromptInvalid(f"'{field}' must be an array of objects.", param=field)
        _check_length(definitions, field, param=field)
        if definitions:
            total += _json_tokens(definitions, encoding)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        total += _json_tokens(response_format["json_schema"], encoding)
    return total


def _message_tokens(message: object, where: str, encoding: TokenEncoding, model: str) -> int:
    if not isinstance(message, dict):
        raise PromptInvalid(f"{where} must be an object.", param="messages")
    if not isinstance(message.get("role"), str):
        raise PromptInvalid(f"{where}.role must be a string.", param="messages")
    tokens = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, str):
            tokens += encoding.count(value)
            if key == "name":
                tokens += TOKENS_PER_NAME
        elif key == "content":
            tokens += _content_tokens(value, f"{where}.content", encoding, model)
        elif key == "tool_calls":
            tokens += _tool_calls_tokens(value, f"{where}.tool_calls", encoding)
        elif key == "function_call":
            tokens += TOKENS_PER_TOOL_CALL + _strings_tokens(value, f"{where}.function_call", encoding)
        elif key == "name":
            raise PromptInvalid(f"{where}.name must be a string.", param="messages")
        elif key == "audio":  # a reference to an earlier audio answer, which the model hears again
            tokens += OPAQUE_MEDIA_TOKENS
        else:
            tokens += _json_tokens(value, encoding)
    return tokens


def _content_tokens(content: object, where: str, encoding: TokenEncoding, model: str) -> int:
    if not isinstance(content, list):
        raise PromptInvalid(f"{where} must be a string or an array of content parts.", param="messages")
    _check_length(content, where, param="messages")
    tokens = 0
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise PromptInvalid(f"{part_where} must be an object with a string 'type'.", param="messages")
        kind = part["type"]
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise PromptInvalid(f"{part_where}.{kind} must be a string.", param="messages")
            tokens += encoding.count(text)
        elif kind == "image_url":
            if not isinstance(part.get("image_url"), dict | str):
                raise PromptInvalid(f"{part_where}.image_url must be an object.", param="messages")
            tokens += image_tokens_for(model)
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise PromptInvalid(f"{part_where}.input_audio.data must be a base64 string.", param="messages")
            tokens += audio_tokens_for(base64_length=len(audio["data"]))
        elif kind == "file":
            if not isinstance(part.get("file"), dict):
                raise PromptInvalid(f"{part_where}.file must be an object.", param="messages")
            tokens += OPAQUE_MEDIA_TOKENS
        else:
            tokens += _json_tokens(part, encoding)
    return tokens


def audio_tokens_for(*, base64_length: int) -> int:
    """Tokens an inline audio part is counted as, from the length of its base64 data."""
    return max(1, math.ceil(base64_length * 3 / 4 / AUDIO_BYTES_PER_TOKEN))


def _tool_calls_tokens(tool_calls: object, where: str, encoding: TokenEncoding) -> int:
    if not isinstance(tool_calls, list):
        raise PromptInvalid(f"{where} must be an array.", param="messages")
    _check_length(tool_calls, where, param="messages")
    tokens = 0
    for index, call in enumerate(tool_calls):
        call_where = f"{where}[{index}]"
        if not isinstance(call, dict):
            raise PromptInvalid(f"{call_where} must be an object.", param="messages")
        tokens += TOKENS_PER_TOOL_CALL
        for inner in ("function", "custom"):
            if inner in call:
                tokens += _strings_tokens(call[inner], f"{call_where}.{inner}", encoding)
    return tokens


def _strings_tokens(value: object, where: str, encoding: TokenEncoding) -> int:
    """Tokens of the string fields of a flat object ({"name": …, "arguments": …})."""
    if not isinstance(value, dict):
        raise PromptInvalid(f"{where} must be an object.", param="messages")
    tokens = 0
    for key, item in value.items():
        if isinstance(item, str):
            tokens += encoding.count(item)
        elif item is not None:
            raise PromptInvalid(f"{where}.{key} must be a string.", param="messages")
    return tokens


def _json_tokens(value: object, encoding: TokenEncoding) -> int:
    return encoding.count(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _check_length(items: list[object], where: str, *, param: str) -> None:
    if len(items) > MAX_ARRAY_ITEMS:
        raise PromptInvalid(f"{where} has {len(items)} items; at most {MAX_ARRAY_ITEMS} are allowed.", param=param)


# --- Completions and embeddings -----------------------------------------------------------------------------


def count_completion_prompt(prompt: object, /, *, model: str) -> int:
    """Prompt tokens of a /v1/completions request. `prompt`: a string, an array of strings, an array of token ids,
    or an array of arrays of token ids (ids are counted, never decoded); absent (None) it is <|endoftext|>."""
    if prompt is None:
        return EMPTY_COMPLETION_PROMPT_TOKENS
    return _count_prompt_forms(prompt, model=model, param="prompt")


def count_embedding_input(embedding_input: object, /, *, model: str) -> int:
    """Tokens of a /v1/embeddings `input`, in the same four forms as a completion prompt."""
    return _count_prompt_forms(embedding_input, model=model, param="input")


def _count_prompt_forms(value: object, *, model: str, param: str) -> int:
    if isinstance(value, str):
        return count_text(value, model=model)
    if not isinstance(value, list) or not value:
        raise PromptInvalid(
            f"'{param}' must be a string, an array of strings, or an array (or array of arrays) of token ids.",
            param=param,
        )
    first = value[0]
    if isinstance(first, str):
        _check_length(value, f"'{param}'", param=param)
        if not all(isinstance(item, str) for item in value):
            raise PromptInvalid(f"'{param}' mixes strings with other values.", param=param)
        encoding = encoding_for(model)
        return sum(encoding.count(item) for item in value)
    if isinstance(first, list):
        _check_length(value, f"'{param}'", param=param)
        total = 0
        for index, ids in enumerate(value):
            if not isinstance(ids, list) or not ids:
                raise PromptInvalid(f"'{param}'[{index}] must be a non-empty array of token ids.", param=param)
            total += _checked_token_ids(ids, f"'{param}'[{index}]", param=param)
            if total > MAX_TOKEN_IDS:
                raise PromptInvalid(f"'{param}' has more than {MAX_TOKEN_IDS} token ids.", param=param)
        return total
    return _checked_token_ids(value, f"'{param}'", param=param)


def _checked_token_ids(ids: list[object], where: str, *, param: str) -> int:
    if len(ids) > MAX_TOKEN_IDS:
        raise PromptInvalid(f"{where} has more than {MAX_TOKEN_IDS} token ids.", param=param)
    # `type(...) is int` turns away bools and floats, which isinstance(…, int) and JSON would let through.
    if set(map(type, ids)) != {int}:
        raise PromptInvalid(f"{where} must contain only integer token ids.", param=param)
    checked = cast(list[int], ids)
    if min(checked) < 0 or max(checked) > _MAX_TOKEN_ID:
        raise PromptInvalid(f"{where} has a token id outside 0..{_MAX_TOKEN_ID}.", param=param)
    return len(ids)
