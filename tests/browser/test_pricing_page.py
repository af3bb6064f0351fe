"""The pricing page as a person sees it, at desktop and phone width, with axe-core: a tiered price as a
small table of ranges and rates, a package as "N units for $X", and what the plan includes this month
with a progress bar; another organization's figures never show. And staff adding a tiered price in the
back office, which the customer then sees."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from metering.models import CalcMethod, Price
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price
from tests.metering.plan_helpers import grant, plan_create, subscribe, use

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _no_sideways_scroll(visitor) -> None:
    width = visitor.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"


def test_pricing_shows_tiers_packages_and_what_the_plan_includes(visitor_factory):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Analytical Engines", owner=owner)
    other = organization_create(name="Someone Else", owner=UserFactory())
    translate = service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02")
    moderation = service_with_price(slug="moderation", calc_method=CalcMethod.REQUEST, unit_price="0.001")
    service_with_price(slug="gpt-4o", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00")
    now = timezone.now()
    Price.objects.create(
        service=translate,
        effective_from=now,
        model="tiered",
        tiers=[{"up_to": 1000000, "unit_price": "0.02"}, {"up_to": None, "unit_price": "0.015", "flat_fee": "5"}],
    )
    Price.objects.create(service=moderation, effective_from=now, model="package", unit_price="1.5", package_size=1000)
    plan = plan_create("team", included={translate: 500_000})
    subscribe(organization, plan)
    subscribe(other, plan)
    grant(organization, translate, 500_000)
    use(organization, translate, 125_000)
    grant(other, translate, 500_000)
    use(other, translate, 499_999)

    desktop = visitor_factory()
    log_in(desktop, owner.email)
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    for visitor in (desktop, phone):
        page = visitor.page
        visitor.goto("/dashboard/pricing/")
        tiers = page.get_by_test_id("tiers-translate")
        expect(tiers).to_be_visible()
        rows = tiers.locator("tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("0 – 1,000,000")
        expect(rows.nth(0)).to_contain_text("$0.02")
        expect(rows.nth(1)).to_contain_text("1,000,001 +")
        expect(rows.nth(1)).to_contain_text("$0.015")
        expect(rows.nth(1)).to_contain_text("$5.00")
        expect(tiers.locator("thead")).to_contain_text("per 1K characters")
        expect(page.get_by_test_id("model-translate")).to_contain_text("Tiered")
        expect(page.get_by_test_id("package-moderation")).to_have_text("1,000 requests for $1.50")
        expect(page.get_by_test_id("rate-gpt-4o-input_price")).to_contain_text("$2.50")
        included = page.get_by_test_id("included-translate")
        expect(included).to_contain_text("Included: 500,000, used 125,000, left 375,000")
        bar = included.get_by_role("progressbar")
        expect(bar).to_have_attribute("value", "125000")
        expect(bar).to_have_attribute("max", "500000")
        expect(bar).to_have_accessible_name("Translate: 25% of the included characters used this month")
        expect(page.get_by_test_id("included-moderation")).to_have_count(0)
        assert "499,999" not in page.content()  # the other organization's usage
        visitor.shot("pricing-tiers-package-included")
        axe_check(page, context=f"pricing ({visitor.name})")
        if visitor is phone:
            _no_sideways_scroll(visitor)


def test_staff_add_a_tiered_price_in_the_admin_and_customers_see_its_table(visitor_factory):
    service = service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02")
    staff = UserFactory(email="staff@tollgate.example", is_staff=True, is_superuser=True)
    customer = UserFactory(email="customer@example.com")
    organization_create(name="Polyglot", owner=customer)

    admin = visitor_factory()
    admin.goto("/admin/login/")
    admin.page.get_by_label("Email").fill(staff.email)
    admin.page.get_by_label("Password").fill("correct horse battery staple")
    admin.page.get_by_role("button", name="Log in").click()
    admin.goto("/admin/metering/price/add/")
    page = admin.page
    page.get_by_label("Service", exact=True).select_option(str(service.pk))
    page.get_by_label("Model", exact=True).select_option("tiered")
    expect(page.locator("#id_tiers_helptext")).to_contain_text("flat_fee")
    page.get_by_label("Tiers", exact=True).fill('[{"up_to": 1000, "unit_price": "0.02"}, {"up_to": 500, "unit_price": "0.01"}]')
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errorlist")).to_contain_text("Tier 2")
    admin.shot("admin-tiered-price-refused")
    assert Price.objects.filter(service=service).count() == 1

    page.get_by_label("Tiers", exact=True).fill('[{"up_to": 1000, "unit_price": "0.02"}, {"up_to": null, "unit_price": "0.01"}]')
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    expect(page.locator("#result_list")).to_contain_text("2 tiers up to 1,000 / ∞")
    admin.shot("admin-tiered-price-saved")
    axe_check(page, context="admin price list")
    assert Price.objects.filter(service=service, model="tiered").count() == 1

    shopper = visitor_factory()
    log_in(shopper, customer.email)
    shopper.goto("/dashboard/pricing/")
    rows = shopper.page.get_by_test_id("tiers-translate").locator("tbody tr")
    expect(rows.nth(0)).to_contain_text("0 – 1,000")
    expect(rows.nth(1)).to_contain_text("1,001 +")
    expect(rows.nth(1)).to_contain_text("$0.01")
    shopper.shot("customer-pricing-tiered")
