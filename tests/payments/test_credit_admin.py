"""The back office for grants and budgets: a grant is made only through grant_create (a ledger transfer),
budgets only through their services; allocations and spend rows are read-only."""

from __future__ import annotations

import csv
import importlib
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from payments import budgets, credits
from payments.models import Budget, BudgetSpend, CreditGrant, GrantCategory, RedemptionCode, Transfer
from payments.services import code_digest
from tests.factories import UserFactory
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal
GRANT_ADD = "/admin/payments/creditgrant/add/"
BUDGET_ADD = "/admin/payments/budget/add/"


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from data migrations, which transactional tests elsewhere truncate: run them again."""
    from django.apps import apps

    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("payments.migrations.0013_redemption_grants").extend_groups(apps, None)


def staff(group: str) -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def billing() -> Client:
    return staff("Billing admins")


def grant_form(organization, **changes) -> dict:
    expires = timezone.now() + timedelta(days=10)
    return {
        "organization": organization.pk,
        "amount": "12.5",
        "category": "promotional",
        "priority": "20",
        "expires_at_0": expires.strftime("%Y-%m-%d"),
        "expires_at_1": expires.strftime("%H:%M:%S"),
        "reason": "Goodwill",
    } | changes


def test_the_add_form_makes_a_grant_through_the_ledger(billing, organization):
    response = billing.post(GRANT_ADD, grant_form(organization))

    assert response.status_code == 302, response.content.decode()[:3000]
    grant = CreditGrant.objects.get()
    assert (grant.amount, grant.remaining, grant.priority, grant.source, grant.reason) == (
        D("12.5"),
        D("12.5"),
        20,
        "staff",
        "Goodwill",
    )
    assert Transfer.objects.get(pk=grant.transfer_id).kind == "grant"
    assert wallet_of(organization).balance == D("12.5")
    assert_money_invariants([organization.pk])
    assert billing.get(f"/admin/payments/creditgrant/{grant.pk}/change/").status_code == 200  # viewable


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"priority": "101"}, "priority"),
        ({"reason": ""}, "reason"),
        ({"expires_at_0": "2001-01-01"}, "expires_at"),
    ],
)
def test_a_bad_grant_shows_the_form_again_and_moves_nothing(billing, organization, changes, field):
    response = billing.post(GRANT_ADD, grant_form(organization, **changes))

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not CreditGrant.objects.exists() and not Transfer.objects.exists()


def test_a_grant_is_never_changed_or_deleted_in_the_back_office(billing, organization):
    grant = credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(amount=D("5"), category=GrantCategory.PAID, reason="r"),
        created_by_id=None,
    )

    billing.post(f"/admin/payments/creditgrant/{grant.pk}/change/", {"reason": "changed", "priority": "1"})
    assert billing.post(f"/admin/payments/creditgrant/{grant.pk}/delete/", {"post": "yes"}).status_code == 403

    grant.refresh_from_db()
    assert (grant.reason, grant.priority, grant.remaining) == ("r", 50, D("5"))


def test_support_may_look_but_not_grant(organization):
    support = staff("Support")

    assert support.get("/admin/payments/creditgrant/").status_code == 200
    assert support.post(GRANT_ADD, grant_form(organization)).status_code == 403
    assert not CreditGrant.objects.exists()


def test_the_organization_page_shows_its_grants_and_a_grant_link(billing, organization):
    credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(amount=D("7"), category=GrantCategory.PROMOTIONAL, reason="Launch bonus"),
        created_by_id=None,
    )

    page = billing.get(f"/admin/accounts/organization/{organization.pk}/change/").content.decode()

    assert "Launch bonus" in page and "credit grants" in page.lower()
    assert f"{GRANT_ADD}?organization={organization.pk}" in page


def test_budgets_are_created_changed_and_deleted_through_their_services(billing, organization):
    response = billing.post(BUDGET_ADD, {"organization": organization.pk, "period": "week", "amount": "30", "mode": "hard"})
    assert response.status_code == 302, response.content.decode()[:3000]
    budget = Budget.objects.get()
    spend = BudgetSpend.objects.create(
        organization=organization,
        budget=budget,
        period_start=budgets.budget_period_start("week", timezone.now()),
        spent=D("10"),
        amount=D("30"),
        ceiling=D("30"),
    )

    response = billing.post(f"/admin/payments/budget/{budget.pk}/change/", {"amount": "60", "mode": "soft"})
    assert response.status_code == 302, response.content.decode()[:3000]
    spend.refresh_from_db()
    budget.refresh_from_db()
    assert (budget.amount, budget.mode, spend.amount, spend.ceiling) == (D("60"), "soft", D("60"), None)

    assert billing.post(f"/admin/payments/budget/{budget.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Budget.objects.exists() and not BudgetSpend.objects.exists()


@pytest.mark.parametrize(("form", "field"), [({"amount": "0"}, "amount"), ({"amount": "-3"}, "amount")])
def test_a_bad_budget_shows_the_form_again(billing, organization, form, field):
    response = billing.post(BUDGET_ADD, {"organization": organization.pk, "period": "day", "mode": "hard"} | form)

    assert response.status_code == 200 and field in response.context["adminform"].form.errors
    assert not Budget.objects.exists()


def test_a_second_budget_for_a_scope_and_period_is_a_form_error(billing, organization):
    budgets.budget_create(organization_id=organization.pk, api_key_id=None, period="day", amount=D("5"))

    response = billing.post(BUDGET_ADD, {"organization": organization.pk, "period": "day", "amount": "9", "mode": "hard"})

    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.non_field_errors())
    assert Budget.objects.count() == 1


def test_a_key_of_another_organization_is_refused(billing, organization, other_key):
    response = billing.post(
        BUDGET_ADD,
        {"organization": organization.pk, "api_key": other_key.api_key.pk, "period": "day", "amount": "9", "mode": "hard"},
    )

    assert response.status_code == 200 and "api_key" in response.context["adminform"].form.errors
    assert not Budget.objects.exists()


def test_spend_rows_are_read_only(billing):
    assert billing.get("/admin/payments/budgetspend/").status_code == 200
    assert billing.get("/admin/payments/budgetspend/add/").status_code == 403
    assert billing.get("/admin/payments/grantallocation/add/").status_code == 403


def test_a_batch_of_codes_carries_its_grant_terms(billing):
    response = billing.post(
        "/admin/payments/redemptioncode/generate/",
        {"batch": "spring", "amount": "3.00", "count": "2", "max_uses": "1", "grant_priority": "5", "grant_expires_days": "30"},
    )

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 2
    stored = RedemptionCode.objects.get(digest=code_digest(rows[0]["code"]))
    assert (stored.grant_priority, stored.grant_expires_days) == (5, 30)
