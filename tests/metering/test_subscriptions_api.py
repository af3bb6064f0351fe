"""GET plans/, GET/POST/DELETE subscription/: shapes, roles, error paths and tenant isolation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import Subscription, SubscriptionStatus
from metering.services.positions import PositionKey, period_bounds, period_of, position_advance
from tests.conftest import key_client
from tests.factories import service_with_price, wallet_fund
from tests.metering.subscriptions_world import balance, plan_make

pytestmark = pytest.mark.django_db
PLANS = "/api/v1/plans/"
SUBSCRIPTION = "/api/v1/subscription/"


@pytest.fixture
def ping():
    return service_with_price(slug="ping", unit_price="0.01")


@pytest.fixture
def plans(ping):
    return {
        "basic": plan_make("basic", "10", included={ping: 1_000}, prices={ping: "0.005"}),
        "pro": plan_make("pro", "50", included={ping: 10_000}, prices={ping: "0.002"}),
        "hidden": plan_make("hidden", "1", public=False),
    }


def _subscribe(client, plan: str = "basic"):
    return client.post(SUBSCRIPTION, {"plan": plan}, format="json")


def test_plans_lists_the_public_plans_with_fee_included_and_prices(owner_client, plans):
    response = owner_client.get(PLANS)
    assert response.status_code == 200
    assert response.json() == [
        {
            "slug": "basic",
            "name": "Basic",
            "description": "",
            "monthly_fee": "10.000000000000",
            "included": {"ping": 1000},
            "prices": {"ping": {"model": "per_unit", "unit_price": "0.005000000000"}},
        },
        {
            "slug": "pro",
            "name": "Pro",
            "description": "",
            "monthly_fee": "50.000000000000",
            "included": {"ping": 10000},
            "prices": {"ping": {"model": "per_unit", "unit_price": "0.002000000000"}},
        },
    ]


def test_subscribe_answers_the_subscription_and_its_included_quantities(owner_client, organization, plans, ping):
    wallet_fund(organization, "100")
    response = _subscribe(owner_client)
    assert response.status_code == 201, response.content
    body = response.json()
    start, end = period_bounds(period_of(timezone.now()))
    granted = body["included"]["ping"]["left"]
    assert 0 < granted <= 1000
    assert body == {
        "plan": "basic",
        "status": "active",
        "period_start": start.isoformat().replace("+00:00", "Z"),
        "period_end": end.isoformat().replace("+00:00", "Z"),
        "next_plan": None,
        "cancel_at_period_end": False,
        "included": {"ping": {"quantity": 1000, "used": 1000 - granted, "left": granted}},
    }
    # Usage moves `used` and `left` (read live from the usage position).
    position_advance(PositionKey(organization.pk, ping.pk, period_of(timezone.now()), False), units=7)
    assert owner_client.get(SUBSCRIPTION).json()["included"]["ping"]["left"] == granted - 7


def test_upgrade_downgrade_undo_and_cancel_through_the_api(owner_client, organization, plans):
    wallet_fund(organization, "500")
    _subscribe(owner_client)
    upgraded = _subscribe(owner_client, "pro")
    assert upgraded.status_code == 200 and upgraded.json()["plan"] == "pro"
    downgrade = _subscribe(owner_client, "basic")
    assert (downgrade.json()["plan"], downgrade.json()["next_plan"]) == ("pro", "basic")
    undone = _subscribe(owner_client, "pro")
    assert undone.json()["next_plan"] is None
    canceled = owner_client.delete(SUBSCRIPTION)
    assert canceled.status_code == 200
    assert (canceled.json()["status"], canceled.json()["cancel_at_period_end"]) == ("active", True)


def test_members_may_read_but_not_change(member_client, owner_client, organization, plans):
    wallet_fund(organization, "100")
    _subscribe(owner_client)
    assert member_client.get(SUBSCRIPTION).status_code == 200
    assert member_client.get(PLANS).status_code == 200
    for response in (_subscribe(member_client, "pro"), member_client.delete(SUBSCRIPTION)):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
    assert Subscription.objects.get(organization=organization).plan == plans["basic"]
    assert not Subscription.objects.get(organization=organization).cancel_at_period_end


def test_admins_may_change(org_admin_client, organization, plans):
    wallet_fund(organization, "100")
    assert _subscribe(org_admin_client).status_code == 201
    assert org_admin_client.delete(SUBSCRIPTION).status_code == 200


def test_an_api_key_may_read_but_not_change(live_client, owner_client, organization, plans):
    wallet_fund(organization, "100")
    assert _subscribe(live_client).status_code == 403
    _subscribe(owner_client)
    assert live_client.get(SUBSCRIPTION).status_code == 200


@pytest.mark.parametrize("plan", ["nope", "hidden"])
def test_an_unknown_or_private_plan_is_404(owner_client, organization, plans, plan):
    wallet_fund(organization, "100")
    response = _subscribe(owner_client, plan)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert not Subscription.objects.filter(organization=organization).exists()


@pytest.mark.parametrize("body", [{}, {"plan": ""}, {"plan": 3}, {"plan": None}, {"plan": "basic", "extra": 1}, ["basic"]])
def test_bad_input_is_400(owner_client, plans, body):
    response = owner_client.post(SUBSCRIPTION, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_request"


def test_an_unaffordable_subscription_is_402_and_creates_nothing(owner_client, organization, plans):
    wallet_fund(organization, "0.01")
    response = _subscribe(owner_client, "pro")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_balance"
    assert not Subscription.objects.filter(organization=organization).exists()
    assert balance(organization) == Decimal("0.01")


def test_an_upgrade_while_past_due_is_402(owner_client, organization, plans):
    wallet_fund(organization, "100")
    _subscribe(owner_client)
    subscription = Subscription.objects.get(organization=organization)
    subscription.status = SubscriptionStatus.PAST_DUE
    subscription.save()
    response = _subscribe(owner_client, "pro")
    assert response.status_code == 402
    body = owner_client.get(SUBSCRIPTION).json()
    assert (body["plan"], body["status"], body["included"]["ping"]["left"]) == ("basic", "past_due", 0)
    assert body["included"]["ping"]["used"] == 1000


def test_without_a_subscription_get_and_delete_are_404(owner_client, plans):
    for response in (owner_client.get(SUBSCRIPTION), owner_client.delete(SUBSCRIPTION)):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_tenant_sees_and_changes_only_its_own_subscription(
    owner_client, other_owner_client, organization, other_organization, plans
):
    wallet_fund(organization, "100")
    _subscribe(owner_client)
    assert other_owner_client.get(SUBSCRIPTION).status_code == 404
    assert other_owner_client.delete(SUBSCRIPTION).status_code == 404
    assert not Subscription.objects.get(organization=organization).cancel_at_period_end
    wallet_fund(other_organization, "100")
    assert _subscribe(other_owner_client, "pro").status_code == 201
    assert owner_client.get(SUBSCRIPTION).json()["plan"] == "basic"
    # Naming the other organization in the header does not reach it either.
    assert owner_client.get(SUBSCRIPTION, HTTP_X_ORGANIZATION=other_organization.slug).status_code == 404


def test_anonymous_is_401(api_client, plans):
    assert api_client.get(PLANS).status_code == 401
    assert api_client.post(SUBSCRIPTION, {"plan": "basic"}, format="json").status_code == 401
    assert key_client("tg_live_nope").get(SUBSCRIPTION).status_code == 401
