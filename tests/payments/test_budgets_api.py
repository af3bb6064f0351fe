"""Budgets over the API (docs/credits.md): `budgets/` and `budgets/{id}/` for owners and admins, every
error path, and another tenant's budget answering 404."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as account_services
from payments import budgets
from payments.models import Budget, BudgetSpend
from tests.payments.helpers import assert_error

D = Decimal
BUDGETS = "/api/v1/budgets/"


def detail(budget_id: int) -> str:
    return f"{BUDGETS}{budget_id}/"


@pytest.fixture
def budget(organization) -> Budget:
    return budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"))


@pytest.fixture
def other_budget(other_organization) -> Budget:
    return budgets.budget_create(organization_id=other_organization.pk, api_key_id=None, period="month", amount=D("7"))


def spent_this_period(budget: Budget, spent: str) -> None:
    BudgetSpend.objects.create(
        organization_id=budget.organization_id,
        budget=budget,
        period_start=budgets.budget_period_start(budget.period, timezone.now()),
        spent=D(spent),
        amount=budget.amount,
        ceiling=budget.amount,
    )


def test_create_an_organization_budget(organization, owner_client):
    response = owner_client.post(
        BUDGETS, {"scope": "organization", "period": "day", "amount": "25.50", "mode": "soft"}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    made = Budget.objects.get(pk=body["id"])
    assert body == {
        "id": made.pk,
        "scope": "organization",
        "api_key": None,
        "period": "day",
        "amount": "25.500000000000",
        "mode": "soft",
        "spent": "0.000000000000",
        "resets_at": budgets.budget_period_end("day", timezone.now()).isoformat().replace("+00:00", "Z"),
        "created_at": body["created_at"],
    }
    assert (made.organization_id, made.api_key_id, made.amount) == (organization.pk, None, D("25.5"))


def test_create_a_key_budget_hard_by_default(organization, org_admin_client, live_key):
    key_id = live_key.api_key.pk

    response = org_admin_client.post(
        BUDGETS, {"scope": "api_key", "api_key": key_id, "period": "week", "amount": "5"}, format="json"
    )

    assert response.status_code == 201, response.content
    assert (response.json()["scope"], response.json()["api_key"], response.json()["mode"]) == ("api_key", key_id, "hard")
    assert Budget.objects.get().api_key_id == key_id


def test_list_shows_each_budget_with_this_periods_spend(organization, owner_client, budget, other_budget):
    spent_this_period(budget, "42.125")
    spent_this_period(other_budget, "6")

    response = owner_client.get(BUDGETS)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    [listed] = body["results"]
    assert (listed["id"], listed["spent"], listed["amount"]) == (budget.pk, "42.125000000000", "100.000000000000")


def test_get_one_budget(owner_client, budget):
    spent_this_period(budget, "1")

    response = owner_client.get(detail(budget.pk))

    assert response.status_code == 200 and response.json()["spent"] == "1.000000000000"


def test_patch_changes_the_amount_and_mode(owner_client, budget):
    spent_this_period(budget, "10")

    response = owner_client.patch(detail(budget.pk), {"amount": "250", "mode": "soft"}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["amount"], response.json()["mode"], response.json()["spent"]) == (
        "250.000000000000",
        "soft",
        "10.000000000000",
    )
    budget.refresh_from_db()
    assert (budget.amount, budget.mode) == (D("250"), "soft")
    assert BudgetSpend.objects.get(budget=budget).ceiling is None


def test_an_empty_patch_changes_nothing(owner_client, budget):
    response = owner_client.patch(detail(budget.pk), {}, format="json")

    assert response.status_code == 200 and response.json()["amount"] == "100.000000000000"


def test_delete(owner_client, budget):
    spent_this_period(budget, "10")

    response = owner_client.delete(detail(budget.pk))

    assert response.status_code == 204
    assert not Budget.objects.exists() and not BudgetSpend.objects.exists()
    assert_error(owner_client.get(detail(budget.pk)), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": "team"}, "scope"),
        ({"scope": "api_key"}, "api_key"),
        ({"scope": "api_key", "api_key": None}, "api_key"),
        ({"scope": "api_key", "api_key": "one"}, "api_key"),
        ({"scope": "api_key", "api_key": 2**63}, "api_key"),
        ({"scope": "api_key", "api_key": 987654}, "api_key"),
        ({"api_key": 1}, "api_key"),
        ({"period": "year"}, "period"),
        ({"period": None}, "period"),
        ({"amount": "0"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "1.0000000000001"}, "amount"),
        ({"amount": "1000000001"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"mode": "strict"}, "mode"),
        ({"organization": 3}, "organization"),
    ],
)
def test_a_bad_budget_is_refused_and_nothing_is_written(owner_client, organization, body, field):
    request = {"scope": "organization", "period": "month", "amount": "10"} | body

    error = assert_error(owner_client.post(BUDGETS, request, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert not Budget.objects.exists()


def test_a_body_that_is_not_an_object_is_refused(owner_client, budget):
    assert_error(owner_client.post(BUDGETS, [1, 2], format="json"), 400, "invalid_request")
    assert_error(owner_client.patch(detail(budget.pk), [1], format="json"), 400, "invalid_request")


def test_a_second_budget_for_the_scope_and_period_is_400_not_500(owner_client, budget):
    error = assert_error(
        owner_client.post(BUDGETS, {"scope": "organization", "period": "month", "amount": "5"}, format="json"),
        400,
        "invalid_request",
    )

    assert "already has a month budget" in error["details"]["period"]
    assert Budget.objects.count() == 1


def test_a_key_of_another_organization_cannot_be_budgeted(owner_client, other_key):
    body = {"scope": "api_key", "api_key": other_key.api_key.pk, "period": "day", "amount": "5"}

    error = assert_error(owner_client.post(BUDGETS, body, format="json"), 400, "invalid_request")

    assert error["details"] == {"api_key": "No such API key."}
    assert not Budget.objects.exists()


def test_a_revoked_key_cannot_be_budgeted(organization, owner_client):
    key = account_services.api_key_create(organization=organization, name="old").api_key
    account_services.api_key_revoke(api_key=key)

    body = {"scope": "api_key", "api_key": key.pk, "period": "day", "amount": "5"}
    assert_error(owner_client.post(BUDGETS, body, format="json"), 400, "invalid_request")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"mode": "strict"}, "mode"),
        ({"period": "day"}, "period"),
        ({"scope": "api_key"}, "scope"),
        ({"api_key": 1}, "api_key"),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(owner_client, budget, body, field):
    error = assert_error(owner_client.patch(detail(budget.pk), body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    budget.refresh_from_db()
    assert (budget.amount, budget.mode, budget.period, budget.api_key_id) == (D("100"), "hard", "month", None)


# --- who may, and tenant isolation ----------------------------------------------------------------

CALLS = {
    "list": lambda c, b: c.get(BUDGETS),
    "create": lambda c, b: c.post(BUDGETS, {"scope": "organization", "period": "day", "amount": "1"}, format="json"),
    "get": lambda c, b: c.get(detail(b.pk)),
    "patch": lambda c, b: c.patch(detail(b.pk), {"amount": "1"}, format="json"),
    "delete": lambda c, b: c.delete(detail(b.pk)),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("who", ["member_client", "live_client"])
def test_members_and_keys_may_not_touch_budgets(request, budget, call, who):
    assert_error(call(request.getfixturevalue(who), budget), 403, "permission_denied")
    budget.refresh_from_db()
    assert budget.amount == D("100") and Budget.objects.count() == 1


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_budgets_require_authentication(api_client, budget, call):
    assert_error(call(api_client, budget), 401, "not_authenticated")


@pytest.mark.parametrize("call", [CALLS["get"], CALLS["patch"], CALLS["delete"]], ids=["get", "patch", "delete"])
def test_another_organizations_budget_is_404_and_untouched(owner_client, other_budget, call):
    assert_error(call(owner_client, other_budget), 404, "not_found")

    other_budget.refresh_from_db()
    assert other_budget.amount == D("7")


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_a_missing_budget_is_404(owner_client, db, method):
    assert_error(getattr(owner_client, method)(detail(2**62), {}, format="json"), 404, "not_found")


def test_another_organizations_owner_sees_only_theirs(other_owner_client, budget, other_budget):
    [listed] = other_owner_client.get(BUDGETS).json()["results"]

    assert listed["id"] == other_budget.pk
