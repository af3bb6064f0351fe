"""The usage page and the overview's chart as a person sees them, at desktop and phone width, with
axe-core: totals for a preset period, groups by service and key with names and units, no sideways
scroll at 390 px, stable colours between the two pages, and a chart that says when there is no data."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
from playwright.sync_api import expect

from accounts import services as account_services
from dashboard import charts
from metering.models import CalcMethod
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _no_sideways_scroll(visitor) -> None:
    width = visitor.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"


def test_usage_page_totals_groups_and_names_on_desktop_and_phone(visitor_factory, live_server):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Analytical Engines", owner=owner)
    account_services.user_time_zone_set(user=owner, time_zone="Europe/Paris")
    service_with_price(slug="gpt-4o", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00")
    service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02")
    wallet_fund(organization, "20")
    prod = account_services.api_key_create(organization=organization, name="Production backend", created_by=owner)
    other = organization_create(name="Someone Else", owner=UserFactory())
    account_services.api_key_create(organization=other, name="Their secret project", created_by=None)
    for n, body in enumerate(
        [
            {"service": "gpt-4o", "input_tokens": 1200, "output_tokens": 350},
            {"service": "gpt-4o", "input_tokens": 800, "output_tokens": 50},
            {"service": "translate", "text": "Hello, world! Bonjour le monde."},
        ]
    ):
        response = requests.post(
            f"{live_server.url}/api/v1/usage/",
            json={**body, "idempotency_key": f"u{n}"},
            headers={"Authorization": f"Bearer {prod.secret}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
    # Exact: 2000 in × 2.50/1M + 400 out × 10/1M + 31 chars × 0.02/1k = 0.005 + 0.004 + 0.00062
    total = Decimal("0.00962")

    desktop = visitor_factory()
    log_in(desktop, owner.email)
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    for visitor in (desktop, phone):
        page = visitor.page
        visitor.goto("/dashboard/usage/")
        page.get_by_role("link", name="Today").click()
        expect(page.get_by_role("link", name="Today")).to_have_attribute("aria-current", "true")
        expect(page.get_by_test_id("total-events")).to_have_text("3")
        expect(page.get_by_test_id("total-cost").locator(".money")).to_have_attribute("title", f"{total} USD")
        expect(page.get_by_test_id("total-quantities")).to_contain_text("2,000 tokens in")
        expect(page.get_by_test_id("total-quantities")).to_contain_text("31 characters")
        expect(page.get_by_test_id("period")).to_contain_text("Europe/Paris")
        expect(page.get_by_test_id("usage-table")).to_contain_text("Production backend")
        visitor.shot("after-usage-today")
        axe_check(page, context=f"usage today ({visitor.name})")
        if visitor is phone:
            _no_sideways_scroll(visitor)

        page.get_by_test_id("groups").get_by_role("link", name="Service").click()
        table = page.get_by_test_id("summary-table")
        expect(table).to_contain_text("gpt-4o")
        expect(table).to_contain_text("characters")
        visitor.shot("after-usage-by-service")
        axe_check(page, context=f"usage by service ({visitor.name})")

        page.get_by_test_id("groups").get_by_role("link", name="API key").click()
        expect(page.get_by_test_id("summary-table")).to_contain_text("Production backend")
        assert "Their secret project" not in page.content()
        options = page.get_by_label("API key").locator("option").all_inner_texts()
        assert any(option.startswith("Production backend") for option in options)
        assert not any("Their secret project" in option for option in options)
        visitor.shot("after-usage-by-key")
        axe_check(page, context=f"usage by key ({visitor.name})")
        if visitor is phone:
            _no_sideways_scroll(visitor)


def test_overview_chart_with_no_data_says_so_and_colours_follow_the_service(visitor_factory):
    owner = UserFactory(email="grace@example.com")
    organization = organization_create(name="Compilers", owner=owner)
    desktop = visitor_factory()
    log_in(desktop, owner.email)
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    for visitor in (desktop, phone):
        visitor.goto("/dashboard/")
        expect(visitor.page.locator('[data-testid="chart-none"]:visible')).to_contain_text("No live usage in the last")
        assert visitor.page.locator(".chart-bars").count() == 0
        axe_check(visitor.page, context=f"overview without usage ({visitor.name})")
        visitor.shot("after-overview-no-data")

    from datetime import timedelta

    from django.utils import timezone

    from metering.models import UsageRollup

    service = service_with_price(slug="moderation", calc_method=CalcMethod.REQUEST, unit_price="0.0005")
    yesterday = timezone.now().date() - timedelta(days=1)
    UsageRollup.objects.create(organization=organization, service=service, day=yesterday, events=4, cost=Decimal("1.25"))
    colour = f"s{charts.colour_of('moderation')}"
    for visitor in (desktop, phone):
        visitor.goto("/dashboard/")
        expect(visitor.page.locator('[data-testid="chart-one-day"]:visible')).to_contain_text("All of it on")
        assert visitor.page.locator(f"figure:visible rect.{colour}").count() == 1
        axe_check(visitor.page, context=f"overview with one day ({visitor.name})")
        visitor.shot("after-overview-one-day")
        visitor.goto(f"/dashboard/usage/?date_from={yesterday}&date_to={yesterday + timedelta(days=1)}")
        assert visitor.page.locator(f"figure:visible rect.{colour}").count() >= 1  # the same colour on the usage page
        axe_check(visitor.page, context=f"usage with one day ({visitor.name})")
