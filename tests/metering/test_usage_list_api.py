"""GET usage/ (filters, pagination) and usage/export.csv (docs/contract.md §3)."""

import csv
import io
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest

from metering.exports import USAGE_CSV_COLUMNS as EXPORT_COLUMNS
from tests.conftest import key_client
from tests.metering.helpers import USAGE, ping, recorded_at
from tests.payments.helpers import assert_error

EXPORT = "/api/v1/usage/export.csv"


@pytest.fixture
def history(funded, live_client, live_key, test_key, owner_client):
    """Five records on three days: keys p1, g1 (Jan 10), p2 by JWT (Jan 11), t1 test mode and p3 (Jan 12)."""

    def at(day: int, hour: int = 12):
        return recorded_at(datetime(2026, 1, day, hour, tzinfo=UTC))

    with at(10, 9):
        ping(live_client, "p1")
    with at(10, 10):
        live_client.post(USAGE, {"service": "gpt", "idempotency_key": "g1", "input_tokens": 5, "output_tokens": 5}, format="json")
    with at(11):
        ping(owner_client, "p2")
    with at(12, 8):
        ping(key_client(test_key.secret), "t1")
    with at(12, 9):
        ping(live_client, "p3")
    return SimpleNamespace(live_key=live_key.api_key, test_key=test_key.api_key)


def keys(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [record["idempotency_key"] for record in response.json()["results"]]


def test_usage_list_is_newest_first(history, owner_client):
    response = owner_client.get(USAGE)

    assert keys(response) == ["p3", "t1", "p2", "g1", "p1"]
    assert response.json()["count"] == 5
    assert response.json()["results"][3]["input_tokens"] == 5


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"service": "gpt"}, ["g1"]),
        ({"service": "ping"}, ["p3", "t1", "p2", "p1"]),
        ({"service": "unknown"}, []),
        ({"from": "2026-01-11"}, ["p3", "t1", "p2"]),
        ({"to": "2026-01-11"}, ["g1", "p1"]),  # `to` is exclusive
        ({"from": "2026-01-10T09:30:00Z", "to": "2026-01-12T08:30:00Z"}, ["t1", "p2", "g1"]),
        ({"from": "2026-01-10T10:00:00+00:00"}, ["p3", "t1", "p2", "g1"]),
        ({"test": "true"}, ["t1"]),
        ({"test": "false"}, ["p3", "p2", "g1", "p1"]),
        ({"test": "false", "service": "ping", "from": "2026-01-11"}, ["p3", "p2"]),
    ],
)
def test_usage_list_filters(history, owner_client, params, expected):
    assert keys(owner_client.get(f"{USAGE}?{urlencode(params)}")) == expected


def test_usage_list_filters_by_api_key(history, owner_client):
    assert keys(owner_client.get(f"{USAGE}?api_key={history.live_key.pk}")) == ["p3", "g1", "p1"]
    assert keys(owner_client.get(f"{USAGE}?api_key={history.test_key.pk}")) == ["t1"]


def test_usage_list_paginates(history, owner_client):
    first = owner_client.get(f"{USAGE}?page_size=2").json()
    second = owner_client.get(first["next"]).json()
    last = owner_client.get(f"{USAGE}?page_size=2&page=3").json()

    assert (first["count"], first["previous"]) == (5, None)
    assert [r["idempotency_key"] for r in first["results"] + second["results"] + last["results"]] == [
        "p3",
        "t1",
        "p2",
        "g1",
        "p1",
    ]
    assert last["next"] is None
    assert_error(owner_client.get(f"{USAGE}?page=9"), 404, "not_found")


# --- Keyset ("cursor") pages ---------------------------------------------------------------------------------


def walk(client, url: str, link: str = "next") -> list[list[str]]:
    """Every page from `url` on, following `link`, as lists of idempotency keys."""
    pages = []
    while url:
        body = client.get(url).json()
        assert "count" not in body
        pages.append([record["idempotency_key"] for record in body["results"]])
        url = body[link]
    return pages


def test_cursor_pages_list_every_record_once_and_walk_back(history, owner_client):
    forward = walk(owner_client, f"{USAGE}?page_size=2&cursor=")
    assert forward == [["p3", "t1"], ["p2", "g1"], ["p1"]]

    last = owner_client.get(f"{USAGE}?page_size=2&cursor=").json()
    last = owner_client.get(owner_client.get(last["next"]).json()["next"]).json()
    assert last["next"] is None
    assert walk(owner_client, last["previous"], "previous") == [["p2", "g1"], ["p3", "t1"]]


def test_cursor_pages_break_ties_on_created_at_by_id(funded, live_client, owner_client):
    """Records of one instant: the cursor's (created_at, id) still walks them exactly once, newest id first."""
    with recorded_at(datetime(2026, 1, 10, 12, tzinfo=UTC)):
        for index in range(7):
            ping(live_client, f"same-{index}")
    pages = walk(owner_client, f"{USAGE}?page_size=3&cursor=")
    assert pages == [["same-6", "same-5", "same-4"], ["same-3", "same-2", "same-1"], ["same-0"]]
    assert [key for page in pages for key in page] == keys(owner_client.get(f"{USAGE}?page_size=50"))


def test_cursor_pages_keep_their_filters(history, owner_client):
    assert walk(owner_client, f"{USAGE}?page_size=1&test=false&service=ping&cursor=") == [["p3"], ["p2"], ["p1"]]


def test_a_cursor_shows_only_the_callers_records(history, owner_client, other_client, other_organization):
    """A cursor is a place in time, not a grant: another organization following it sees only its own."""
    from tests.factories import wallet_fund

    wallet_fund(other_organization, "1")
    with recorded_at(datetime(2026, 1, 9, tzinfo=UTC)):
        ping(other_client, "theirs")
    cursor_url = owner_client.get(f"{USAGE}?page_size=1&cursor=").json()["next"]
    assert walk(other_client, cursor_url) == [["theirs"]]


@pytest.mark.parametrize("query", ["cursor=garbage", "cursor=o12", "cursor=x1.2", "cursor=&page=2"])
def test_bad_cursors_are_refused(history, owner_client, query):
    assert_error(owner_client.get(f"{USAGE}?{query}"), 400, "invalid_request")


def test_a_deep_cursor_page_costs_what_the_first_does(history, owner_client):
    """The same statements at any depth: no COUNT, no OFFSET, only the position changes."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    owner_client.get(f"{USAGE}?page_size=1&cursor=")  # warms the per-process caches
    with CaptureQueriesContext(connection) as first:
        deep_url = owner_client.get(f"{USAGE}?page_size=1&cursor=").json()["next"]
    for _ in range(3):
        deep_url = owner_client.get(deep_url).json()["next"]
    with CaptureQueriesContext(connection) as deep:
        assert keys(owner_client.get(deep_url)) == ["p1"]
    assert len(deep.captured_queries) == len(first.captured_queries)
    assert not any("OFFSET" in q["sql"] or "COUNT(" in q["sql"] for q in first.captured_queries + deep.captured_queries)


def test_usage_list_with_an_api_key(history, live_client):
    assert keys(live_client.get(USAGE)) == ["p3", "t1", "p2", "g1", "p1"]


@pytest.mark.parametrize("query", ["test=maybe", "api_key=abc", "from=yesterday", "to=2026-13-01", "from=2026-01-01T25:00:00"])
def test_usage_list_refuses_bad_filters(funded, owner_client, query):
    assert_error(owner_client.get(f"{USAGE}?{query}"), 400, "invalid_request")


def test_usage_list_requires_authentication(api_client):
    assert api_client.get(USAGE).status_code == 401


# --- CSV export -------------------------------------------------------------------------------------------


def export_rows(response) -> list[list[str]]:
    assert response.status_code == 200, getattr(response, "content", b"")
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_export_streams_the_filtered_records_as_csv(history, owner_client):
    rows = export_rows(owner_client.get(f"{EXPORT}?service=ping&test=false"))

    assert rows[0] == EXPORT_COLUMNS
    records = [dict(zip(EXPORT_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["idempotency_key"] for r in records] == ["p3", "p2", "p1"]
    assert {r["cost"] for r in records} == {"0.001000000000"}
    assert [r["balance_after"] for r in records] == ["9.996996250000", "9.997996250000", "9.999000000000"]
    assert records[0]["api_key"] == str(history.live_key.pk)
    assert records[1]["api_key"] == ""  # recorded with a JWT


def test_export_answers_a_client_that_asks_for_csv_and_its_errors_in_json(history, owner_client):
    rows = export_rows(owner_client.get(EXPORT, HTTP_ACCEPT="text/csv"))
    assert rows[0] == EXPORT_COLUMNS and len(rows) == 6
    assert_error(owner_client.get(f"{EXPORT}?from=nonsense", HTTP_ACCEPT="text/csv"), 400, "invalid_request")


def test_export_of_everything(history, owner_client):
    rows = export_rows(owner_client.get(EXPORT))

    assert [row[-1] for row in rows[1:]] == ["p3", "t1", "p2", "g1", "p1"]


def test_export_is_for_people_signed_in_with_a_jwt(history, live_client):
    response = live_client.get(EXPORT)

    assert_error(response, 403, "permission_denied")


def test_export_refuses_bad_filters(funded, owner_client):
    assert_error(owner_client.get(f"{EXPORT}?from=nonsense"), 400, "invalid_request")
