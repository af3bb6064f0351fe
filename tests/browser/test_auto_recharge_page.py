"""Auto top-up on the billing page, in headless Chromium: an owner whose balance is low turns it on with
the sandbox's saved method, and the top-up is charged and credited at once (the whole chain for real:
the sandbox's signed webhook over HTTP to the live server, settled by the eager worker)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from payments.auto_models import AutoRecharge
from payments.models import Payment, PaymentStatus, Wallet
from tests.browser.axe import axe_check
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, wallet_fund

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_owner_turns_on_auto_top_up_and_the_low_balance_is_topped_up(visitor, eager_settlement):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Engines", owner=owner)
    wallet_fund(organization, "2")

    log_in(visitor, owner.email)
    page = visitor.page
    visitor.goto("/dashboard/billing/")
    section = page.get_by_test_id("auto-recharge")
    expect(page.get_by_test_id("auto-recharge-state")).to_have_text("Off")
    axe_check(page, context="billing page, auto top-up off")

    section.get_by_label("Top up automatically").check()
    section.get_by_label("When available falls below").fill("5")
    section.get_by_label("Top-up amount").fill("20")
    section.get_by_label("At most per month").fill("100")
    section.get_by_label("Sandbox", exact=True).check()
    section.get_by_label("Sandbox method").select_option("pm_sandbox_ok")
    section.get_by_role("button", name="Save auto top-up").click()

    expect(page.get_by_text("Auto top-up is on.")).to_be_visible()
    expect(page.get_by_test_id("auto-recharge-state")).to_have_text("On")
    expect(page.get_by_test_id("auto-payments-table")).to_contain_text("Succeeded")
    setting = AutoRecharge.objects.get(pk=organization.pk)
    assert (setting.enabled, setting.threshold, setting.amount, setting.monthly_max) == (
        True,
        Decimal(5),
        Decimal(20),
        Decimal(100),
    )
    [payment] = Payment.objects.filter(organization=organization, auto=True)
    assert payment.status == PaymentStatus.SUCCEEDED
    assert Wallet.objects.get(pk=organization.pk).balance == Decimal("22")
    axe_check(page, context="billing page, auto top-up on")
    visitor.shot("billing-auto-top-up-on")
