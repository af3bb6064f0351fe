"""Staff members in their groups, plans and subscriptions for the price-model and plan tests."""

from __future__ import annotations

import importlib

from django.apps import apps
from django.contrib.auth.models import Group
from django.utils import timezone
from rest_framework.test import APIClient

from metering.models import Plan, PlanAllowance, Subscription, SubscriptionStatus
from metering.services.positions import PositionKey, period_of, position_advance, position_grant, position_lock
from tests.conftest import jwt_client
from tests.factories import UserFactory

PRICES = "/api/v1/admin/prices/"
PLANS = "/api/v1/admin/plans/"
SERVICES = "/api/v1/services/"


def staff_groups() -> None:
    """The groups come from data migrations; transactional tests elsewhere truncate them, so re-run the
    newest one's function (idempotent; it adds every earlier group's rights too)."""
    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("metering.migrations.0012_staff_groups_plans").extend_groups(apps, None)


def staff_member(group: str):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def staff_api_client(group: str) -> APIClient:
    return jwt_client(staff_member(group))


def plan_create(slug: str = "team", *, fee: str = "20", included: dict | None = None) -> Plan:
    plan = Plan.objects.create(slug=slug, name=slug.title(), monthly_fee=fee)
    for service, quantity in (included or {}).items():
        PlanAllowance.objects.create(plan=plan, service=service, quantity=quantity)
    return plan


def subscribe(organization, plan, *, status: str = SubscriptionStatus.ACTIVE) -> Subscription:
    return Subscription.objects.create(organization=organization, plan=plan, status=status, period=period_of(timezone.now()))


def grant(organization, service, units: int) -> None:
    """This period's included units, as the subscription services grant them."""
    position_grant(organization_id=organization.pk, service_id=service.pk, period=period_of(timezone.now()), units=units)


def use(organization, service, units: int, *, test: bool = False) -> None:
    """Advance this period's usage position by `units`, as a charge does."""
    key = PositionKey(organization.pk, service.pk, period_of(timezone.now()), test)
    position_lock(key)
    position_advance(key, units=units)
