"""The plan page as a person uses it, in headless Chromium with axe-core: choose a plan, see what is
left of its included quantity, upgrade, cancel at the end of the month; and the unpaid-fee banner."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from metering.models import Subscription, UsagePosition
from metering.services import subscriptions
from metering.services.positions import PositionKey, period_of, position_advance
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.metering.subscriptions_world import plan_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_subscribe_see_what_is_left_upgrade_and_cancel(visitor_factory):
    owner = UserFactory(email="grace@example.com")
    organization = organization_create(name="Compilers Ltd", owner=owner)
    ping = service_with_price(slug="ping", unit_price="0.01")
    plan_make("starter", "10", included={ping: 1_000})
    plan_make("scale", "40", included={ping: 20_000})
    wallet_fund(organization, "100")

    visitor = visitor_factory()
    log_in(visitor, owner.email)
    page = visitor.page
    page.get_by_role("link", name="Plan").click()
    page.wait_for_url("**/dashboard/plan/")
    expect(page.get_by_test_id("no-subscription")).to_be_visible()
    axe_check(page, context="plan page, no plan")

    page.get_by_test_id("choose-starter").click()
    expect(page.get_by_text("You are on the Starter plan")).to_be_visible()
    expect(page.get_by_test_id("subscription-plan")).to_have_text("Starter")
    period = period_of(timezone.now())
    granted = UsagePosition.objects.get(organization=organization, service=ping, period=period).free_until
    assert 0 < granted <= 1_000
    expect(page.get_by_test_id("left-ping")).to_have_text(f"{granted:,}")

    # Usage of the free units shows on the next visit.
    position_advance(PositionKey(organization.pk, ping.pk, period, False), units=250)
    visitor.goto("/dashboard/plan/")
    expect(page.get_by_test_id("left-ping")).to_have_text(f"{granted - 250:,}")
    expect(page.get_by_test_id("used-ping")).to_have_text(f"{1_000 - granted + 250:,}")
    visitor.shot("plan-starter")

    page.get_by_test_id("choose-scale").click()
    expect(page.get_by_text("You are on the Scale plan from now on")).to_be_visible()
    expect(page.get_by_test_id("subscription-plan")).to_have_text("Scale")

    page.get_by_test_id("plan-cancel").click()
    expect(page.get_by_test_id("cancel-scheduled")).to_be_visible()
    expect(page.get_by_role("button", name="Keep this plan")).to_be_visible()
    assert Subscription.objects.get(organization=organization).cancel_at_period_end
    axe_check(page, context="plan page, canceled at period end")
    visitor.shot("plan-canceled")

    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=visitor.context.storage_state())
    phone.goto("/dashboard/plan/")
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the plan page scrolls sideways on a phone ({width}px)"
    phone.shot("plan-canceled")


def test_an_unpaid_fee_shows_the_banner_with_a_recharge_link(visitor):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Engines", owner=owner)
    ping = service_with_price(slug="ping", unit_price="0.01")
    plan_make("starter", "10", included={ping: 1_000})
    wallet_fund(organization, "10")
    subscriptions.subscription_choose(
        organization_id=organization.pk, plan_slug="starter", now=timezone.now().replace(day=1) - timedelta(days=2)
    )
    subscriptions.subscriptions_renew()  # this month's fee does not fit

    log_in(visitor, owner.email)
    banner = visitor.page.get_by_test_id("past-due-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Your plan's fee is unpaid")
    visitor.goto("/dashboard/plan/")
    expect(visitor.page.get_by_test_id("subscription-status")).to_have_text("Past due")
    expect(visitor.page.get_by_test_id("left-ping")).to_have_text("0")
    axe_check(visitor.page, context="plan page, past due")
    visitor.shot("plan-past-due")
    banner.get_by_role("link", name="Recharge").click()
    visitor.page.wait_for_url("**/dashboard/billing/")
