"""Budget services and selectors (payments/budgets.py): validation, one budget per scope and period,
the UTC period math held against PostgreSQL's date_trunc, and `spent` / `resets_at` of the current period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone as django_timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts import services as account_services
from accounts.models import ApiKey
from billing_site.errors import InvalidRequest, NotFound
from payments import budgets, ledger
from payments.models import Budget, BudgetSpend
from tests.concurrency import run_concurrently

D = Decimal


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def pg_trunc(period: str, instant: datetime) -> datetime:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc(%s, %s::timestamptz, 'UTC'), date_trunc(%s, %s::timestamptz, 'UTC') + ('1 ' || %s)::interval",
            [period, instant, period, instant, period],
        )
        start, end = cursor.fetchone()
    return start, end


BOUNDARIES = [
    # midnight
    "2026-03-10T23:59:59.999999+00:00",
    "2026-03-11T00:00:00+00:00",
    # a leap year's February 28 → 29 → March 1
    "2024-02-28T23:59:59.999999+00:00",
    "2024-02-29T00:00:00+00:00",
    "2024-02-29T12:00:00+00:00",
    "2024-02-29T23:59:59.999999+00:00",
    "2024-03-01T00:00:00+00:00",
    # Dec 31 → Jan 1, and ISO weeks across the new year (2025-01-01 is a Wednesday; 2027-01-01 a Friday)
    "2025-12-31T23:59:59.999999+00:00",
    "2026-01-01T00:00:00+00:00",
    "2024-12-29T23:59:59+00:00",
    "2024-12-30T00:00:00+00:00",
    "2025-01-01T08:00:00+00:00",
    "2027-01-01T00:00:00+00:00",
    "2027-01-03T23:59:59.999999+00:00",
    "2027-01-04T00:00:00+00:00",
    # Sunday night → Monday
    "2026-03-01T23:59:59.999999+00:00",
    "2026-03-02T00:00:00+00:00",
    # an instant given in another zone: 23:30 on Sunday in New York is Monday 04:30 UTC
    "2026-03-01T23:30:00-05:00",
    "2026-01-01T00:30:00+02:00",
    "2024-02-29T20:00:00-08:00",
]


@pytest.mark.parametrize("instant", BOUNDARIES)
@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_period_start_and_end_agree_with_postgresql(db, period, instant):
    moment = at(instant)

    start, end = pg_trunc(period, moment)

    assert budgets.budget_period_start(period, moment) == start
    assert budgets.budget_period_end(period, moment) == end
    assert start <= moment < end


@pytest.mark.django_db
@settings(max_examples=150, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
    period=st.sampled_from(["day", "week", "month"]),
)
def test_period_math_agrees_with_postgresql_anywhere(moment, offset_minutes, period):
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))

    assert (budgets.budget_period_start(period, local), budgets.budget_period_end(period, local)) == pg_trunc(period, local)


def test_period_start_refuses_an_unknown_period():
    with pytest.raises(ValueError):
        budgets.budget_period_start("year", django_timezone.now())


@pytest.mark.parametrize(
    ("spent", "amount", "level"),
    [
        ("0", "100", 0),
        ("49.999999999999", "100", 0),
        ("50", "100", 1),
        ("79.99", "100", 1),
        ("80", "100", 2),
        ("99.999999999999", "100", 2),
        ("100", "100", 3),
        ("150", "100", 3),
        ("1", "3", 0),
        ("2", "3", 1),
        ("2.4", "3", 2),
    ],
)
def test_alert_level_in_python_and_sql_agree(db, spent, amount, level):
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {ledger.BUDGET_LEVEL} FROM (SELECT %s::numeric AS spent, %s::numeric AS amount) row",
            [spent, amount],
        )
        [(in_sql,)] = cursor.fetchall()

    assert budgets.budget_alert_level(spent=D(spent), amount=D(amount)) == in_sql == level


# --- create ---------------------------------------------------------------------------------------


def test_create_an_organization_budget_and_a_key_budget_for_the_same_period(organization, live_key):
    org_budget = budgets.budget_create(
        organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"), mode="hard"
    )
    key_budget = budgets.budget_create(
        organization_id=organization.pk, api_key_id=live_key.api_key.pk, period="month", amount=D("20"), mode="soft"
    )

    assert (org_budget.api_key_id, org_budget.amount, org_budget.mode) == (None, D("100"), "hard")
    assert (key_budget.api_key_id, key_budget.amount, key_budget.mode) == (live_key.api_key.pk, D("20"), "soft")


@pytest.mark.parametrize("key_scope", [False, True])
def test_a_second_budget_for_the_same_scope_and_period_is_a_clear_error(organization, live_key, key_scope):
    key_id = live_key.api_key.pk if key_scope else None
    budgets.budget_create(organization_id=organization.pk, api_key_id=key_id, period="day", amount=D("5"))

    with pytest.raises(InvalidRequest) as refused:
        budgets.budget_create(organization_id=organization.pk, api_key_id=key_id, period="day", amount=D("9"))

    assert "already has a day budget" in refused.value.details["period"]
    assert Budget.objects.filter(organization=organization).count() == 1
    budgets.budget_create(
        organization_id=organization.pk, api_key_id=key_id, period="week", amount=D("9")
    )  # another period is fine


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": D("0")}, "amount"),
        ({"amount": D("-1")}, "amount"),
        ({"amount": D("0.0000000000001")}, "amount"),
        ({"amount": D("1e10")}, "amount"),
        ({"amount": D("NaN")}, "amount"),
        ({"amount": "10"}, "amount"),
        ({"period": "year"}, "period"),
        ({"mode": "strict"}, "mode"),
    ],
)
def test_create_refuses_bad_input_and_writes_nothing(organization, changes, field):
    arguments = {
        "organization_id": organization.pk,
        "api_key_id": None,
        "period": "day",
        "amount": D("5"),
        "mode": "hard",
    } | changes

    with pytest.raises(InvalidRequest) as refused:
        budgets.budget_create(**arguments)

    assert set(refused.value.details) == {field}
    assert not Budget.objects.exists()


@pytest.fixture
def keys(organization, other_organization):
    def make(name: str, organization=organization, **options):
        return account_services.api_key_create(organization=organization, name=name, **options).api_key

    revoked = make("revoked")
    account_services.api_key_revoke(api_key=revoked)
    expired = make("expired", expires_at=django_timezone.now() + timedelta(days=1))
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=django_timezone.now() - timedelta(seconds=1))
    return {
        "another organization's": make("globex", organization=other_organization).pk,
        "a revoked": revoked.pk,
        "an expired": expired.pk,
        "a test-mode": make("test", mode="test").pk,
        "a missing": 987654321,
    }


@pytest.mark.parametrize("which", ["another organization's", "a revoked", "an expired", "a test-mode", "a missing"])
def test_a_key_budget_needs_a_live_key_of_the_organization(organization, keys, which):
    with pytest.raises(InvalidRequest) as refused:
        budgets.budget_create(organization_id=organization.pk, api_key_id=keys[which], period="day", amount=D("5"))

    assert set(refused.value.details) == {"api_key"}
    assert not Budget.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_budget_make_exactly_one(organization):
    def create(index: int):
        return budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="week", amount=D(index + 1))

    results = run_concurrently(8, create)

    made = [r for r in results if isinstance(r, Budget)]
    refused = [r for r in results if isinstance(r, InvalidRequest)]
    assert len(made) == 1 and len(refused) == 7, results
    assert Budget.objects.filter(organization=organization).count() == 1


# --- update and delete ----------------------------------------------------------------------------


@pytest.fixture
def budget(organization):
    return budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"))


def spend_row(budget, *, spent: str, alerted: int = 0, period_start: datetime | None = None) -> BudgetSpend:
    """A period's spend as the ledger's statement writes it (budget's amount and ceiling of the time)."""
    return BudgetSpend.objects.create(
        organization_id=budget.organization_id,
        budget=budget,
        period_start=period_start or budgets.budget_period_start(budget.period, django_timezone.now()),
        spent=D(spent),
        amount=budget.amount,
        ceiling=budget.amount if budget.mode == "hard" else None,
        alerted=alerted,
    )


def test_update_applies_the_new_limit_to_the_current_period_at_once(budget):
    current = spend_row(budget, spent="85", alerted=2)
    last_month = spend_row(budget, spent="100", alerted=3, period_start=current.period_start - timedelta(days=40))

    budgets.budget_update(budget=budget, amount=D("200"))

    current.refresh_from_db()
    last_month.refresh_from_db()
    budget.refresh_from_db()
    assert budget.amount == D("200")
    assert (current.amount, current.ceiling, current.spent) == (D("200"), D("200"), D("85"))
    assert current.alerted == 0  # 85 of 200 is below 50 %: the 50 and 80 % alerts re-arm for the new amount
    assert (last_month.amount, last_month.alerted) == (D("100"), 3)  # history stays as it was


def test_lowering_the_amount_keeps_the_levels_already_alerted(budget):
    current = spend_row(budget, spent="60", alerted=1)

    budgets.budget_update(budget=budget, amount=D("70"))

    current.refresh_from_db()
    assert (current.amount, current.ceiling, current.alerted) == (D("70"), D("70"), 1)  # the 80 % alert is still due


def test_a_soft_budget_has_no_ceiling(budget):
    current = spend_row(budget, spent="10")

    budgets.budget_update(budget=budget, mode="soft")

    current.refresh_from_db()
    assert (current.amount, current.ceiling) == (D("100"), None)
    budgets.budget_update(budget=budget, mode="hard")
    current.refresh_from_db()
    assert current.ceiling == D("100")


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"amount": D("0")}, "amount"), ({"mode": "x"}, "mode"), ({"period": "day"}, "period"), ({"api_key_id": 1}, "api_key_id")],
)
def test_update_refuses_bad_changes_and_changes_nothing(budget, changes, field):
    current = spend_row(budget, spent="10")

    with pytest.raises(InvalidRequest) as refused:
        budgets.budget_update(budget=budget, **changes)

    assert set(refused.value.details) == {field}
    budget.refresh_from_db()
    current.refresh_from_db()
    assert (budget.amount, budget.mode, budget.period, current.amount) == (D("100"), "hard", "month", D("100"))


def test_delete_removes_the_budget_and_its_spend(budget, organization):
    spend_row(budget, spent="10")

    budgets.budget_delete(budget=budget)

    assert not Budget.objects.exists() and not BudgetSpend.objects.exists()


# --- selectors ------------------------------------------------------------------------------------


def test_spent_is_the_current_periods_and_resets_at_the_next_period(organization, live_key):
    now = at("2024-02-29T15:00:00+00:00")
    month = budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"))
    week = budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="week", amount=D("30"))
    day = budgets.budget_create(organization_id=organization.pk, api_key_id=live_key.api_key.pk, period="day", amount=D("5"))
    spend_row(month, spent="42.5", period_start=at("2024-02-01T00:00:00+00:00"))
    spend_row(month, spent="99", period_start=at("2024-01-01T00:00:00+00:00"))
    spend_row(week, spent="7", period_start=at("2024-02-19T00:00:00+00:00"))  # last week: not this one
    spend_row(day, spent="1.25", period_start=at("2024-02-29T00:00:00+00:00"))

    statuses = {s.budget.pk: s for s in budgets.budget_list(organization_id=organization.pk, now=now)}

    assert (statuses[month.pk].spent, statuses[month.pk].resets_at) == (D("42.5"), at("2024-03-01T00:00:00+00:00"))
    assert (statuses[week.pk].spent, statuses[week.pk].resets_at) == (D("0"), at("2024-03-04T00:00:00+00:00"))
    assert (statuses[day.pk].spent, statuses[day.pk].resets_at) == (D("1.25"), at("2024-03-01T00:00:00+00:00"))
    assert statuses[month.pk].percent == 42 and statuses[day.pk].percent == 25
    [one] = budgets.budget_statuses([day], now=now)
    assert (one.spent, one.resets_at) == (D("1.25"), at("2024-03-01T00:00:00+00:00"))


def test_the_list_reads_in_a_fixed_number_of_queries(organization, django_assert_num_queries):
    for period in ("day", "week", "month"):
        budget = budgets.budget_create(organization_id=organization.pk, api_key_id=None, period=period, amount=D("10"))
        spend_row(budget, spent="1")

    with django_assert_num_queries(1):
        listed = budgets.budget_list(organization_id=organization.pk)

    assert [s.spent for s in listed] == [D("1")] * 3


def test_a_budget_of_another_organization_is_not_found(budget, other_organization):
    with pytest.raises(NotFound):
        budgets.budget_get(organization_id=other_organization.pk, budget_id=budget.pk)
    assert budgets.budget_list(organization_id=other_organization.pk) == []
