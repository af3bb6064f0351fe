"""The plan page: the plans on offer, the organization's subscription with its included quantities,
and its fees; owners and admins choose, upgrade, downgrade or cancel (docs/pricing.md, "Plans")."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from billing_site.errors import DomainError
from dashboard.context import dashboard_view, page
from dashboard.templatetags.dashboard import money_format
from metering import subscription_selectors as selectors
from metering.services import subscriptions
from metering.services.positions import period_bounds
from metering.services.subscriptions import ChangeOutcome
from payments import selectors as payment_selectors

CHARGES_SHOWN = 24


@never_cache
@require_GET
@dashboard_view()
def plan(request, current):
    organization_id = current.organization.pk
    subscription = selectors.subscription_open_get(organization_id=organization_id)
    wallet = payment_selectors.wallet_get(organization_id=organization_id)
    period_end = period_bounds(subscription.period)[1] if subscription is not None else None
    context = {
        "subscription": subscription,
        "included": selectors.subscription_included(subscription=subscription) if subscription is not None else [],
        "period_end": period_end,
        "plans": selectors.plans_public(),
        "charges": selectors.subscription_charges(organization_id=organization_id, limit=CHARGES_SHOWN),
        "currency": wallet.currency,
    }
    return page(request, "dashboard/plan.html", context)


@require_POST
@dashboard_view(managers_only=True)
def plan_choose(request, current):
    try:
        change = subscriptions.subscription_choose(
            organization_id=current.organization.pk, plan_slug=request.POST.get("plan", "")
        )
    except DomainError as error:
        messages.error(request, error.message)
    else:
        name = change.subscription.plan.name
        wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
        fee = money_format(change.subscription.plan.monthly_fee, wallet.currency)
        said = {
            ChangeOutcome.SUBSCRIBED: f"You are on the {name} plan. Its fee was charged for the rest of this month.",
            ChangeOutcome.UPGRADED: f"You are on the {name} plan from now on; the unused part of your old plan was credited.",
            ChangeOutcome.DOWNGRADE_SCHEDULED: f"Your plan changes at the end of this month ({fee} a month from then).",
            ChangeOutcome.SCHEDULE_UNDONE: f"You keep the {name} plan.",
            ChangeOutcome.CANCEL_SCHEDULED: "Your plan ends at the end of this month.",
            ChangeOutcome.UNCHANGED: f"You are already on the {name} plan.",
        }
        if change.outcome == ChangeOutcome.DOWNGRADE_SCHEDULED and change.subscription.next_plan is not None:
            said[change.outcome] = (
                f"You move to the {change.subscription.next_plan.name} plan at the end of this month; until then you keep {name}."
            )
        messages.success(request, said[change.outcome])
    return redirect("dashboard:plan")


@require_POST
@dashboard_view(managers_only=True)
def plan_cancel(request, current):
    try:
        subscriptions.subscription_cancel(organization_id=current.organization.pk)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Your plan ends at the end of this month. Choose it again before then to keep it.")
    return redirect("dashboard:plan")
