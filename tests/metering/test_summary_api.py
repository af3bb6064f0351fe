"""GET usage/summary/ — totals by day or service from the daily rollups (docs/contract.md §3)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from metering.models import UsageRecord
from tests.conftest import key_client
from tests.metering.helpers import BATCH, USAGE, ping, recorded_at
from tests.payments.helpers import assert_error

DAY_1 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DAY_2 = datetime(2026, 1, 12, 23, 59, 59, tzinfo=UTC)
SUMMARY = "/api/v1/usage/summary/"
JANUARY = "from=2026-01-01&to=2026-01-31"


@pytest.fixture
def history(funded, live_client, test_key):
    """Day 1: two pings and a gpt call; day 2: one ping (batched), and a test-mode ping."""
    with recorded_at(DAY_1):
        ping(live_client, "p1")
        ping(live_client, "p2")
        live_client.post(
            USAGE, {"service": "gpt", "idempotency_key": "g1", "input_tokens": 1000, "output_tokens": 0}, format="json"
        )
    with recorded_at(DAY_2):
        live_client.post(BATCH, {"events": [{"service": "ping", "idempotency_key": "p3"}]}, format="json")
        ping(key_client(test_key.secret), "t1")
    return funded


def rows(response) -> list[tuple]:
    assert response.status_code == 200, response.content
    return [tuple(row.values()) for row in response.json()["rows"]]


def test_summary_by_day(history, owner_client):
    response = owner_client.get(f"{SUMMARY}?group_by=day&{JANUARY}")

    assert response.json()["rows"][0] == {
        "day": "2026-01-10",
        "events": 3,
        "quantity": 1002,
        "input_tokens": 1000,
        "output_tokens": 0,
        "cost": "0.002150000000",
    }
    assert rows(response)[1] == ("2026-01-12", 1, 1, 0, 0, "0.001000000000")
    assert (response.json()["events"], response.json()["from"], response.json()["to"]) == (4, "2026-01-01", "2026-01-31")


def test_summary_by_service(history, owner_client):
    response = owner_client.get(f"{SUMMARY}?group_by=service&{JANUARY}")

    assert rows(response) == [("gpt", 1, 1000, 1000, 0, "0.000150000000"), ("ping", 3, 3, 0, 0, "0.003000000000")]


def test_summary_totals_equal_the_records(history, owner_client):
    response = owner_client.get(f"{SUMMARY}?group_by=service&{JANUARY}")

    total = sum(Decimal(row["cost"]) for row in response.json()["rows"])
    assert total == UsageRecord.objects.filter(test=False).aggregate(s=Sum("cost"))["s"]


@pytest.mark.parametrize(
    ("query", "expected_days"),
    [
        ("from=2026-01-11&to=2026-01-31", ["2026-01-12"]),
        ("from=2026-01-01&to=2026-01-10", ["2026-01-10"]),
        ("from=2026-01-10&to=2026-01-10", ["2026-01-10"]),
        ("from=2026-01-13&to=2026-01-31", []),
        ("to=2026-01-12", ["2026-01-10", "2026-01-12"]),  # `from` defaults to 30 days before `to`
        ("", []),  # the last 30 days up to today
    ],
)
def test_summary_range(history, owner_client, query, expected_days):
    assert [row[0] for row in rows(owner_client.get(f"{SUMMARY}?{query}"))] == expected_days


def test_summary_defaults_to_live_usage(history, owner_client):
    live = rows(owner_client.get(f"{SUMMARY}?group_by=service&{JANUARY}"))
    test = rows(owner_client.get(f"{SUMMARY}?group_by=service&test=true&{JANUARY}"))

    assert sum(row[1] for row in live) == 4
    assert test == [("ping", 1, 1, 0, 0, "0.001000000000")]


def test_summary_with_an_api_key(history, live_client):
    assert rows(live_client.get(f"{SUMMARY}?group_by=service&{JANUARY}"))[1][:2] == ("ping", 3)


@pytest.mark.parametrize("query", ["group_by=month", "from=2026-02-01&to=2026-01-01", "from=yesterday", "to=2026-13-01"])
def test_summary_refuses_bad_parameters(funded, owner_client, query):
    assert_error(owner_client.get(f"{SUMMARY}?{query}"), 400, "invalid_request")


def test_summary_requires_authentication(api_client):
    assert api_client.get(SUMMARY).status_code == 401
