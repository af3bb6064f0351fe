"""REST API for plans and the organization's subscription (docs/contract.md, docs/pricing.md "Plans")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site.api.fields import Amount
from billing_site.errors import InvalidRequest
from billing_site.money import money_str
from metering import subscription_selectors as selectors
from metering.models import Subscription
from metering.services import subscriptions
from metering.services.positions import period_bounds
from metering.services.subscriptions import ChangeOutcome


def _utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _price_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: money_str(value) if not isinstance(value, str | int | list) else value for name, value in entry.items()}


def plan_body(listing: selectors.PlanListing) -> dict[str, Any]:
    plan = listing.plan
    return {
        "slug": plan.slug,
        "name": plan.name,
        "description": plan.description,
        "monthly_fee": money_str(plan.monthly_fee),
        "included": listing.included,
        "prices": {slug: _price_json(entry) for slug, entry in listing.prices.items()},
    }


def subscription_body(subscription: Subscription) -> dict[str, Any]:
    """The subscription answer: its plan, status and period, what is scheduled, and its included
    quantities with this period's use of them."""
    start, end = period_bounds(subscription.period)
    return {
        "plan": subscription.plan.slug,
        "status": subscription.status,
        "period_start": _utc_iso(start),
        "period_end": _utc_iso(end),
        "next_plan": subscription.next_plan.slug if subscription.next_plan is not None else None,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "included": {
            item.service: {"quantity": item.quantity, "used": item.used, "left": item.left}
            for item in selectors.subscription_included(subscription=subscription)
        },
    }


SUBSCRIPTION_EXAMPLE = {
    "plan": "pro",
    "status": "active",
    "period_start": "2026-03-01T00:00:00Z",
    "period_end": "2026-04-01T00:00:00Z",
    "next_plan": None,
    "cancel_at_period_end": False,
    "included": {"gpt-4o": {"quantity": 1000000, "used": 250000, "left": 750000}},
}
SubscriptionOutput = inline_serializer(
    "Subscription",
    {
        "plan": serializers.CharField(),
        "status": serializers.ChoiceField(choices=["active", "past_due", "canceled"]),
        "period_start": serializers.DateTimeField(),
        "period_end": serializers.DateTimeField(),
        "next_plan": serializers.CharField(allow_null=True),
        "cancel_at_period_end": serializers.BooleanField(),
        "included": serializers.DictField(child=serializers.DictField(child=serializers.IntegerField())),
    },
)


class PlanListApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Plan",
                {
                    "slug": serializers.CharField(),
                    "name": serializers.CharField(),
                    "description": serializers.CharField(),
                    "monthly_fee": Amount(),
                    "included": serializers.DictField(child=serializers.IntegerField()),
                    "prices": serializers.DictField(child=serializers.DictField()),
                },
                many=True,
            )
        },
        tags=["services"],
        summary="The plans you may choose",
        description="Every public plan, cheapest first: its `monthly_fee`, the quantities it `included` each month per "
        "service slug (used first, at no cost), and its own `prices` per service slug (`model`, then the rates as "
        "`GET services/` shows them, with `tiers` or `package_size` where the price has them). A plan's prices and "
        "included quantities apply while its subscription is active.",
        examples=[
            OpenApiExample(
                "Plans",
                value=[
                    {
                        "slug": "pro",
                        "name": "Pro",
                        "description": "",
                        "monthly_fee": "49.000000000000",
                        "included": {"gpt-4o": 1000000},
                        "prices": {
                            "gpt-4o": {"model": "per_unit", "input_price": "2.000000000000", "output_price": "8.000000000000"}
                        },
                    }
                ],
                response_only=True,
            )
        ],
    )
    def get(self, request: Request) -> Response:
        return Response([plan_body(listing) for listing in selectors.plans_public()])


class _ManagersChange(BasePermission):
    """Anyone of the organization may read; owners and admins (signed in as themselves) may change."""

    message = IsOrganizationManager.message

    def has_permission(self, request: Any, view: Any) -> bool:
        return request.method in ("GET", "HEAD", "OPTIONS") or IsOrganizationManager().has_permission(request, view)


class SubscriptionApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, _ManagersChange]

    @extend_schema(
        responses={200: SubscriptionOutput},
        tags=["services"],
        summary="Your subscription",
        description="Your organization's subscription (active or past_due) with this period's use of its included "
        "quantities: `left` is what is still free this month while the subscription is active (0 while past_due), "
        "`used` is `quantity − left`. 404 when you have none.",
        examples=[OpenApiExample("Subscription", value=SUBSCRIPTION_EXAMPLE, response_only=True)],
    )
    def get(self, request: Request) -> Response:
        subscription = selectors.subscription_open_get(organization_id=self.tenant.organization.pk)
        if subscription is None:
            raise subscriptions.SubscriptionNotFound()
        return Response(subscription_body(subscription))

    @extend_schema(
        request=inline_serializer("SubscriptionInput", {"plan": serializers.CharField()}),
        responses={201: SubscriptionOutput, 200: SubscriptionOutput},
        tags=["services"],
        summary="Subscribe, or change plan",
        description="Without a subscription: subscribe to `plan` (201), paying its fee for the rest of the month pro "
        "rata to the second, with its included quantities pro rata. With one: a plan with a higher monthly fee is an "
        "upgrade at once (the unused part of the old fee is credited, the new fee charged pro rata); a lower or equal "
        "fee is a downgrade from the next period (`next_plan`); your current plan undoes a scheduled downgrade or "
        "cancellation. 402 when your balance cannot pay (nothing changes), or for an upgrade while this month's fee "
        "is unpaid. Owners and admins only.",
        examples=[OpenApiExample("Choose", value={"plan": "pro"}, request_only=True)],
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict) or set(body) - {"plan"}:
            raise InvalidRequest("The body must be a JSON object with `plan` only.", details={"plan": ["Send only `plan`."]})
        plan = body.get("plan")
        if not isinstance(plan, str) or not plan or "\x00" in plan or len(plan) > 80:
            raise InvalidRequest("`plan` must be a plan's slug.", details={"plan": ["This field is required."]})
        change = subscriptions.subscription_choose(organization_id=self.tenant.organization.pk, plan_slug=plan)
        code = status.HTTP_201_CREATED if change.outcome == ChangeOutcome.SUBSCRIBED else status.HTTP_200_OK
        return Response(subscription_body(_fresh(change.subscription)), status=code)

    @extend_schema(
        request=None,
        responses={200: SubscriptionOutput},
        tags=["services"],
        summary="Cancel at the end of the period",
        description="The subscription stays as it is until the end of the month, then ends (no further fee). "
        "`POST` your current plan before then to keep it. 404 when you have none. Owners and admins only.",
    )
    def delete(self, request: Request) -> Response:
        change = subscriptions.subscription_cancel(organization_id=self.tenant.organization.pk)
        return Response(subscription_body(_fresh(change.subscription)))


def _fresh(subscription: Subscription) -> Subscription:
    return Subscription.objects.select_related("plan", "next_plan").get(pk=subscription.pk)
