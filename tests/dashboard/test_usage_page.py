"""Usage: filters, keyset pagination, the streamed CSV export, tenant scoping."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.dashboard.conftest import meter, new_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def records(funded, catalogue, other_organization):
    from tests.factories import wallet_fund

    live, test = new_key(funded, name="prod"), new_key(funded, mode="test", name="ci")
    wallet_fund(other_organization, "5")
    return {
        "gpt": meter(live, "gpt", "r1", input_tokens=10, output_tokens=20),
        "ping": meter(live, "ping", "r2"),
        "test": meter(test, "translate", "r3", text="hello"),
        "other": meter(new_key(other_organization), "ping", "r4"),
        "live_key": live,
        "test_key": test,
    }


def ids(response) -> list[str]:
    return [row.idempotency_key for row, _ in response.context["rows"]]


def test_usage_lists_the_organizations_records_newest_first(owner_web, records):
    response = owner_web.get("/dashboard/usage/")
    assert ids(response) == ["r3", "r2", "r1"]
    html = response.content.decode()
    assert '10 <span class="sub">in</span> · 20 <span class="sub">out</span>' in html
    assert records["live_key"].prefix in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=ping", ["r2"]),
        ("mode=test", ["r3"]),
        ("mode=live", ["r2", "r1"]),
        ("service=gpt&mode=live", ["r1"]),
    ],
)
def test_usage_filters(owner_web, records, query, expected):
    assert ids(owner_web.get(f"/dashboard/usage/?{query}")) == expected


def test_usage_filters_by_key_and_dates(owner_web, records):
    assert ids(owner_web.get(f"/dashboard/usage/?api_key={records['test_key'].pk}")) == ["r3"]
    today = timezone.now().date()
    assert ids(owner_web.get(f"/dashboard/usage/?date_from={today}&date_to={today}")) == ["r3", "r2", "r1"]  # `to` is inclusive
    assert ids(owner_web.get(f"/dashboard/usage/?date_to={today - timedelta(days=1)}")) == []


def test_another_organizations_key_is_no_filter_choice(owner_web, records, other_key):
    response = owner_web.get(f"/dashboard/usage/?api_key={other_key.api_key.pk}")
    assert response.status_code == 400 and response.context["form"].errors
    assert "r4" not in ids(response)


def test_usage_pages_by_cursor(owner_web, records, monkeypatch):
    monkeypatch.setattr("dashboard.views.pages.USAGE_PAGE_SIZE", 2)
    first = owner_web.get("/dashboard/usage/")
    assert ids(first) == ["r3", "r2"] and first.context["page"].newer is None
    older = first.context["page"].older.encode()
    second = owner_web.get(f"/dashboard/usage/?before={older}")
    assert ids(second) == ["r1"] and second.context["page"].older is None
    back = owner_web.get(f"/dashboard/usage/?after={second.context['page'].newer.encode()}")
    assert ids(back) == ["r3", "r2"]
    assert ids(owner_web.get("/dashboard/usage/?before=garbage")) == ["r3", "r2"]


def test_usage_export_streams_the_filtered_csv(owner_web, records):
    response = owner_web.get("/dashboard/usage/export.csv?mode=live")
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["idempotency_key"], r["service"], r["mode"]) for r in rows] == [("r2", "ping", "live"), ("r1", "gpt", "live")]
    assert rows[1]["cost"] == "0.000013500000" and rows[1]["input_tokens"] == "10"
    assert rows[0]["api_key"] == records["live_key"].prefix


def test_usage_export_reads_in_keyset_chunks(owner_web, records, monkeypatch, django_assert_num_queries):
    """The rows come a chunk per query, each from where the last ended: no OFFSET, no server-side cursor
    (whose WITH HOLD materializes the whole result before the first row)."""
    monkeypatch.setattr("dashboard.views.pages.EXPORT_FIRST_CHUNK", 1)
    monkeypatch.setattr("dashboard.views.pages.EXPORT_CHUNK", 1)
    response = owner_web.get("/dashboard/usage/export.csv")
    with django_assert_num_queries(4) as queries:  # one per record, and one that finds no more
        body = b"".join(response.streaming_content).decode()
    assert [line.split(",")[-1].strip('"') for line in body.splitlines()[1:]] == ["r3", "r2", "r1"]
    assert all("OFFSET" not in q["sql"] and "DECLARE" not in q["sql"] for q in queries.captured_queries)


def test_usage_export_never_includes_another_organization(other_web, records):
    body = b"".join(other_web.get("/dashboard/usage/export.csv").streaming_content).decode()
    assert "r4" in body and "r1" not in body and "r3" not in body


def test_members_see_usage(member_web, records):
    assert ids(member_web.get("/dashboard/usage/")) == ["r3", "r2", "r1"]


def test_an_invalid_date_range_shows_the_error_and_no_records(owner_web, records):
    """Bug (issue 12): the error was shown above the unfiltered table."""
    response = owner_web.get("/dashboard/usage/?date_from=2030-02-01&date_to=2030-01-01")
    html = response.content.decode()
    assert response.status_code == 400 and "The start date is after the end date." in html
    assert ids(response) == [] and 'data-testid="usage-table"' not in html
    export = owner_web.get("/dashboard/usage/export.csv?date_from=2030-02-01&date_to=2030-01-01")
    assert export.status_code == 400 and not export.streaming


def test_usage_pages_cost_the_same_at_any_depth(owner_web, records, monkeypatch, django_assert_max_num_queries):
    """A keyset page: the same statements for the first page and an older one, never a COUNT or an OFFSET."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr("dashboard.views.pages.USAGE_PAGE_SIZE", 1)
    owner_web.get("/dashboard/usage/")  # warms the per-process caches
    with django_assert_max_num_queries(10) as first:
        older = owner_web.get("/dashboard/usage/").context["page"].older.encode()
    owner_web.get(f"/dashboard/usage/?before={older}")
    with CaptureQueriesContext(connection) as deep:
        assert ids(owner_web.get(f"/dashboard/usage/?before={older}")) == ["r2"]
    assert len(deep.captured_queries) == len(first.captured_queries)
    assert not any("OFFSET" in q["sql"] or "COUNT(" in q["sql"] for q in first.captured_queries + deep.captured_queries)


def test_usage_shows_a_gateway_calls_model_and_outcome(owner_web, funded, catalogue):
    from accounts.tenancy import tenant_resolve
    from metering import services as metering_services

    tenant = tenant_resolve(user=None, api_key=new_key(funded), organization_slug=None)
    for key, outcome, estimated in (("g1", "completed", False), ("g2", "client_disconnected", True)):
        metadata = {"model": "gpt-4o-mini", "outcome": outcome, "estimated": estimated, "request_id": key, "stream": True}
        event = metering_services.UsageEvent(
            service="gpt", idempotency_key=key, data={"input_tokens": 5, "output_tokens": 7}, metadata=metadata
        )
        metering_services.usage_record(tenant=tenant, event=event)
    meter(new_key(funded, name="direct"), "ping", "plain")
    html = owner_web.get("/dashboard/usage/").content.decode()
    assert html.count("<code>gpt-4o-mini</code>") == 2
    assert ">Completed</span>" in html and ">Client left</span>" in html
    assert html.count(">estimated</span>") == 1
    assert 'data-label="Gateway call"><span class="muted">—</span>' in html  # a record not made by the gateway


def test_usage_shows_no_gateway_column_when_no_call_on_the_page_came_through_it(owner_web, records):
    html = owner_web.get("/dashboard/usage/").content.decode()
    assert "Gateway call" not in html
