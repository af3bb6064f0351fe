"""Budgets made over the API meet the ledger's usage statements: what `budgets/` says was spent is what
usage cost (an exact oracle), a change or a deletion applies to the next request, and a crossing of
50/80/100 % alerts once."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from django.core import mail

from payments.models import BudgetSpend
from tests.factories import service_with_price, wallet_fund
from tests.payments.helpers import assert_error, assert_money_invariants

D = Decimal
BUDGETS = "/api/v1/budgets/"
pytestmark = pytest.mark.usefixtures("eager_celery")


@pytest.fixture
def metered(organization):
    wallet_fund(organization, "100")
    service_with_price(slug="meter", unit_price="0.3")
    service_with_price(slug="tiny", unit_price="0.000000000007")
    mail.outbox.clear()
    return organization


def use(client, key: str, service: str = "meter"):
    return client.post("/api/v1/usage/", {"service": service, "idempotency_key": key}, format="json")


def make_budget(owner_client, **body) -> dict:
    response = owner_client.post(BUDGETS, {"scope": "organization", "period": "day", "mode": "hard"} | body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_spent_is_exactly_what_usage_cost(metered, owner_client, live_client):
    budget = make_budget(owner_client, amount="10", mode="soft")
    for n in range(3):
        assert use(live_client, f"m{n}").status_code == 201
    for n in range(5):
        assert use(live_client, f"t{n}", service="tiny").status_code == 201

    listed = owner_client.get(f"{BUDGETS}{budget['id']}/").json()

    assert Fraction(listed["spent"]) == 3 * Fraction("0.3") + 5 * Fraction("0.000000000007")
    assert_money_invariants([metered.pk])


def test_lowering_a_hard_budget_refuses_the_next_request(metered, owner_client, live_client):
    budget = make_budget(owner_client, amount="10")
    assert use(live_client, "a").status_code == 201
    assert use(live_client, "b").status_code == 201

    assert owner_client.patch(f"{BUDGETS}{budget['id']}/", {"amount": "0.7"}, format="json").status_code == 200
    assert_error(use(live_client, "c"), 402, "budget_exceeded")
    assert owner_client.patch(f"{BUDGETS}{budget['id']}/", {"amount": "0.9"}, format="json").status_code == 200
    assert use(live_client, "d").status_code == 201
    assert_error(use(live_client, "e"), 402, "budget_exceeded")

    assert D(owner_client.get(f"{BUDGETS}{budget['id']}/").json()["spent"]) == D("0.9")
    assert_money_invariants([metered.pk])


def test_a_soft_mode_lets_usage_past_the_amount_and_a_deleted_budget_limits_nothing(metered, owner_client, live_client):
    budget = make_budget(owner_client, amount="0.3")
    assert use(live_client, "a").status_code == 201
    assert_error(use(live_client, "b"), 402, "budget_exceeded")

    owner_client.patch(f"{BUDGETS}{budget['id']}/", {"mode": "soft"}, format="json")
    assert use(live_client, "c").status_code == 201
    owner_client.patch(f"{BUDGETS}{budget['id']}/", {"mode": "hard"}, format="json")
    assert_error(use(live_client, "d"), 402, "budget_exceeded")
    assert owner_client.delete(f"{BUDGETS}{budget['id']}/").status_code == 204
    assert use(live_client, "e").status_code == 201
    assert_money_invariants([metered.pk])


def test_a_key_budget_limits_that_key_only(metered, owner_client, live_key, live_client, other_key):
    make_budget(owner_client, scope="api_key", api_key=live_key.api_key.pk, amount="0.3")

    assert use(live_client, "a").status_code == 201
    assert_error(use(live_client, "b"), 402, "budget_exceeded")


def test_usage_crossing_thresholds_alerts_once_each(
    metered, owner, owner_client, live_client, django_capture_on_commit_callbacks
):
    make_budget(owner_client, amount="1.2", mode="soft")

    for n in range(6):  # 0.3, 0.6 (50 %), 0.9, 1.2 (100 %), 1.5, 1.8
        with django_capture_on_commit_callbacks(execute=True):  # each request's commit runs its callbacks
            assert use(live_client, f"u{n}").status_code == 201

    assert [m.subject.split(": ")[1][:4] for m in mail.outbox] == ["50% ", "100%"]
    assert all(m.to == [owner.email] for m in mail.outbox)
    assert BudgetSpend.objects.get().alerted == 3
