"""A budget's period is a UTC calendar day, ISO week (Monday 00:00) or month (docs/credits.md): a budget
used up at the last second of a period accepts again at the first of the next, and not before. The
application's clock is moved (every money path reads it); the usage goes through POST usage/,
usage/batch/ and holds/."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from payments.models import Budget, BudgetSpend
from tests.factories import service_with_price, wallet_fund
from tests.payments.credit_world import batch, capture, clock_at, code_of, hold, release, use
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal
LAST_SECOND = timedelta(seconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def meter(organization, db):
    wallet_fund(organization, "1000")
    return service_with_price(slug="meter", unit_price="1.00")


def spend_starts(budget) -> dict[datetime, Decimal]:
    return dict(BudgetSpend.objects.filter(budget=budget).values_list("period_start", "spent"))


def use_up(client, when: datetime, prefix: str, allowed: int) -> None:
    """At `when`: `allowed` debits pass, the next is refused by the budget."""
    with clock_at(when):
        for n in range(allowed):
            response = use(client, f"{prefix}{n}")
            assert response.status_code == 201, (when, n, response.content)
        refused = use(client, f"{prefix}-over")
        assert (refused.status_code, code_of(refused)) == (402, "budget_exceeded"), (when, refused.content)


# (period, the period's last second, the next period's first second, where the period started)
BOUNDARIES = [
    ("day", "2027-03-10T23:59:59", "2027-03-11T00:00:00", "2027-03-10T00:00:00"),
    ("day", "2027-12-31T23:59:59.999999", "2028-01-01T00:00:00", "2027-12-31T00:00:00"),
    ("week", "2027-03-07T23:59:59", "2027-03-08T00:00:00", "2027-03-01T00:00:00"),  # Sunday → Monday
    ("week", "2027-12-26T23:59:59", "2027-12-27T00:00:00", "2027-12-20T00:00:00"),
    ("week", "2028-01-02T23:59:59", "2028-01-03T00:00:00", "2027-12-27T00:00:00"),  # a week across the new year
    ("month", "2027-01-31T23:59:59", "2027-02-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2027-02-28T23:59:59", "2027-03-01T00:00:00", "2027-02-01T00:00:00"),  # not a leap year
    ("month", "2028-02-29T23:59:59", "2028-03-01T00:00:00", "2028-02-01T00:00:00"),  # a leap year
    ("month", "2027-12-31T23:59:59", "2028-01-01T00:00:00", "2027-12-01T00:00:00"),
]


@pytest.mark.parametrize(("period", "last", "first", "started"), BOUNDARIES)
def test_a_used_up_budget_accepts_again_at_the_first_second_of_the_next_period(
    organization, live_client, meter, period, last, first, started
):
    budget = Budget.objects.create(organization=organization, period=period, amount=D("2"), mode="hard")
    use_up(live_client, at(last), "a", allowed=2)
    use_up(live_client, at(first), "b", allowed=2)
    assert spend_starts(budget) == {at(started): D("2"), at(first): D("2")}
    assert wallet_of(organization).balance == D("996")
    assert_money_invariants([organization.pk])


# (period, a moment, a moment later in the same period)
SAME_PERIOD = [
    ("week", "2027-03-09T23:59:59", "2027-03-10T00:00:00"),  # Tuesday → Wednesday midnight
    ("week", "2027-03-08T00:00:00", "2027-03-14T23:59:59"),  # Monday's first second → Sunday's last
    ("month", "2028-02-28T23:59:59", "2028-02-29T00:00:00"),  # Feb 28 → 29 in a leap year
    ("month", "2027-01-01T00:00:00", "2027-01-31T23:59:59"),
    ("day", "2027-03-10T00:00:00", "2027-03-10T23:59:59.999999"),
]


@pytest.mark.parametrize(("period", "earlier", "later"), SAME_PERIOD)
def test_a_budget_does_not_reset_inside_its_period(organization, live_client, meter, period, earlier, later):
    budget = Budget.objects.create(organization=organization, period=period, amount=D("2"), mode="hard")
    use_up(live_client, at(earlier), "a", allowed=2)
    with clock_at(at(later)):
        refused = use(live_client, "b")
        assert (refused.status_code, code_of(refused)) == (402, "budget_exceeded")
        refused_batch = batch(live_client, ["c0", "c1"]).json()["results"]
        assert [r["status"] for r in refused_batch] == [402, 402]
        refused_hold = hold(live_client, "h", "0.5")
        assert (refused_hold.status_code, code_of(refused_hold)) == (402, "budget_exceeded")
    assert list(spend_starts(budget).values()) == [D("2")]
    assert wallet_of(organization).balance == D("998")


def test_a_batch_at_the_boundary_counts_in_the_period_it_ran_in(organization, live_client, meter):
    budget = Budget.objects.create(organization=organization, period="day", amount=D("3"), mode="hard")
    with clock_at(at("2027-06-30T23:59:59")):
        assert [r["status"] for r in batch(live_client, [f"a{n}" for n in range(5)]).json()["results"]] == [201] * 3 + [402] * 2
    with clock_at(at("2027-07-01T00:00:00")):
        assert [r["status"] for r in batch(live_client, [f"b{n}" for n in range(5)]).json()["results"]] == [201] * 3 + [402] * 2
    assert spend_starts(budget) == {at("2027-06-30T00:00:00"): D("3"), at("2027-07-01T00:00:00"): D("3")}
    assert_money_invariants([organization.pk])


def test_a_hold_ended_after_midnight_gives_its_day_back_and_a_capture_counts_in_the_new_day(organization, live_client, meter):
    """A hold counts against the period it was made in until it ends. Releasing it after the period
    rolled over gives that period its amount back; capturing it takes its amount out of that period and
    counts the actual cost in the period the capture happens in (else a hold opened before midnight would
    let the next day's hard budget be spent in full on top of it)."""
    budget = Budget.objects.create(organization=organization, period="day", amount=D("3"), mode="hard")
    day1, day2 = at("2027-05-04T00:00:00"), at("2027-05-05T00:00:00")
    with clock_at(day2 - LAST_SECOND):
        released = hold(live_client, "r", "2").json()["id"]
        captured = hold(live_client, "c", "1").json()["id"]
        assert (hold(live_client, "x", "0.5").status_code, spend_starts(budget)) == (402, {day1: D("3")})
    with clock_at(day2):
        for n in range(3):
            assert use(live_client, f"d{n}").status_code == 201  # a new day: the whole budget again
        assert release(live_client, released).status_code == 200
        assert capture(live_client, captured).status_code in (200, 201)
        assert code_of(use(live_client, "d-over")) == "budget_exceeded"
    # day 1: both holds taken back; day 2: its 3 debits and the capture's actual 1.00 (delivered, past the budget)
    assert spend_starts(budget) == {day1: D("0"), day2: D("4")}
    assert wallet_of(organization).balance == D("996")
    assert wallet_of(organization).held == D("0")
    assert_money_invariants([organization.pk])
