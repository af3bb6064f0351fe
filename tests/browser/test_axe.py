"""The axe-core helper itself: it finds what it should, reads it out, and passes a clean page."""

from __future__ import annotations

import pytest

from tests.browser.axe import axe_check, axe_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CLEAN = '<!doctype html><html lang="en"><head><title>Clean</title></head><body><main><h1>Clean</h1><label for="q">Search</label><input id="q"></main></body></html>'
BROKEN = '<!doctype html><html lang="en"><head><title>Broken</title></head><body><main><h1>Broken</h1><input id="q"><img src="data:,"></main></body></html>'


def test_axe_check_fails_on_serious_violations_and_names_them(visitor):
    visitor.page.set_content(BROKEN)
    found = {violation["id"] for violation in axe_violations(visitor.page)}
    assert {"label", "image-alt"} <= found
    with pytest.raises(pytest.fail.Exception) as failure:
        axe_check(visitor.page, context="the broken page")
    message = str(failure.value)
    assert "the broken page" in message
    assert "[critical] label" in message or "[serious] label" in message
    assert "at #q" in message


def test_axe_check_passes_a_clean_page_and_works_under_the_dashboard_csp(visitor, live_server):
    visitor.page.set_content(CLEAN)
    axe_check(visitor.page)
    # The login page is served with the dashboard's Content-Security-Policy (no 'unsafe-eval').
    response = visitor.goto("/login/")
    assert "default-src 'self'" in (response.headers.get("content-security-policy") or "")
    axe_check(visitor.page)
