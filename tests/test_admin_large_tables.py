"""The back office's changelists over the history tables that grow to millions of rows (usage, transfers,
ledger entries): no full count on a page load, and a date hierarchy that probes an index instead of
reading a year of rows. `make bench-bigdata` measures them at 10M records; these prove the behaviour."""

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing_site.admin import EstimatedCountPaginator, IndexedDatesQuerySet
from metering.models import UsageRecord
from payments.models import Transfer
from tests.factories import UserFactory
from tests.metering.helpers import ping, recorded_at

CHANGELISTS = ["/admin/metering/usagerecord/", "/admin/payments/transfer/", "/admin/payments/ledgerentry/"]
MOMENTS = [
    datetime(2025, 11, 30, 23, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1, 5, tzinfo=UTC),
    datetime(2026, 1, 31, 23, 59, tzinfo=UTC),
    datetime(2026, 3, 2, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
]


@pytest.fixture
def spread_usage(funded, live_client):
    for index, moment in enumerate(MOMENTS):
        with recorded_at(moment):
            assert ping(live_client, f"u{index}").status_code == 201


@pytest.fixture
def superuser_client(db) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def _counts(queries) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]


@pytest.mark.parametrize("url", CHANGELISTS)
def test_changelists_count_exactly_below_the_limit(spread_usage, superuser_client, url):
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get(url)
    assert response.status_code == 200
    expected = {"usagerecord": UsageRecord.objects.count(), "transfer": Transfer.objects.count()}
    if "ledgerentry" not in url:
        assert response.context["cl"].result_count == expected[url.split("/")[3]]
    # the only count reads at most limit + 1 rows: never the whole table
    assert _counts(queries.captured_queries) and all("LIMIT 10001" in sql for sql in _counts(queries.captured_queries))


@pytest.mark.parametrize("url", CHANGELISTS)
def test_changelists_estimate_above_the_limit(spread_usage, superuser_client, monkeypatch, url):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 2)
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get(url)
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 3  # the planner's estimate, never below what was counted
    assert any(q["sql"].startswith("EXPLAIN (FORMAT JSON)") for q in queries.captured_queries)
    assert all("LIMIT 3" in sql for sql in _counts(queries.captured_queries))


@pytest.mark.parametrize("kind", ["year", "month", "day"])
def test_indexed_date_hierarchy_lists_what_django_would(spread_usage, kind):
    records = UsageRecord.objects.all()
    probed = IndexedDatesQuerySet(model=UsageRecord, query=records.query).datetimes("created_at", kind)
    assert probed == list(records.datetimes("created_at", kind))
    in_january = records.filter(created_at__year=2026, created_at__month=1)
    assert IndexedDatesQuerySet(model=UsageRecord, query=in_january.query).datetimes("created_at", kind) == list(
        in_january.datetimes("created_at", kind)
    )


def test_usage_date_hierarchy_probes_instead_of_a_distinct_scan(spread_usage, superuser_client):
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get("/admin/metering/usagerecord/")
    assert response.status_code == 200
    assert "2025" in response.content.decode() and "2026" in response.content.decode()
    assert not any("DISTINCT" in q["sql"] for q in queries.captured_queries)


@pytest.mark.parametrize("url", [*CHANGELISTS, "/admin/accounts/organization/"])
def test_changelists_take_a_bounded_number_of_queries(spread_usage, superuser_client, django_assert_max_num_queries, url):
    superuser_client.get(url)  # warms the per-process caches (content types, permissions)
    with django_assert_max_num_queries(16):
        assert superuser_client.get(url).status_code == 200


def test_ledger_entries_filter_by_date_without_a_hierarchy(spread_usage, superuser_client):
    response = superuser_client.get("/admin/payments/ledgerentry/?created_at__gte=2026-01-01+00:00:00%2B00:00")
    assert response.status_code == 200
    assert all(entry.created_at >= datetime(2026, 1, 1, tzinfo=UTC) for entry in response.context["cl"].result_list)
