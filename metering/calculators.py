"""Quantity calculators: how much of a service one event used (docs/contract.md §1, calculation methods).

A calculator reads the request fields of its method, refuses bad ones with InvalidRequest, and
answers Quantities. Pricing is separate (metering.pricing). Adding a method is one class here,
registered in CALCULATORS, plus one CalcMethod value.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from billing_site.errors import InvalidRequest
from metering.models import CalcMethod

MAX_COUNT = 10**12  # far above any real event, far below numeric overflow
MAX_TEXT_CHARS = 1_000_000
MAX_IMAGE_SIDE = 16384
MAX_IMAGES = 10_000
TILE_SIDE = 512


@dataclass(frozen=True, slots=True)
class Quantities:
    quantity: int
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None  # a part of input_tokens; None when the event did not report it

    @property
    def uncached_input_tokens(self) -> int | None:
        if self.input_tokens is None:
            return None
        return self.input_tokens - (self.cached_input_tokens or 0)

    def as_dict(self) -> dict[str, int]:
        out = {"quantity": self.quantity}
        if self.input_tokens is not None and self.output_tokens is not None:  # set together, by TokensCalculator
            out.update(input_tokens=self.input_tokens, output_tokens=self.output_tokens)
        if self.cached_input_tokens is not None:
            out.update(cached_input_tokens=self.cached_input_tokens)
        return out


def _integer(data: Mapping[str, Any], field: str, *, minimum: int, maximum: int, default: int | None = None) -> int:
    value = data.get(field, default)
    if value is None:
        raise InvalidRequest(f"`{field}` is required for this service.", details={field: ["This field is required."]})
    # bool is an int in Python but never a count in JSON
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{field}` must be an integer.", details={field: ["Must be an integer."]})
    if not minimum <= value <= maximum:
        raise InvalidRequest(
            f"`{field}` must be between {minimum} and {maximum}.", details={field: [f"Must be between {minimum} and {maximum}."]}
        )
    return value


def _text(data: Mapping[str, Any]) -> str | None:
    text = data.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidRequest("`text` must be a string.", details={"text": ["Must be a string."]})
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(
            f"`text` is longer than {MAX_TEXT_CHARS} characters; send the count instead.", details={"text": ["Too long."]}
        )
    return text


class Calculator:
    method: ClassVar[CalcMethod]
    fields: ClassVar[tuple[str, ...]]  # the request fields this method reads

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        raise NotImplementedError


class TokensCalculator(Calculator):
    """Input and output tokens; optionally `cached_input_tokens`, the part of the input the upstream
    served from its prompt cache (OpenAI's `prompt_tokens_details.cached_tokens`)."""

    method = CalcMethod.TOKENS
    fields = ("input_tokens", "output_tokens", "cached_input_tokens")

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        input_tokens = _integer(data, "input_tokens", minimum=0, maximum=MAX_COUNT)
        output_tokens = _integer(data, "output_tokens", minimum=0, maximum=MAX_COUNT)
        cached_input_tokens = None
        if data.get("cached_input_tokens") is not None:
            cached_input_tokens = _integer(data, "cached_input_tokens", minimum=0, maximum=MAX_COUNT)
            if cached_input_tokens > input_tokens:
                raise InvalidRequest(
                    "`cached_input_tokens` cannot exceed `input_tokens`: cached tokens are a part of the input.",
                    details={"cached_input_tokens": [f"Must be between 0 and input_tokens ({input_tokens})."]},
                )
        return Quantities(
            quantity=input_tokens + output_tokens,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
        )


class CharCountCalculator(Calculator):
    """Unicode code points of `text` (so a combining mark is a character), or `characters`."""

    method = CalcMethod.CHAR_COUNT
    fields = ("text", "characters")

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        text = _text(data)
        if text is not None:
            if data.get("characters") is not None:
                raise InvalidRequest("Send `text` or `characters`, not both.", details={"characters": ["Conflicts with text."]})
            return Quantities(quantity=len(text))
        return Quantities(quantity=_integer(data, "characters", minimum=0, maximum=MAX_COUNT))


@cache
def _word_pattern() -> re.Pattern[str]:
    """A word is either one CJK ideograph / kana / hangul syllable, or a run of characters that are
    neither those, nor white space, nor punctuation (Unicode categories P* and Z*)."""
    cjk = (
        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # ideographs
        "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # hiragana, katakana
        "\uac00-\ud7af"  # hangul syllables
    )
    separators = "".join(
        re.escape(chr(cp)) for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PZ" or chr(cp).isspace()
    )
    return re.compile(f"[{cjk}]|[^{cjk}{separators}]+")


def count_words(text: str) -> int:
    return sum(1 for _ in _word_pattern().finditer(text))


class WordCountCalculator(Calculator):
    method = CalcMethod.WORD_COUNT
    fields = ("text", "words")

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        text = _text(data)
        if text is not None:
            if data.get("words") is not None:
                raise InvalidRequest("Send `text` or `words`, not both.", details={"words": ["Conflicts with text."]})
            return Quantities(quantity=count_words(text))
        return Quantities(quantity=_integer(data, "words", minimum=0, maximum=MAX_COUNT))


class ImageResolutionCalculator(Calculator):
    """images × ceil(width/512) × ceil(height/512) tiles."""

    method = CalcMethod.IMAGE_RESOLUTION
    fields = ("width", "height", "images")

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        width = _integer(data, "width", minimum=1, maximum=MAX_IMAGE_SIDE)
        height = _integer(data, "height", minimum=1, maximum=MAX_IMAGE_SIDE)
        images = _integer(data, "images", minimum=1, maximum=MAX_IMAGES, default=1)
        tiles = -(-width // TILE_SIDE) * -(-height // TILE_SIDE)
        return Quantities(quantity=images * tiles)


class RequestCalculator(Calculator):
    method = CalcMethod.REQUEST
    fields = ()

    def measure(self, data: Mapping[str, Any]) -> Quantities:
        return Quantities(quantity=1)


CALCULATORS: dict[str, Calculator] = {
    calculator.method: calculator
    for calculator in (
        TokensCalculator(),
        CharCountCalculator(),
        WordCountCalculator(),
        ImageResolutionCalculator(),
        RequestCalculator(),
    )
}
ALL_QUANTITY_FIELDS = frozenset(field for calculator in CALCULATORS.values() for field in calculator.fields)


def measure(method: str, data: Mapping[str, Any]) -> Quantities:
    """Quantities of one event for `method`; InvalidRequest for missing, mistyped or out-of-range fields,
    or for fields that belong to another method."""
    calculator = CALCULATORS[method]
    foreign = sorted(field for field in ALL_QUANTITY_FIELDS - set(calculator.fields) if data.get(field) is not None)
    if foreign:
        raise InvalidRequest(
            f"{', '.join(foreign)} do not apply to a {method} service.",
            details={field: ["Does not apply to this service."] for field in foreign},
        )
    return calculator.measure(data)
