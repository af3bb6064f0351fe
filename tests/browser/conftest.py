"""End-to-end tests in headless Chromium (Playwright), against pytest-django's live server.

The whole recharge chain runs for real: the sandbox checkout queues its webhook (Celery, eager
here), which POSTs over HTTP to the live server, whose webhook queues the settlement (eager too).
Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.browser.provision import system_chromium

SCREENSHOTS = Path(django_settings.BASE_DIR) / "test-output" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session. Fails (never skips) when none can be started."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `make test` installs requirements-dev.txt and provisions Chromium")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are still synchronous, so Django's async guard must not refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=system_chromium(), args=CHROMIUM_FLAGS, headless=True)
        except PlaywrightError as exc:
            pytest.fail(f"Chromium could not be started ({exc}). Run `make test`, which provisions it.")
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def eager_settlement(settings, live_server):
    """Run Celery tasks inline and point the sandbox provider at the live server."""
    from billing_site.celery import app

    # Celery's own override, undone after the test: reading `app.conf.task_always_eager` back would
    # read the Django setting just set, and "restoring" that left every later test eager.
    overridden, previous = "task_always_eager" in app.conf.changes, app.conf.changes.get("task_always_eager")
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.SITE_URL = live_server.url
    settings.SANDBOX_WEBHOOK_URL = live_server.url + "/api/v1/payments/webhooks/sandbox/"
    app.conf.task_always_eager = True
    yield
    if overridden:
        app.conf.task_always_eager = previous
    else:
        app.conf.changes.pop("task_always_eager", None)


class Visitor:
    """A browser context with a page, that records what a person would notice is wrong: requests
    to anything but the live server, CSP violations, JavaScript errors."""

    def __init__(self, browser, base_url: str, *, viewport=DESKTOP, name: str = "desktop"):
        self.base_url = base_url
        self.name = name
        self.context = browser.new_context(viewport=viewport, base_url=base_url, ignore_https_errors=False)
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("request", self._request)
        self.page.on("response", self._response)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _request(self, request) -> None:
        if not request.url.startswith((self.base_url, "data:", "about:")):
            self.problems.append(f"external request: {request.url}")

    def _response(self, response) -> None:
        # Chromium asks for /favicon.ico on pages without an icon link (the sandbox's, the admin's).
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")

    def _console(self, message) -> None:
        # Failed loads are reported (with their URL) by _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console error: {message.text}")

    def goto(self, path: str):
        response = self.page.goto(path)
        assert response is not None and response.ok, f"{path} answered {response and response.status}"
        return response

    def shot(self, name: str, *, page=None, full_page: bool = True) -> Path:
        """Save a screenshot of `page` (default: this visitor's) as <name>-<desktop|phone>.png."""
        path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}-{self.name}.png"
        (page or self.page).screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visitor_factory(browser, live_server):
    visitors: list[Visitor] = []

    def make(*, viewport=DESKTOP, name: str = "desktop", storage_state=None) -> Visitor:
        visitor = Visitor(browser, live_server.url, viewport=viewport, name=name)
        if storage_state:
            visitor.context.add_cookies(storage_state["cookies"])
        visitors.append(visitor)
        return visitor

    yield make
    problems = [problem for visitor in visitors for problem in visitor.problems]
    for visitor in visitors:
        visitor.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def visitor(visitor_factory) -> Visitor:
    return visitor_factory()
