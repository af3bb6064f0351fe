"""The gateway's back office in headless Chromium: a billing admin adds an upstream with its key, the
key never comes back into the page, and a model route is added with its upstreams; axe-core passes."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from gateway.crypto import upstream_key_decrypt
from gateway.models import ModelRoute, Upstream
from metering.models import CalcMethod
from tests.browser.axe import axe_check
from tests.browser.test_backoffice import _admin_log_in
from tests.factories import UserFactory, service_with_price
from tests.gateway.config_helpers import staff_groups

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECRET = "sk-browser-typed-0123456789"


def test_billing_admin_adds_an_upstream_whose_key_never_comes_back_then_a_route(visitor, live_server):
    service_with_price(slug="gpt-4o-mini", calc_method=CalcMethod.TOKENS, input_price="0.15", output_price="0.60")
    staff_groups()
    from django.contrib.auth.models import Group

    UserFactory(email="billing@tollgate.test", is_staff=True).groups.add(Group.objects.get(name="Billing admins"))
    _admin_log_in(visitor, "billing@tollgate.test")
    page = visitor.page

    visitor.goto("/admin/gateway/upstream/add/")
    axe_check(page, context="upstream add form")
    page.get_by_label("Name", exact=True).fill("openai")
    page.get_by_label("Base URL").fill("https://api.openai.com/v1/")
    key_box = page.get_by_label("API key", exact=True)
    expect(key_box).to_have_attribute("type", "password")
    expect(key_box).to_have_attribute("autocomplete", "new-password")
    key_box.fill(SECRET)
    visitor.shot("admin-gateway-upstream-add")
    page.get_by_role("button", name="Save and continue editing").click()
    page.wait_for_url("**/admin/gateway/upstream/*/change/")

    upstream = Upstream.objects.get()
    assert upstream.base_url == "https://api.openai.com/v1"
    assert upstream_key_decrypt(upstream.api_key_encrypted) == SECRET
    expect(page.get_by_label("API key", exact=True)).to_have_value("")
    assert SECRET not in page.content() and upstream.api_key_encrypted not in page.content()
    assert "Leave empty to keep the current key" in page.content()
    axe_check(page, context="upstream change form")
    visitor.shot("admin-gateway-upstream-change")

    # Saved again without touching the key box: the key stays.
    page.get_by_label("Timeout seconds", exact=True).fill("20")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url("**/admin/gateway/upstream/")
    upstream.refresh_from_db()
    assert upstream.timeout_seconds == 20 and upstream_key_decrypt(upstream.api_key_encrypted) == SECRET

    visitor.goto("/admin/gateway/modelroute/add/")
    axe_check(page, context="model route add form")
    page.get_by_label("Model", exact=True).fill("gpt-4o-mini")
    page.locator("#id_service").select_option(label="gpt-4o-mini")
    page.get_by_label("Upstream", exact=True).first.select_option(label="openai")
    page.get_by_label("Upstream model", exact=True).first.fill("gpt-4o-mini-2024-07-18")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url("**/admin/gateway/modelroute/")
    expect(page.locator("#result_list")).to_contain_text("openai (gpt-4o-mini-2024-07-18)")
    route = ModelRoute.objects.get()
    assert [link.upstream.name for link in route.upstreams.all()] == ["openai"]
    axe_check(page, context="model route list")
    visitor.shot("admin-gateway-routes")
    assert not visitor.problems, visitor.problems
