"""The usage page's totals, groups and chart: exact against a Fraction oracle over records metered at
chosen instants, whole UTC days from the rollups and only a range's edges from the records, by key
within a cap, presets in the person's own zone, tenant isolation and a fixed number of queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from accounts import services as account_services
from dashboard import selectors
from dashboard.forms import period_days
from tests.dashboard.conftest import meter, new_key

pytestmark = pytest.mark.django_db

# Exact prices of the catalogue (tests/conftest.py), as the oracle reads them.
PING = Fraction("0.001")
GPT_IN, GPT_OUT = Fraction("0.15") / 10**6, Fraction("0.60") / 10**6
TRANSLATE_PER_CHAR = Fraction("0.02") / 1000
BASE = datetime(2026, 3, 10, tzinfo=UTC)


def meter_at(monkeypatch, at: datetime, key, service: str, idempotency_key: str, **quantities):
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: at)
        return meter(key, service, idempotency_key, **quantities)


@pytest.fixture
def events(funded, catalogue, other_organization, monkeypatch):
    """Events on both sides of several UTC midnights, live and test, two keys; and the same kind of
    events in another organization. Answers the oracle: (at, service, key id, test, cost, quantities)."""
    from tests.factories import wallet_fund

    prod, batch, ci = new_key(funded, name="prod"), new_key(funded, name="batch"), new_key(funded, mode="test", name="ci")
    wallet_fund(other_organization, "50")
    stranger = new_key(other_organization, name="stranger")
    plan = [
        (timedelta(hours=-1, minutes=-30), prod, "ping", {}),
        (timedelta(minutes=20), prod, "gpt", {"input_tokens": 1200, "output_tokens": 333}),
        (timedelta(hours=3), batch, "translate", {"text": "bonjour le monde"}),
        (timedelta(hours=11), ci, "gpt", {"input_tokens": 7, "output_tokens": 9}),
        (timedelta(hours=23, minutes=50), batch, "ping", {}),
        (timedelta(days=1, minutes=5), prod, "ping", {}),
        (timedelta(days=1, hours=19), ci, "ping", {}),
        (timedelta(days=2, hours=2), batch, "gpt", {"input_tokens": 10**6, "output_tokens": 1}),
    ]
    oracle = []
    for n, (offset, key, service, quantities) in enumerate(plan):
        at = BASE + offset
        meter_at(monkeypatch, at, key, service, f"e{n}", **quantities)
        meter_at(monkeypatch, at, stranger, service, f"x{n}", **quantities)  # never ours
        if service == "ping":
            cost, units = PING, {"requests": 1}
        elif service == "gpt":
            cost = quantities["input_tokens"] * GPT_IN + quantities["output_tokens"] * GPT_OUT
            units = {"tokens in": quantities["input_tokens"], "tokens out": quantities["output_tokens"]}
        else:
            cost, units = len(quantities["text"]) * TRANSLATE_PER_CHAR, {"characters": len(quantities["text"])}
        oracle.append({"at": at, "service": service, "key": key.pk, "test": key.mode == "test", "cost": cost, "units": units})
    return {"oracle": oracle, "keys": {"prod": prod, "batch": batch, "ci": ci}}


def expected(oracle, start, end, **match):
    rows = [e for e in oracle if start <= e["at"] < end and all(e[k] == v for k, v in match.items())]
    return {
        "events": len(rows),
        "live": sum((e["cost"] for e in rows if not e["test"]), Fraction(0)),
        "test": sum((e["cost"] for e in rows if e["test"]), Fraction(0)),
    }


def measured(cells):
    return {
        "events": sum(c.events for c in cells),
        "live": sum((Fraction(c.cost) for c in cells if not c.test), Fraction(0)),
        "test": sum((Fraction(c.cost) for c in cells if c.test), Fraction(0)),
    }


def local_days(zone: str, first: int, last: int) -> tuple[datetime, datetime]:
    tz = ZoneInfo(zone)
    day = BASE.date()
    return (
        datetime.combine(day + timedelta(days=first), datetime.min.time(), tzinfo=tz),
        datetime.combine(day + timedelta(days=last + 1), datetime.min.time(), tzinfo=tz),
    )


WINDOWS = [
    ("UTC", -1, 3),  # whole UTC days: the rollups alone
    ("UTC", 0, 0),
    ("Europe/Paris", 0, 0),  # +1: an hour of the previous UTC day, 23 hours of this one
    ("Europe/Paris", 0, 1),
    ("Asia/Kolkata", 0, 2),  # +5:30
    ("America/New_York", -1, 1),  # -4/-5: edges after the UTC midnights
    ("Pacific/Kiritimati", 1, 1),  # +14
]


@pytest.mark.parametrize(("zone", "first", "last"), WINDOWS)
def test_totals_are_exact_for_any_zones_days(events, funded, zone, first, last):
    start, end = local_days(zone, first, last)
    cells = selectors.usage_cells(organization_id=funded.pk, start=start, end=end)
    assert measured(cells.cells) == expected(events["oracle"], start, end)
    assert not cells.too_many


@pytest.mark.parametrize(("zone", "first", "last"), WINDOWS)
def test_totals_by_key_and_filters_are_exact(events, funded, zone, first, last):
    start, end = local_days(zone, first, last)
    by_key = selectors.usage_cells(organization_id=funded.pk, start=start, end=end, by_key=True).cells
    for key in events["keys"].values():
        assert measured([c for c in by_key if c.api_key_id == key.pk]) == expected(events["oracle"], start, end, key=key.pk)
        one = selectors.usage_cells(organization_id=funded.pk, start=start, end=end, api_key_id=key.pk).cells
        assert measured(one) == expected(events["oracle"], start, end, key=key.pk)
    for service in ("ping", "gpt", "translate"):
        cells = selectors.usage_cells(organization_id=funded.pk, start=start, end=end, service=service).cells
        assert measured(cells) == expected(events["oracle"], start, end, service=service)
    live = selectors.usage_cells(organization_id=funded.pk, start=start, end=end, test=False).cells
    assert measured(live) == {**expected(events["oracle"], start, end, test=False), "test": 0}


def test_whole_utc_days_read_the_rollups_and_only_the_edges_read_records(events, funded, django_assert_num_queries):
    start, end = local_days("UTC", 0, 2)
    with django_assert_num_queries(1):  # the rollups only
        whole = selectors.usage_cells(organization_id=funded.pk, start=start, end=end)
    assert not whole.records_read
    start, end = local_days("Europe/Paris", 0, 2)
    with django_assert_num_queries(2):  # the rollups, then one query over the two edges
        edged = selectors.usage_cells(organization_id=funded.pk, start=start, end=end)
    assert edged.records_read
    assert selectors.whole_utc_days(start, end) == (BASE.date(), BASE.date() + timedelta(days=1))


def test_usage_by_key_beyond_the_cap_gives_no_figures_rather_than_wrong_ones(events, funded, monkeypatch):
    monkeypatch.setattr(selectors, "USAGE_SCAN_MAX", 3)
    start, end = local_days("UTC", -1, 3)
    capped = selectors.usage_cells(organization_id=funded.pk, start=start, end=end, by_key=True)
    assert capped.too_many and capped.cells == []
    small = selectors.usage_cells(organization_id=funded.pk, start=start, end=BASE + timedelta(hours=4), by_key=True)
    assert not small.too_many and sum(c.events for c in small.cells) == 3


def test_another_organizations_usage_never_counts(events, funded, other_organization):
    start, end = local_days("UTC", -1, 3)
    ours = selectors.usage_cells(organization_id=funded.pk, start=start, end=end)
    theirs = selectors.usage_cells(organization_id=other_organization.pk, start=start, end=end, by_key=True)
    assert measured(ours.cells)["events"] == measured(theirs.cells)["events"] == len(events["oracle"])
    our_keys = {key.pk for key in events["keys"].values()}
    assert not our_keys & {c.api_key_id for c in theirs.cells}


def test_presets_are_the_persons_local_days():
    today = BASE.date()  # a Tuesday, 10 March
    assert period_days("today", today=today) == (today, today)
    assert period_days("7d", today=today) == (today - timedelta(days=6), today)
    assert period_days("30d", today=today) == (today - timedelta(days=29), today)
    assert period_days("month", today=today) == (today.replace(day=1), today)
    assert period_days("last_month", today=today) == (today.replace(month=2, day=1), today.replace(month=2, day=28))
    assert period_days("last_month", today=today.replace(month=1)) == (
        today.replace(year=2025, month=12, day=1),
        today.replace(year=2025, month=12, day=31),
    )


# --- The page ---------------------------------------------------------------------------------------


def _page(client, monkeypatch, now: datetime, query: str):
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: now)
        return client.get(f"/dashboard/usage/?{query}")


@pytest.mark.parametrize(
    ("zone", "query", "first", "last"),
    [
        ("UTC", "period=today", 0, 0),
        ("Europe/Paris", "period=today", 0, 0),
        ("Pacific/Kiritimati", "period=today", 1, 1),  # at 12:00 UTC it is already the next day there
        ("Asia/Kolkata", "period=7d", -6, 0),
        ("America/New_York", "date_from=2026-03-09&date_to=2026-03-10", -1, 0),
    ],
)
def test_page_totals_are_the_persons_period(events, funded, owner, owner_web, monkeypatch, zone, query, first, last):
    account_services.user_time_zone_set(user=owner, time_zone=zone)
    response = _page(owner_web, monkeypatch, BASE + timedelta(hours=12), query)
    assert response.status_code == 200
    start, end = local_days(zone, first, last)
    report = response.context["report"]
    want = expected(events["oracle"], start, end)
    assert (report.totals.events, Fraction(report.totals.cost), Fraction(report.totals.test_cost)) == (
        want["events"],
        want["live"],
        want["test"],
    )
    assert sum(row.figures.events for row in report.rows) == want["events"]  # the groups add up to the totals


def test_page_groups_by_service_and_key_with_names_and_units(events, funded, owner_web, monkeypatch, catalogue):
    response = _page(owner_web, monkeypatch, BASE + timedelta(days=2, hours=12), "period=7d&group=service")
    html = response.content.decode()
    rows = {row.secondary: row for row in response.context["report"].rows}
    assert set(rows) == {"ping", "gpt", "translate"}
    assert rows["gpt"].label == catalogue["gpt"].name
    gpt = [e for e in events["oracle"] if e["service"] == "gpt"]
    assert rows["gpt"].figures.quantities == [
        (sum(e["units"]["tokens in"] for e in gpt), "tokens in"),
        (sum(e["units"]["tokens out"] for e in gpt), "tokens out"),
    ]
    assert rows["translate"].figures.quantities == [(16, "characters")] and "characters</span>" in html
    assert "requests</span>" in html
    by_key = _page(owner_web, monkeypatch, BASE + timedelta(days=2, hours=12), "period=7d&group=key")
    key_rows = {row.label: row for row in by_key.context["report"].rows}
    assert set(key_rows) == {"prod", "batch", "ci"}
    for name, key in events["keys"].items():
        want = expected(events["oracle"], BASE - timedelta(days=9), BASE + timedelta(days=9), key=key.pk)
        assert Fraction(key_rows[name].figures.cost + key_rows[name].figures.test_cost) == want["live"] + want["test"]
    table = by_key.content.decode()
    assert ">prod <code" in table and "stranger" not in table


def test_page_never_shows_another_organizations_keys_or_usage(events, funded, other_web, monkeypatch):
    response = _page(other_web, monkeypatch, BASE + timedelta(days=2, hours=12), "period=7d&group=key")
    html = response.content.decode()
    assert {row.label for row in response.context["report"].rows} == {"stranger"}
    assert ">prod<" not in html and ">batch<" not in html and "— revoked" not in html


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("date_from=2026-03-10&date_to=2026-03-01", "The start date is after the end date."),
        ("period=custom", "Pick a start or an end date for custom dates."),
        ("period=fortnight", "Select a valid choice."),
        ("group=colour", "Select a valid choice."),
        ("date_from=yesterday", "Enter a valid date."),
    ],
)
def test_bad_filters_say_why_and_show_nothing(events, owner_web, query, message):
    response = owner_web.get(f"/dashboard/usage/?{query}")
    html = response.content.decode()
    assert response.status_code == 400 and message in html
    assert 'data-testid="totals"' not in html and 'data-testid="usage-table"' not in html and "chart-bars" not in html


def test_page_queries_do_not_grow_with_usage(funded, catalogue, owner_web, monkeypatch, django_assert_max_num_queries):
    key = new_key(funded)
    now = BASE + timedelta(hours=12)
    for n in range(3):
        meter_at(monkeypatch, now - timedelta(days=n), key, "ping", f"a{n}")
    with django_assert_max_num_queries(16) as few:
        _page(owner_web, monkeypatch, now, "period=30d")
    for n in range(40):
        meter_at(monkeypatch, now - timedelta(days=n % 25, minutes=n), key, "gpt", f"b{n}", input_tokens=n, output_tokens=1)
    for query in ("period=30d", "period=30d&group=key", "period=month&group=service"):
        with django_assert_max_num_queries(len(few.captured_queries)):
            assert _page(owner_web, monkeypatch, now, query).status_code == 200
