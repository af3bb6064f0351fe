"""Reads for plans and subscriptions (docs/pricing.md, "Plans")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from metering.models import (
    Plan,
    PlanAllowance,
    Price,
    Subscription,
    SubscriptionCharge,
    SubscriptionStatus,
    UsagePosition,
)
from metering.pricing import prices_listed


@dataclass(frozen=True, slots=True)
class Included:
    """One service a plan includes: its monthly quantity, and this period's use of the free units."""

    service: str
    name: str
    quantity: int
    used: int
    left: int

    @property
    def left_percent(self) -> int:
        return 0 if self.quantity <= 0 else min(100, round(100 * self.left / self.quantity))


@dataclass(frozen=True, slots=True)
class PlanListing:
    plan: Plan
    included: dict[str, int]  # service slug → quantity per month
    prices: dict[str, dict[str, Any]]  # service slug → the plan's price in force


def plan_prices(*, plan: Plan, at: datetime | None = None) -> dict[str, dict[str, Any]]:
    """service slug → the plan's own price in force at `at` (now): its model, its rates (per-unit
    fields, or a package's price), and its tiers or package size where it has them."""
    rows = (
        Price.objects.filter(plan=plan, effective_from__lte=at or timezone.now())
        .select_related("service")
        .order_by("service_id", "-effective_from", "-id")
        .distinct("service_id")
    )
    listed: dict[str, dict[str, Any]] = {}
    for price in rows:
        entry: dict[str, Any] = {"model": price.model, **prices_listed(price.service.calc_method, price)}
        if price.tiers is not None:
            entry["tiers"] = price.tiers
        if price.package_size is not None:
            entry["package_size"] = price.package_size
        listed[price.service.slug] = entry
    return listed


def plans_public() -> list[PlanListing]:
    """The plans a customer may choose, cheapest first, with what each includes and its own prices."""
    plans = list(Plan.objects.filter(public=True).order_by("monthly_fee", "slug"))
    allowances: dict[int, dict[str, int]] = {plan.pk: {} for plan in plans}
    for allowance in PlanAllowance.objects.filter(plan__in=plans).select_related("service").order_by("service__slug"):
        allowances[allowance.plan_id][allowance.service.slug] = allowance.quantity
    return [PlanListing(plan=plan, included=allowances[plan.pk], prices=plan_prices(plan=plan)) for plan in plans]


def subscription_open_get(*, organization_id: int) -> Subscription | None:
    """The organization's subscription that is not canceled (active or past_due), or None."""
    return (
        Subscription.objects.select_related("plan", "next_plan")
        .filter(organization_id=organization_id)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    )


def subscription_included(*, subscription: Subscription) -> list[Included]:
    """Per service the plan includes: `quantity` a month; `left` = the free units left this period
    (free_until − used of the live usage position, never below 0) while active, 0 otherwise; `used` =
    quantity − left (never below 0: an upgrade can leave more free units than the new plan's quantity)."""
    allowances = list(
        PlanAllowance.objects.filter(plan_id=subscription.plan_id).select_related("service").order_by("service__slug")
    )
    positions = {
        position.service_id: position
        for position in UsagePosition.objects.filter(
            organization_id=subscription.organization_id,
            period=subscription.period,
            test=False,
            service_id__in=[allowance.service_id for allowance in allowances],
        )
    }
    active = subscription.status == SubscriptionStatus.ACTIVE
    included = []
    for allowance in allowances:
        position = positions.get(allowance.service_id)
        left = max(0, position.free_until - position.used) if active and position is not None else 0
        included.append(
            Included(
                service=allowance.service.slug,
                name=allowance.service.name,
                quantity=allowance.quantity,
                used=max(0, allowance.quantity - left),
                left=left,
            )
        )
    return included


def subscription_charges(*, organization_id: int, limit: int = 50) -> list[SubscriptionCharge]:
    """The organization's subscription fees and credits, newest first."""
    charges = SubscriptionCharge.objects.filter(organization_id=organization_id).select_related("plan")
    return list(charges.order_by("-created_at", "-id")[:limit])


def past_due_exists(*, organization_id: int) -> bool:
    """Whether the organization's plan fee is unpaid (the dashboard's banner, the collection after a credit)."""
    return Subscription.objects.filter(organization_id=organization_id, status=SubscriptionStatus.PAST_DUE).exists()
