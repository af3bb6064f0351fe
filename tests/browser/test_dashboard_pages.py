"""What a person sees on the pages issue 12 changed: each checked in Chromium, with axe-core and a screenshot."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import ApiKey, Membership, Role
from metering.models import CalcMethod
from payments import services as payment_services
from payments.models import Payment, PaymentStatus, Wallet
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def owner_visit(visitor_factory):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Analytical Engines", owner=owner)
    visit = visitor_factory()
    log_in(visit, owner.email)
    return visit, owner, organization


def test_a_refreshed_new_key_page_shows_no_secret_and_creates_no_key(owner_visit):
    visit, _, organization = owner_visit
    page = visit.page
    visit.goto("/dashboard/keys/")
    page.get_by_label("Name").fill("Backend")
    page.get_by_role("button", name="Create key").last.click()
    secret = page.get_by_test_id("secret").inner_text().strip()
    assert secret.startswith("tg_live_")
    axe_check(page)
    visit.shot("after-key-created")
    page.reload()
    expect(page.get_by_test_id("secret-gone")).to_contain_text("The secret is no longer shown")
    assert secret not in page.content()
    visit.shot("after-key-created-refreshed")
    assert ApiKey.objects.filter(organization=organization).count() == 1


def test_usage_with_an_invalid_range_on_a_phone_shows_the_error_and_no_table(visitor_factory, owner_visit):
    desktop, _, _ = owner_visit
    service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price="0.001")
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    response = phone.page.goto("/dashboard/usage/?date_from=2030-02-01&date_to=2030-01-01")
    assert response.status == 400
    phone.problems.clear()  # the 400 is the page's answer, not a broken load
    expect(phone.page.get_by_role("alert")).to_contain_text("The start date is after the end date.")
    expect(phone.page.get_by_test_id("usage-table")).to_have_count(0)
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"
    axe_check(phone.page)
    phone.shot("after-usage-invalid-range")


def test_billing_shows_the_transactions_exact_on_hover_and_no_settled_failure(owner_visit):
    visit, _, organization = owner_visit
    wallet_fund(organization, "20.123456", reason="opening credit")
    Payment.objects.create(
        organization=organization,
        provider="sandbox",
        amount=Decimal("50"),
        currency="USD",
        status=PaymentStatus.FAILED,
        provider_reference="sbx_failed",
        settled_at=timezone.now(),
    )
    code = payment_services.redemption_codes_generate(batch="b", amount=Decimal("5"), count=1, expires_at=None, created_by=None)[
        0
    ]
    visit.goto("/dashboard/billing/")
    page = visit.page
    page.get_by_label("Promotional code").fill(code)
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator(".flash-success")).to_contain_text("Code redeemed: $5.00 added to your balance.")
    table = page.get_by_test_id("transactions-table")
    expect(table).to_contain_text("Promotional code redeemed")
    expect(table).to_contain_text("opening credit")
    newest_balance = table.get_by_test_id("line-balance").first.locator(".money")
    expect(newest_balance).to_have_text("$25.12")
    expect(newest_balance).to_have_attribute("title", "25.123456 USD")
    newest_balance.hover()
    payments = page.get_by_test_id("payments-table")
    expect(payments).to_contain_text("Failed")
    expect(payments).not_to_contain_text("Settled")
    assert Wallet.objects.get(organization=organization).balance == Decimal("25.123456")
    axe_check(page)
    visit.shot("after-billing")


def test_making_someone_an_owner_asks_first(owner_visit):
    visit, _, organization = owner_visit
    pat = organization.memberships.create(user=UserFactory(email="pat@example.com"), role=Role.MEMBER)
    visit.goto("/dashboard/team/")
    visit.page.locator(f"#role-{pat.pk}").select_option("owner")
    confirm = visit.page.get_by_test_id("role-confirm")
    expect(visit.page.get_by_role("heading", name="Make pat@example.com an owner?")).to_be_visible()
    axe_check(visit.page)
    visit.shot("after-team-role-confirm")
    assert Membership.objects.get(pk=pat.pk).role == Role.MEMBER
    confirm.get_by_role("button", name="Make owner").click()
    expect(visit.page.locator(".flash-success")).to_contain_text("is now owner")
    assert Membership.objects.get(pk=pat.pk).role == Role.OWNER


def test_settings_rename_and_time_zone(owner_visit):
    visit, _, _ = owner_visit
    page = visit.page
    visit.goto("/dashboard/settings/")
    page.get_by_test_id("rename-form").get_by_label("Organization name").fill("Difference Engines")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator(".flash-success")).to_contain_text("The organization is now called Difference Engines.")
    page.get_by_label("Time zone").select_option("Europe/Paris")
    page.get_by_role("button", name="Save time zone").click()
    expect(page.locator(".flash-success")).to_contain_text("Times are now shown in Europe/Paris.")
    expect(page.get_by_test_id("alert-deliveries")).to_contain_text("No alert has been sent")
    axe_check(page)
    visit.shot("after-settings")
    visit.goto("/dashboard/usage/")
    expect(page.get_by_text("times in Europe/Paris")).to_be_visible()
