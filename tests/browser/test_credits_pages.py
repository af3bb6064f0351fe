"""The Credits and Budgets pages as a person uses them, in headless Chromium with axe-core: a grant that
expires soon is flagged (and the overview says so); a budget is created, shows its progress, is edited
and deleted."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from payments import budgets, credits
from payments.models import Budget, BudgetSpend, GrantCategory
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
D = Decimal


def test_credits_page_flags_a_grant_that_expires_soon(visitor_factory):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Engines", owner=owner)
    soon = credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(
            amount=D("25"), category=GrantCategory.PROMOTIONAL, expires_at=timezone.now() + timedelta(days=3), reason="Launch"
        ),
        created_by_id=None,
    )
    later = credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(amount=D("10"), category=GrantCategory.PAID, reason="Invoice 12"),
        created_by_id=None,
    )

    visitor = visitor_factory()
    log_in(visitor, owner.email)
    page = visitor.page
    expect(page.get_by_test_id("grants-expiring")).to_contain_text("Credit expires soon")
    page.get_by_role("link", name="Credits", exact=True).first.click()
    page.wait_for_url("**/dashboard/credits/")
    expect(page.get_by_test_id(f"expires-soon-{soon.pk}")).to_have_text("Expires soon")
    expect(page.get_by_test_id(f"expires-soon-{later.pk}")).to_have_count(0)
    expect(page.get_by_test_id(f"remaining-{soon.pk}")).to_have_text("$25.00")
    expect(page.get_by_test_id("credit-left")).to_have_text("$35.00")
    axe_check(page, context="credits page")
    visitor.shot("credits")

    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=visitor.context.storage_state())
    phone.goto("/dashboard/credits/")
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the credits page scrolls sideways on a phone ({width}px)"
    phone.shot("credits")


def test_create_see_progress_edit_and_delete_a_budget(visitor_factory):
    owner = UserFactory(email="grace@example.com")
    organization = organization_create(name="Compilers Ltd", owner=owner)

    visitor = visitor_factory()
    log_in(visitor, owner.email)
    page = visitor.page
    page.get_by_role("link", name="Budgets").click()
    page.wait_for_url("**/dashboard/budgets/")
    axe_check(page, context="budgets page, empty")

    page.get_by_label("Applies to").select_option("organization")
    page.get_by_label("Period").select_option("month")
    page.get_by_label("Amount").fill("200")
    page.get_by_role("radio", name="Hard: refuse usage past it").check()
    page.get_by_test_id("budget-create").click()
    expect(page.get_by_text("The budget is set")).to_be_visible()
    budget = Budget.objects.get(organization=organization)
    assert (budget.period, budget.amount, budget.mode) == ("month", D("200"), "hard")

    # This month's spend, as the ledger's usage statements leave it, shows on the next visit.
    BudgetSpend.objects.create(
        organization=organization,
        budget=budget,
        period_start=budgets.budget_period_start("month", timezone.now()),
        spent=D("50"),
        amount=D("200"),
        ceiling=D("200"),
    )
    visitor.goto("/dashboard/budgets/")
    progress = page.get_by_test_id(f"progress-{budget.pk}")
    expect(progress).to_have_attribute("value", "25")
    expect(page.get_by_test_id(f"spent-{budget.pk}")).to_contain_text("$50.00")
    axe_check(page, context="budgets page, one budget")
    visitor.shot("budgets")

    page.get_by_test_id(f"edit-{budget.pk}").click()
    page.wait_for_url(f"**/dashboard/budgets/{budget.pk}/edit/")
    page.get_by_label("Amount").fill("100")
    page.get_by_role("radio", name="Soft: alert only").check()
    axe_check(page, context="budget edit page")
    page.get_by_test_id("budget-save").click()
    expect(page.get_by_text("The budget was changed")).to_be_visible()
    expect(page.get_by_test_id(f"progress-{budget.pk}")).to_have_attribute("value", "50")
    budget.refresh_from_db()
    assert (budget.amount, budget.mode) == (D("100"), "soft")

    page.get_by_test_id(f"delete-{budget.pk}").click()
    page.wait_for_url(f"**/dashboard/budgets/{budget.pk}/delete/")
    page.get_by_test_id("budget-delete-confirm").click()
    expect(page.get_by_text("The budget was deleted")).to_be_visible()
    expect(page.get_by_text("No budgets yet.")).to_be_visible()
    assert not Budget.objects.filter(organization=organization).exists()

    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=visitor.context.storage_state())
    phone.goto("/dashboard/budgets/")
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the budgets page scrolls sideways on a phone ({width}px)"
