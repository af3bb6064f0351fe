"""The gateway prices through the same positional code as usage/ (docs/pricing.md): a tiered price in force
for a route's service charges each call at the organization's position this month, split input first."""

from __future__ import annotations

from fractions import Fraction

import pytest

from metering.models import Hold, HoldStatus, UsageRecord
from metering.services import catalog
from tests.gateway.test_outcomes import MESSAGES, REPORTED_COMPLETION, REPORTED_PROMPT, the_hold
from tests.gateway.world import MODEL, _round, wait_until, world_build
from tests.payments.helpers import assert_money_invariants

pytestmark = pytest.mark.django_db(transaction=True)

TIER_EDGE = 50  # tokens: the first call's output crosses it
TIERS = [
    {"up_to": TIER_EDGE, "input_price": "2.50", "output_price": "10.00"},
    {"up_to": None, "input_price": "1.00", "output_price": "4.00"},
]


def tiered_cost(start: int, input_tokens: int, output_tokens: int) -> Fraction:
    """The oracle: each token at the rate of the tier its position falls in, input tokens first."""
    total = Fraction(0)
    for offset in range(input_tokens + output_tokens):
        tier = TIERS[0] if start + offset < TIER_EDGE else TIERS[1]
        total += Fraction(tier["input_price" if offset < input_tokens else "output_price"])
    return total / 1_000_000


def test_calls_through_a_tiered_route_are_charged_at_their_positions(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    catalog.price_create(
        service=world.service, organization_id=None, effective_from=None, created_by_id=None, model="tiered", tiers=TIERS
    )
    client = world.client(gateway)
    for call in range(2):
        fake_upstream.push(prompt_tokens=REPORTED_PROMPT, completion_tokens=REPORTED_COMPLETION)
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        wait_until(
            lambda n=call + 1: Hold.objects.filter(organization=world.organization, status=HoldStatus.CAPTURED).count() == n,
            what="the call's hold to be captured",
        )
        if call == 0:
            # the hold reserved the dearest tier's rates for the worst case
            assert the_hold(world).amount >= _round(tiered_cost(0, REPORTED_PROMPT, REPORTED_COMPLETION))
    records = list(UsageRecord.objects.filter(organization=world.organization).order_by("position"))
    per_call = REPORTED_PROMPT + REPORTED_COMPLETION
    assert [record.position for record in records] == [0, per_call]
    for record in records:
        assert record.cost == _round(tiered_cost(record.position, REPORTED_PROMPT, REPORTED_COMPLETION))
        assert record.pricing["model"] == "tiered"
    assert records[0].cost != records[1].cost  # the first call paid tier 1 for part of its output
    assert_money_invariants()
