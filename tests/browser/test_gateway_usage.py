"""A call through the AI gateway, as its customer then sees it: the real `openai` SDK against the real gateway
(tests/gateway/gateway_server.py) and a fake upstream that is a real HTTP server, then the usage page at
desktop and phone width, with axe-core."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from accounts import services as account_services
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_server import GatewayServer
from tests.gateway.world import world_build

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def gateway_and_upstream(django_db_blocker) -> Iterator[tuple[GatewayServer, FakeUpstream]]:
    server = GatewayServer().start()
    with FakeUpstream() as fake:
        yield server, fake
    with django_db_blocker.unblock():
        server.stop()


def test_a_gateway_call_shows_its_model_and_outcome_on_the_usage_page(visitor_factory, live_server, gateway_and_upstream):
    gateway, fake = gateway_and_upstream
    world = world_build(upstreams=[fake])
    owner = world.organization.memberships.get().user
    client = world.client(gateway)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
    fake.push(omit_usage=True)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True))
    account_services.api_key_create(organization=world.organization, name="unused", created_by=owner)

    desktop = visitor_factory()
    log_in(desktop, owner.email)
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    for visitor in (desktop, phone):
        page = visitor.page
        visitor.goto("/dashboard/usage/")
        table = page.get_by_test_id("usage-table")
        expect(table).to_contain_text("gpt-4o-mini")
        outcomes = table.get_by_test_id("outcome")
        expect(outcomes).to_have_text(["No usage report", "Completed"])  # newest first
        expect(table).to_contain_text("estimated")
        visitor.shot("gateway-usage")
        axe_check(page, context=f"usage with gateway calls ({visitor.name})")
