"""Quantity calculators and per-unit pricing (docs/contract.md §1 calculation methods, §2.1 exact money)."""

from decimal import ROUND_HALF_UP, Decimal

import pytest

from billing_site.errors import InvalidRequest
from metering.calculators import MAX_COUNT, Quantities, count_words, measure
from metering.pricing import UnitPrices, cost_at

# --- TOKENS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"input_tokens": 10, "output_tokens": 20}, Quantities(30, 10, 20)),
        ({"input_tokens": 0, "output_tokens": 0}, Quantities(0, 0, 0)),
        ({"input_tokens": MAX_COUNT, "output_tokens": 1}, Quantities(MAX_COUNT + 1, MAX_COUNT, 1)),
    ],
)
def test_tokens_counts_input_and_output_separately(data, expected):
    assert measure("TOKENS", data) == expected


@pytest.mark.parametrize(
    "data",
    [
        {"input_tokens": 10},
        {"output_tokens": 10},
        {},
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 0, "output_tokens": -5},
        {"input_tokens": "10", "output_tokens": 0},
        {"input_tokens": 10.0, "output_tokens": 0},
        {"input_tokens": 1.5, "output_tokens": 0},
        {"input_tokens": True, "output_tokens": 0},
        {"input_tokens": 0, "output_tokens": False},
        {"input_tokens": [1], "output_tokens": 0},
        {"input_tokens": None, "output_tokens": 0},
        {"input_tokens": MAX_COUNT + 1, "output_tokens": 0},
        {"input_tokens": 1, "output_tokens": 1, "text": "hi"},
        {"input_tokens": 1, "output_tokens": 1, "width": 512, "height": 512},
    ],
)
def test_tokens_refuses_bad_fields(data):
    with pytest.raises(InvalidRequest):
        measure("TOKENS", data)


# --- CHAR_COUNT -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", 5),
        ("", 0),
        ("👍", 1),
        ("👍🏽", 2),  # thumbs up + skin-tone modifier: two code points
        ("👨\u200d👩\u200d👧", 5),  # family emoji: three people joined by two ZWJs
        ("e\u0301", 2),  # e + combining acute accent
        ("é", 1),  # precomposed
        ("日本語", 3),
        ("𠀀", 1),  # an ideograph outside the BMP is one code point (two UTF-16 units)
        ("a b\n", 4),
    ],
)
def test_char_count_counts_code_points(text, expected):
    assert measure("CHAR_COUNT", {"text": text}) == Quantities(expected)


def test_char_count_accepts_a_given_count():
    assert measure("CHAR_COUNT", {"characters": 1234}) == Quantities(1234)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"text": None},
        {"text": 123},
        {"text": ["a"]},
        {"text": "x" * 1_000_001},
        {"characters": -1},
        {"characters": "12"},
        {"characters": 12.0},
        {"characters": True},
        {"text": "abc", "characters": 3},
        {"text": "abc", "words": 1},
        {"text": "abc", "input_tokens": 1},
    ],
)
def test_char_count_refuses_bad_fields(data):
    with pytest.raises(InvalidRequest):
        measure("CHAR_COUNT", data)


# --- WORD_COUNT -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("…!? -- ,", 0),
        ("hello", 1),
        ("hello world", 2),
        ("  leading,  and trailing  ", 3),
        ("hello,world!", 2),
        ("state-of-the-art", 4),
        ("line one\nline two\ttab", 5),
        ("e\u0301te", 1),  # a combining mark belongs to its word
        ("café 42", 2),
        ("日本語", 3),  # each ideograph is a word
        ("こんにちは", 5),  # hiragana
        ("カタカナ", 4),  # katakana
        ("안녕하세요", 5),  # hangul syllables
        ("𠀀𠀁", 2),  # ideographs outside the BMP
        ("日本語text", 4),  # a Latin run glued to ideographs is still one word
        ("I love 東京 and ソウル 서울!", 10),
        ("你好，世界。", 4),  # full-width punctuation separates nothing extra
    ],
)
def test_word_count_counts_words_and_cjk_characters(text, expected):
    assert count_words(text) == expected
    assert measure("WORD_COUNT", {"text": text}) == Quantities(expected)


def test_word_count_accepts_a_given_count():
    assert measure("WORD_COUNT", {"words": 99}) == Quantities(99)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"text": 5},
        {"words": -1},
        {"words": "3"},
        {"words": 3.0},
        {"words": False},
        {"text": "a b", "words": 2},
        {"words": 1, "characters": 1},
        {"text": "a", "images": 1},
    ],
)
def test_word_count_refuses_bad_fields(data):
    with pytest.raises(InvalidRequest):
        measure("WORD_COUNT", data)


# --- IMAGE_RESOLUTION ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "tiles"),
    [
        ({"width": 1, "height": 1}, 1),
        ({"width": 512, "height": 512}, 1),
        ({"width": 513, "height": 512}, 2),
        ({"width": 512, "height": 513}, 2),
        ({"width": 1024, "height": 1024}, 4),
        ({"width": 1025, "height": 1025}, 9),
        ({"width": 1792, "height": 1024}, 8),
        ({"width": 1000, "height": 700, "images": 3}, 12),
        ({"width": 16384, "height": 16384}, 1024),
        ({"width": 16384, "height": 1}, 32),
        ({"width": 16384, "height": 16384, "images": 10_000}, 10_240_000),
    ],
)
def test_image_tiles_are_images_times_ceil_of_each_side(data, tiles):
    assert measure("IMAGE_RESOLUTION", data) == Quantities(tiles)


@pytest.mark.parametrize(
    "data",
    [
        {"width": 0, "height": 512},
        {"width": 512, "height": 0},
        {"width": 16385, "height": 512},
        {"width": 512, "height": 16385},
        {"width": -512, "height": 512},
        {"width": 512},
        {"height": 512},
        {},
        {"width": "512", "height": 512},
        {"width": 512.0, "height": 512},
        {"width": True, "height": 512},
        {"width": 512, "height": 512, "images": 0},
        {"width": 512, "height": 512, "images": -1},
        {"width": 512, "height": 512, "images": 10_001},
        {"width": 512, "height": 512, "images": "2"},
        {"width": 512, "height": 512, "text": "a cat"},
    ],
)
def test_image_refuses_bad_fields(data):
    with pytest.raises(InvalidRequest):
        measure("IMAGE_RESOLUTION", data)


# --- REQUEST --------------------------------------------------------------------------------------


def test_request_is_one_unit():
    assert measure("REQUEST", {}) == Quantities(1)


@pytest.mark.parametrize("data", [{"input_tokens": 1}, {"text": "x"}, {"words": 1}, {"width": 1, "height": 1}, {"images": 2}])
def test_request_refuses_fields_of_other_methods(data):
    with pytest.raises(InvalidRequest) as raised:
        measure("REQUEST", data)
    assert set(raised.value.details) == set(data)


# --- Pricing: exact, rounded once, half-even ------------------------------------------------------


def cost(method: str, quantities: Quantities, **prices: str) -> Decimal:
    prices_in_force = UnitPrices(price_id=1, **{k: Decimal(v) for k, v in prices.items()})
    return cost_at(method, quantities, prices_in_force, start=0, free_until=0).cost


def test_one_token_at_fifteen_cents_per_million_costs_exactly_0_00000015():
    result = cost("TOKENS", Quantities(1, 1, 0), input_price="0.15", output_price="0.60")

    assert isinstance(result, Decimal)
    assert result == Decimal("0.00000015")
    assert format(result, "f") == "0.000000150000"


@pytest.mark.parametrize(
    ("method", "quantities", "prices", "expected"),
    [
        ("TOKENS", Quantities(1_500_000, 1_000_000, 500_000), {"input_price": "2.50", "output_price": "10"}, "7.5"),
        ("TOKENS", Quantities(10**12, 10**12, 0), {"input_price": "1000", "output_price": "0"}, "1000000000"),
        ("CHAR_COUNT", Quantities(1), {"unit_price": "0.02"}, "0.00002"),
        ("WORD_COUNT", Quantities(3), {"unit_price": "1"}, "0.003"),
        ("IMAGE_RESOLUTION", Quantities(9), {"unit_price": "0.00765"}, "0.06885"),
        ("REQUEST", Quantities(1), {"unit_price": "0.001"}, "0.001"),
        ("REQUEST", Quantities(1), {"unit_price": "0"}, "0"),
    ],
)
def test_cost_is_exact(method, quantities, prices, expected):
    result = cost(method, quantities, **prices)
    assert result == Decimal(expected)
    assert result.as_tuple().exponent == -12  # stored scale, no float noise


@pytest.mark.parametrize(
    ("characters", "half_even", "half_up"),
    [
        (500, "0.000000000002", "0.000000000003"),  # 2.5e-12: ties go to the even digit
        (700, "0.000000000004", "0.000000000004"),  # 3.5e-12
        (1500, "0.000000000008", "0.000000000008"),  # 7.5e-12
        (100, "0.000000000000", "0.000000000001"),  # 0.5e-12
    ],
)
def test_cost_rounds_ties_half_even(characters, half_even, half_up):
    exact = Decimal(characters) * Decimal("0.000000000005") / 1000
    assert exact.quantize(Decimal("1e-12"), rounding=ROUND_HALF_UP) == Decimal(half_up)

    assert cost("CHAR_COUNT", Quantities(characters), unit_price="0.000000000005") == Decimal(half_even)


def test_cost_is_rounded_once_not_per_component():
    # Each side costs exactly 0.5e-12; rounding each (half-even) would give 0 + 0.
    result = cost("TOKENS", Quantities(2, 1, 1), input_price="0.0000005", output_price="0.0000005")

    assert result == Decimal("0.000000000001")


def test_cost_refuses_float_prices():
    with pytest.raises(TypeError):
        prices = UnitPrices(price_id=1, input_price=0.15, output_price=0.6)
        cost_at("TOKENS", Quantities(1, 1, 0), prices, start=0, free_until=0)
