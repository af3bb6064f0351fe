"""The dashboard's Credits page (grants, the expires-soon notice, also on the overview) and Budgets page
(list with progress, create, edit, delete; owners and admins)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as account_services
from payments import budgets, credits
from payments.models import Budget, BudgetSpend, CreditGrant, GrantCategory

D = Decimal


def grant(organization, amount: str, *, expires_in: timedelta | None = None, reason: str = "promo") -> CreditGrant:
    spec = credits.GrantSpec(
        amount=D(amount),
        category=GrantCategory.PROMOTIONAL,
        expires_at=timezone.now() + expires_in if expires_in else None,
        reason=reason,
    )
    return credits.grant_create(organization_id=organization.pk, spec=spec, created_by_id=None)


# --- Credits --------------------------------------------------------------------------------------


def test_credits_page_lists_grants_and_flags_those_expiring_soon(organization, member_web):
    soon = grant(organization, "12.5", expires_in=timedelta(days=3))
    later = grant(organization, "40", expires_in=timedelta(days=60))
    forever = grant(organization, "1")

    response = member_web.get("/dashboard/credits/")

    assert response.status_code == 200
    page = response.content.decode()
    assert f'data-testid="expires-soon-{soon.pk}"' in page
    assert f'data-testid="expires-soon-{later.pk}"' not in page and f'data-testid="expires-soon-{forever.pk}"' not in page
    assert 'data-testid="grants-expiring"' in page and "$12.50" in page
    assert "$53.50" in page  # credit left


def test_credits_page_without_grants(organization, owner_web):
    page = owner_web.get("/dashboard/credits/").content.decode()

    assert "No credit grants yet" in page and 'data-testid="grants-expiring"' not in page


def test_credits_page_shows_only_the_organizations_grants(organization, other_organization, owner_web):
    theirs = grant(other_organization, "77", expires_in=timedelta(days=1))

    page = owner_web.get("/dashboard/credits/").content.decode()

    assert f"grant-{theirs.pk}" not in page and "$77.00" not in page


def test_the_overview_warns_of_credit_expiring_soon(organization, owner_web):
    assert 'data-testid="grants-expiring"' not in owner_web.get("/dashboard/").content.decode()
    grant(organization, "9", expires_in=timedelta(days=2))

    page = owner_web.get("/dashboard/").content.decode()

    assert 'data-testid="grants-expiring"' in page and "$9.00" in page and "/dashboard/credits/" in page


def test_navigation_links_credits_for_all_and_budgets_for_managers(organization, owner_web, member_web):
    owner_page = owner_web.get("/dashboard/").content.decode()
    member_page = member_web.get("/dashboard/").content.decode()

    assert 'href="/dashboard/credits/"' in owner_page and 'href="/dashboard/budgets/"' in owner_page
    assert 'href="/dashboard/credits/"' in member_page and 'href="/dashboard/budgets/"' not in member_page


# --- Budgets --------------------------------------------------------------------------------------


@pytest.fixture
def budget(organization) -> Budget:
    return budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="month", amount=D("100"))


def test_budgets_page_shows_progress_of_this_period(organization, owner_web, budget):
    BudgetSpend.objects.create(
        organization=organization,
        budget=budget,
        period_start=budgets.budget_period_start("month", timezone.now()),
        spent=D("42.5"),
        amount=D("100"),
        ceiling=D("100"),
    )

    page = owner_web.get("/dashboard/budgets/").content.decode()

    assert f'data-testid="progress-{budget.pk}"' in page and 'value="42"' in page
    assert "$42.50" in page and "$100.00" in page


def test_create_an_organization_budget(organization, admin_web):
    response = admin_web.post("/dashboard/budgets/", {"scope": "organization", "period": "week", "amount": "30", "mode": "soft"})

    assert response.status_code == 302
    made = Budget.objects.get()
    assert (made.organization_id, made.api_key_id, made.period, made.amount, made.mode) == (
        organization.pk,
        None,
        "week",
        D("30"),
        "soft",
    )


def test_create_a_key_budget(organization, owner_web):
    key = account_services.api_key_create(organization=organization, name="Batch").api_key

    response = owner_web.post("/dashboard/budgets/", {"scope": str(key.pk), "period": "day", "amount": "5", "mode": "hard"})

    assert response.status_code == 302
    assert Budget.objects.get().api_key_id == key.pk


@pytest.mark.parametrize(
    "form",
    [
        {"amount": "0"},
        {"amount": "-3"},
        {"amount": "abc"},
        {"period": "year"},
        {"mode": "strict"},
        {"scope": "999999"},
    ],
)
def test_a_bad_budget_is_shown_again_and_nothing_is_written(organization, owner_web, form):
    response = owner_web.post(
        "/dashboard/budgets/", {"scope": "organization", "period": "day", "amount": "5", "mode": "hard"} | form
    )

    assert response.status_code == 400
    assert not Budget.objects.exists()


def test_a_key_of_another_organization_cannot_be_chosen(organization, owner_web, other_key):
    response = owner_web.post(
        "/dashboard/budgets/", {"scope": str(other_key.api_key.pk), "period": "day", "amount": "5", "mode": "hard"}
    )

    assert response.status_code == 400 and not Budget.objects.exists()


def test_a_second_budget_for_the_same_scope_and_period_is_a_form_error(organization, owner_web, budget):
    response = owner_web.post("/dashboard/budgets/", {"scope": "organization", "period": "month", "amount": "5", "mode": "hard"})

    assert response.status_code == 400
    assert "already has a month budget" in response.content.decode()
    assert Budget.objects.count() == 1


def test_edit_a_budget(owner_web, budget):
    assert owner_web.get(f"/dashboard/budgets/{budget.pk}/edit/").status_code == 200

    response = owner_web.post(f"/dashboard/budgets/{budget.pk}/edit/", {"amount": "250.5", "mode": "soft"})

    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.amount, budget.mode) == (D("250.5"), "soft")


def test_a_bad_edit_changes_nothing(owner_web, budget):
    response = owner_web.post(f"/dashboard/budgets/{budget.pk}/edit/", {"amount": "0", "mode": "soft"})

    assert response.status_code == 400
    budget.refresh_from_db()
    assert (budget.amount, budget.mode) == (D("100"), "hard")


def test_delete_a_budget_after_confirming(owner_web, budget):
    assert owner_web.get(f"/dashboard/budgets/{budget.pk}/delete/").status_code == 200
    assert Budget.objects.exists()

    assert owner_web.post(f"/dashboard/budgets/{budget.pk}/delete/").status_code == 302
    assert not Budget.objects.exists()


@pytest.mark.parametrize("url", ["/dashboard/budgets/", "/dashboard/budgets/{id}/edit/", "/dashboard/budgets/{id}/delete/"])
def test_members_may_not_manage_budgets(member_web, budget, url):
    target = url.format(id=budget.pk)

    assert member_web.get(target).status_code == 403
    assert member_web.post(target, {"amount": "1", "mode": "soft", "scope": "organization", "period": "day"}).status_code == 403
    assert Budget.objects.count() == 1 and Budget.objects.get().amount == D("100")


@pytest.mark.parametrize("url", ["/dashboard/budgets/{id}/edit/", "/dashboard/budgets/{id}/delete/"])
def test_another_organizations_budget_is_404(other_web, budget, url):
    target = url.format(id=budget.pk)

    assert other_web.get(target).status_code == 404
    assert other_web.post(target, {"amount": "1", "mode": "soft"}).status_code == 404
    budget.refresh_from_db()
    assert budget.amount == D("100")
