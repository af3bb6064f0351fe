"""The one pricing formula (metering/pricing.py) against the exact oracle in fractions
(tests/metering/pricing_oracle.py), property-based: random tiers (1–5, random up_to, rates with up to 12
decimals, flat fees), random price models and methods, random event sequences (zero-quantity events and
events that span several tiers included) and random plan allowances (`free_until`).

- every event's cost from `cost_at` is the oracle's;
- the range of starts `cost_at` answers really costs the same, at its ends and inside;
- `cost_bound` (what a hold reserves) is at least the cost at any position;
- `chargeable_units` counts what the oracle charges;
- `price_validate` refuses bad tiers.
"""

from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metering.calculators import measure
from metering.pricing import PriceInvalid, chargeable_units, cost_at, cost_bound, price_validate, unit_prices_from_row
from tests.metering import pricing_oracle as oracle

METHODS = ["TOKENS", "CHAR_COUNT", "WORD_COUNT", "IMAGE_RESOLUTION", "REQUEST"]
MODELS = ["per_unit", "tiered", "volume", "package"]
RATE_FIELDS = {"TOKENS": ("input_price", "output_price")}

# A rate with up to 12 decimals: whole cents, micro-dollars, or all 12 places (costs that need rounding).
rates = st.builds(
    lambda digits, places: Decimal(digits).scaleb(-places),
    st.integers(0, 10**9),
    st.sampled_from([0, 2, 6, 9, 12]),
)


@st.composite
def priced_scenarios(draw, method=None, model=None):
    """(method, what staff send, the oracle's price, scale of quantities)."""
    method = method or draw(st.sampled_from(METHODS))
    model = model or draw(st.sampled_from(MODELS))
    scale = draw(st.sampled_from([5, 40, 1000, 10**6])) if method != "REQUEST" else draw(st.sampled_from([3, 8, 30]))
    fields = RATE_FIELDS.get(method, ("unit_price",))

    def rate_set():
        out = {name: draw(rates) for name in fields}
        if method == "TOKENS" and draw(st.booleans()):
            out["cached_input_price"] = draw(rates)
        return out

    sent: dict = {"model": model}
    if model in ("tiered", "volume"):
        count = draw(st.integers(1, 5))
        edges = sorted(draw(st.sets(st.integers(1, 3 * scale), min_size=count - 1, max_size=count - 1)))
        tiers = []
        for index in range(count):
            tier = {"up_to": edges[index] if index < count - 1 else None}
            tier.update({k: format(v, "f") for k, v in rate_set().items()})
            if draw(st.booleans()):
                tier["flat_fee"] = format(draw(rates), "f")
            tiers.append(tier)
        sent["tiers"] = tiers
        price = oracle.OraclePrice.of(model, tiers=tiers)
    elif model == "package":
        sent["package_size"] = draw(st.integers(1, max(1, scale)))
        sent["unit_price"] = draw(rates)
        price = oracle.OraclePrice.of(model, package_size=sent["package_size"], unit_price=sent["unit_price"])
    else:
        sent.update(rate_set())
        price = oracle.OraclePrice.of(model, **{k: v for k, v in sent.items() if k != "model"})
    return method, sent, price, scale


def unit_prices(method: str, sent: dict):
    """The code's UnitPrices, through the price rule staff's prices go through (price_validate)."""
    fields = {k: v for k, v in sent.items() if k in ("input_price", "output_price", "cached_input_price", "unit_price")}
    stored_fields, tiers, size = price_validate(
        method=method, model=sent["model"], fields=fields, tiers=sent.get("tiers"), package_size=sent.get("package_size")
    )
    row = SimpleNamespace(price_id=1, model=sent["model"], tiers=tiers, package_size=size, **stored_fields)
    return unit_prices_from_row(row, method)


@st.composite
def events(draw, method: str, scale: int):
    """One event as (what the client sends, the oracle's form); zero quantities where the method allows."""
    if method == "TOKENS":
        input_tokens = draw(st.integers(0, 2 * scale))
        data = {"input_tokens": input_tokens, "output_tokens": draw(st.integers(0, 2 * scale))}
        if draw(st.booleans()):
            data["cached_input_tokens"] = draw(st.integers(0, input_tokens))
        return data, dict(data)
    if method == "REQUEST":
        return {}, {"quantity": 1}
    if method == "IMAGE_RESOLUTION":
        images = draw(st.integers(1, min(10_000, 2 * scale)))
        return {"width": 1, "height": 1, "images": images}, {"quantity": images}
    quantity = draw(st.integers(0, 2 * scale))
    return {"characters" if method == "CHAR_COUNT" else "words": quantity}, {"quantity": quantity}


@st.composite
def sequences(draw):
    method, sent, price, scale = draw(priced_scenarios())
    evs = draw(st.lists(events(method, scale), min_size=1, max_size=12))
    start = draw(st.sampled_from([0, 0, draw(st.integers(0, 4 * scale))]))
    free_until = draw(st.sampled_from([0, draw(st.integers(0, 4 * scale))]))
    return method, sent, price, evs, start, free_until


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sequences())
def test_every_events_cost_at_its_position_is_the_oracles(scenario):
    method, sent, price, evs, start, free_until = scenario
    prices = unit_prices(method, sent)
    position = start
    for data, event in evs:
        quantities = measure(method, data)
        assert quantities.quantity == oracle.total_units(method, event)
        priced = cost_at(method, quantities, prices, start=position, free_until=free_until)
        expected = oracle.cost(method, event, price, start=position, free_until=free_until)
        assert priced.cost == expected, (sent, event, position, free_until)
        assert priced.cost.as_tuple().exponent == -12
        position += quantities.quantity


@SETTINGS
@given(sequences(), st.data())
def test_the_range_cost_at_answers_costs_the_same_at_its_ends_and_inside(scenario, data):
    method, sent, price, evs, start, free_until = scenario
    prices = unit_prices(method, sent)
    position = start
    for payload, event in evs:
        quantities = measure(method, payload)
        priced = cost_at(method, quantities, prices, start=position, free_until=free_until)
        assert 0 <= priced.low <= position, priced
        assert priced.high is None or position <= priced.high, priced
        top = priced.high if priced.high is not None else priced.low + 10 * (position + quantities.quantity + free_until + 10**6)
        points = {priced.low, top, position, *data.draw(st.lists(st.integers(priced.low, top), max_size=5))}
        for point in points:
            assert oracle.cost(method, event, price, start=point, free_until=free_until) == priced.cost, (
                sent,
                event,
                position,
                free_until,
                priced,
                point,
            )
        position += quantities.quantity


@SETTINGS
@given(priced_scenarios(), st.data())
def test_cost_bound_is_at_least_the_cost_at_any_position(scenario, data):
    method, sent, price, scale = scenario
    prices = unit_prices(method, sent)
    payload, event = data.draw(events(method, scale))
    quantities = measure(method, payload)
    bound = cost_bound(method, quantities, prices)
    units = quantities.quantity
    # Where the cost is highest: a tier edge or package edge just inside or outside the event, and anywhere.
    edges = {0, *(t[0] for t in price.tiers if t[0] is not None)}
    if price.package_size:
        edges |= {price.package_size * k for k in range(4)}
    points = {max(0, edge - offset) for edge in edges for offset in (0, 1, units, units - 1, units + 1)}
    points |= set(data.draw(st.lists(st.integers(0, 10 * scale), max_size=10)))
    for point in points:
        assert oracle.cost(method, event, price, start=point) <= bound, (sent, event, point, bound)


@SETTINGS
@given(sequences())
def test_chargeable_units_are_the_units_at_or_past_free_until(scenario):
    method, _, _, evs, start, free_until = scenario
    position = start
    for payload, event in evs:
        quantities = measure(method, payload)
        expected: dict[str, int] = {}
        at = position
        for count, name in oracle.units_of(method, event):
            if method == "TOKENS" and name == "cached_input_price" and "cached_input_tokens" not in event:
                at += count
                continue  # not reported: no cached component
            expected[name] = expected.get(name, 0) + max(0, at + count - max(at, free_until))
            at += count
        assert chargeable_units(method, quantities, start=position, free_until=free_until) == expected
        position += quantities.quantity


# --- price_validate refuses what cannot be priced ------------------------------------------------------------

GOOD = [{"up_to": 10, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}]


@pytest.mark.parametrize(
    ("method", "tiers", "where"),
    [
        ("REQUEST", [], "tiers"),
        ("REQUEST", None, "tiers"),
        ("REQUEST", "not a list", "tiers"),
        ("REQUEST", [{"up_to": 5, "unit_price": "1"}], "tiers[0]"),  # the last tier has no end
        (
            "REQUEST",
            [{"up_to": 10, "unit_price": "1"}, {"up_to": 10, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            "tiers[1]",
        ),
        (
            "REQUEST",
            [{"up_to": 10, "unit_price": "1"}, {"up_to": 4, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            "tiers[1]",
        ),
        ("REQUEST", [{"up_to": 0, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": -3, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": True, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": 2.5, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": "10", "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None}], "tiers[0]"),  # its rate is missing
        ("REQUEST", [{"up_to": None, "unit_price": "-1"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "0.0000000000001"}], "tiers[0]"),  # 13 places
        ("REQUEST", [{"up_to": None, "unit_price": 0.5}], "tiers[0]"),  # a float
        ("REQUEST", [{"up_to": None, "unit_price": "NaN"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "Infinity"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "1e20"}], "tiers[0]"),  # beyond numeric(28,12)
        ("REQUEST", [{"up_to": None, "unit_price": "abc"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "1", "flat_fee": "-0.01"}], "tiers[0]"),
        ("REQUEST", [{"up_to": None, "unit_price": "1", "input_price": "1"}], "tiers[0]"),  # another method's field
        ("REQUEST", [{"up_to": None, "unit_price": "1", "colour": "red"}], "tiers[0]"),
        ("REQUEST", ["tier"], "tiers[0]"),
        ("REQUEST", [*[{"up_to": n, "unit_price": "1"} for n in range(1, 21)], {"up_to": None, "unit_price": "1"}], "tiers"),
        ("TOKENS", [{"up_to": None, "input_price": "1"}], "tiers[0]"),  # output_price missing
        ("TOKENS", [{"up_to": None, "input_price": "1", "output_price": "1", "unit_price": "1"}], "tiers[0]"),
    ],
)
@pytest.mark.parametrize("model", ["tiered", "volume"])
def test_price_validate_refuses_bad_tiers(method, tiers, where, model):
    with pytest.raises(PriceInvalid) as refused:
        price_validate(method=method, model=model, fields={}, tiers=tiers)
    assert where in refused.value.errors, refused.value.errors


@pytest.mark.parametrize(
    ("model", "fields", "tiers", "package_size", "where"),
    [
        ("tiered", {"unit_price": "1"}, GOOD, None, "unit_price"),  # rates live in the tiers
        ("volume", {}, GOOD, 10, "package_size"),
        ("per_unit", {"unit_price": "1"}, GOOD, None, "tiers"),
        ("package", {"unit_price": "1"}, GOOD, 10, "tiers"),
        ("package", {"unit_price": "1"}, None, 0, "package_size"),
        ("package", {"unit_price": "1"}, None, None, "package_size"),
        ("package", {"unit_price": "1"}, None, True, "package_size"),
        ("package", {"unit_price": "1"}, None, 10**12 + 1, "package_size"),
        ("package", {}, None, 10, "unit_price"),
        ("package", {"unit_price": "-1"}, None, 10, "unit_price"),
        ("per_unit", {}, None, 10, "package_size"),
        ("sliding", {"unit_price": "1"}, None, None, "model"),
    ],
)
def test_price_validate_refuses_fields_of_another_model(model, fields, tiers, package_size, where):
    with pytest.raises(PriceInvalid) as refused:
        price_validate(method="REQUEST", model=model, fields=fields, tiers=tiers, package_size=package_size)
    assert where in refused.value.errors, refused.value.errors


@settings(max_examples=300, deadline=None)
@given(priced_scenarios(model="tiered"), st.data())
def test_price_validate_refuses_any_up_to_out_of_order(scenario, data):
    method, sent, _, _ = scenario
    tiers = sent["tiers"]
    assume(len(tiers) >= 2)
    unit_prices(method, sent)  # the generated tiers are good
    broken = [dict(tier) for tier in tiers]
    index = data.draw(st.integers(0, len(tiers) - 2))
    if index == 0:
        broken[0]["up_to"] = data.draw(st.integers(-5, 0))
    else:
        broken[index]["up_to"] = data.draw(st.integers(-5, broken[index - 1]["up_to"]))
    with pytest.raises(PriceInvalid) as refused:
        price_validate(method=method, model="tiered", fields={}, tiers=broken)
    assert f"tiers[{index}]" in refused.value.errors
