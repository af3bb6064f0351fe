"""`tollgate_position_settled_total{path}`: how the hot path settled each positional event (the bench's
hit rate, docs/performance.md "Pricing models")."""

import pytest
from django.db import transaction
from django.utils import timezone

from billing_site import metrics
from metering.services.positions import PositionKey, period_of, position_advance, positions_seen
from tests.conftest import key_client
from tests.factories import wallet_fund
from tests.metering.test_positional_usage import tiered_requests

USAGE = "/api/v1/usage/"


def settled() -> dict[str, float]:
    return {path: metrics.POSITION_SETTLED.labels(path)._value.get() for path in ("first", "retry", "locked")}


def post(client, key):
    response = client.post(USAGE, {"service": "tiered-ping", "idempotency_key": key}, format="json")
    assert response.status_code == 201, response.json()


@pytest.mark.django_db
def test_a_right_guess_counts_first_even_across_a_tier_boundary(organization, live_client):
    wallet_fund(organization, "100")
    tiered_requests()  # positions 0-2 cost 1, from 3 on 0.5
    positions_seen.forget(organization.pk)
    before = settled()
    for n in range(5):
        post(live_client, f"k{n}")
    after = settled()
    assert {path: after[path] - before[path] for path in after} == {"first": 5, "retry": 0, "locked": 0}


@pytest.mark.django_db
def test_a_stale_guess_counts_a_retry(organization, live_client):
    wallet_fund(organization, "100")
    service = tiered_requests()
    positions_seen.forget(organization.pk)
    post(live_client, "a")
    # Another process takes positions 1-4: this one still guesses 1, in the range that costs 1.
    with transaction.atomic():
        position_advance(PositionKey(organization.pk, service.pk, period_of(timezone.now()), False), units=4)
    before = settled()
    post(live_client, "b")
    after = settled()
    assert {path: after[path] - before[path] for path in after} == {"first": 0, "retry": 1, "locked": 0}


@pytest.mark.django_db
def test_a_test_key_event_counts_locked(organization, test_key):
    tiered_requests()
    before = settled()
    post(key_client(test_key.secret), "t")
    after = settled()
    assert {path: after[path] - before[path] for path in after} == {"first": 0, "retry": 0, "locked": 1}
