"""Reads for plans and subscriptions (docs/pricing.md, "Plans")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from metering.models import (
    Plan,
    PlanAllowance,
    Price,
    Subscription,
    SubscriptionCharge,
    SubscriptionStatus,
)
from metering.pricing import prices_listed
from metering.selectors import plan_prices, plan_usage_left


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


def _price_listed(price: Price) -> dict[str, Any]:
    """A plan price as customers read it: its model, its rates (per-unit fields, or a package's price),
    and its tiers or package size where it has them."""
    entry: dict[str, Any] = {"model": price.model, **prices_listed(price.service.calc_method, price)}
    if price.tiers is not None:
        entry["tiers"] = price.tiers
    if price.package_size is not None:
        entry["package_size"] = price.package_size
    return entry


def plans_public() -> list[PlanListing]:
    """The plans a customer may choose, cheapest first, with what each includes and its own prices in
    force now (one not yet in force is not shown)."""
    plans = list(Plan.objects.filter(public=True).order_by("monthly_fee", "slug"))
    allowances: dict[int, dict[str, int]] = {plan.pk: {} for plan in plans}
    for allowance in PlanAllowance.objects.filter(plan__in=plans).select_related("service").order_by("service__slug"):
        allowances[allowance.plan_id][allowance.service.slug] = allowance.quantity
    now = timezone.now()
    prices = plan_prices(plan_ids=[plan.pk for plan in plans], at=now)
    return [
        PlanListing(
            plan=plan,
            included=allowances[plan.pk],
            prices={slug: _price_listed(row) for slug, row in prices[plan.pk].items() if row.effective_from <= now},
        )
        for plan in plans
    ]


def subscription_open_get(*, organization_id: int) -> Subscription | None:
    """The organization's subscription that is not canceled (active or past_due), or None."""
    return (
        Subscription.objects.select_related("plan", "next_plan")
        .filter(organization_id=organization_id)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    )


def subscription_included(*, subscription: Subscription) -> list[Included]:
    """Per service the plan includes, by slug: its monthly `quantity`, and this month's `used` and `left`
    as `metering.selectors.plan_usage_left` counts them (the one rule the pricing page and `services/`
    read too)."""
    figures = plan_usage_left(organization_id=subscription.organization_id)
    allowances = PlanAllowance.objects.filter(plan_id=subscription.plan_id).select_related("service").order_by("service__slug")
    return [
        Included(
            service=allowance.service.slug,
            name=allowance.service.name,
            quantity=allowance.quantity,
            used=figures[allowance.service_id].used,
            left=figures[allowance.service_id].left,
        )
        for allowance in allowances
        if allowance.service_id in figures
    ]


def subscription_charges(*, organization_id: int, limit: int = 50) -> list[SubscriptionCharge]:
    """The organization's subscription fees and credits, newest first."""
    charges = SubscriptionCharge.objects.filter(organization_id=organization_id).select_related("plan")
    return list(charges.order_by("-created_at", "-id")[:limit])


def past_due_exists(*, organization_id: int) -> bool:
    """Whether the organization's plan fee is unpaid (the dashboard's banner, the collection after a credit)."""
    return Subscription.objects.filter(organization_id=organization_id, status=SubscriptionStatus.PAST_DUE).exists()
