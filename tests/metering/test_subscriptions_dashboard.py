"""The dashboard's plan page and the past_due banner (server-rendered)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from metering.models import Subscription, SubscriptionStatus
from metering.services import subscriptions
from tests.factories import service_with_price, wallet_fund
from tests.metering.subscriptions_world import plan_make

pytestmark = pytest.mark.django_db
PLAN_PAGE = "/dashboard/plan/"


def _web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def plans():
    ping = service_with_price(slug="ping", unit_price="0.01")
    return {"basic": plan_make("basic", "10", included={ping: 1_000}), "pro": plan_make("pro", "50", included={ping: 9_000})}


def test_the_plan_page_lists_plans_and_lets_an_owner_subscribe_and_cancel(owner, organization, plans):
    wallet_fund(organization, "100")
    web = _web(owner)
    page = web.get(PLAN_PAGE)
    assert page.status_code == 200
    assert b'data-testid="no-subscription"' in page.content and b'data-testid="choose-basic"' in page.content

    answer = web.post("/dashboard/plan/choose/", {"plan": "basic"}, follow=True)
    assert answer.status_code == 200
    assert b"You are on the Basic plan" in answer.content
    assert b'data-testid="included-table"' in answer.content and b"Upgrade now" in answer.content
    answer = web.post("/dashboard/plan/cancel/", follow=True)
    assert b'data-testid="cancel-scheduled"' in answer.content
    assert Subscription.objects.get(organization=organization).cancel_at_period_end


def test_a_refused_choice_says_why_and_changes_nothing(owner, organization, plans):
    web = _web(owner)  # an empty wallet
    answer = web.post("/dashboard/plan/choose/", {"plan": "pro"}, follow=True)
    assert b"balance is too low" in answer.content
    assert not Subscription.objects.filter(organization=organization).exists()


def test_members_see_the_plan_but_cannot_change_it(member, organization, plans):
    web = _web(member)
    page = web.get(PLAN_PAGE)
    assert page.status_code == 200 and b'data-testid="choose-basic"' not in page.content
    assert web.post("/dashboard/plan/choose/", {"plan": "basic"}).status_code == 403
    assert web.post("/dashboard/plan/cancel/").status_code == 403
    assert not Subscription.objects.filter(organization=organization).exists()


def test_a_past_due_subscription_shows_a_banner_on_every_page_with_a_link_to_recharge(owner, member, organization, plans):
    wallet_fund(organization, "10")
    subscriptions.subscription_choose(
        organization_id=organization.pk, plan_slug="basic", now=timezone.now().replace(day=1) - timedelta(days=2)
    )
    web = _web(owner)
    assert b"past-due-banner" not in web.get("/dashboard/").content
    subscriptions.subscriptions_renew()  # the wallet holds less than the month's fee
    assert Subscription.objects.get(organization=organization).status == SubscriptionStatus.PAST_DUE
    for path in ("/dashboard/", "/dashboard/usage/", "/dashboard/pricing/", PLAN_PAGE, "/dashboard/team/"):
        content = web.get(path).content.decode()
        assert 'data-testid="past-due-banner"' in content, path
        assert 'href="/dashboard/billing/"' in content.split('data-testid="past-due-banner"', 1)[1].split("</div>", 2)[1]
    assert b'data-testid="past-due-banner"' in _web(member).get("/dashboard/").content
    # Another organization's pages show nothing of it.
    from tests.factories import organization_create

    other = organization_create(name="Globex")
    assert b"past-due-banner" not in _web(other.memberships.get().user).get("/dashboard/").content
