"""Credits (the organization's grants, with a notice before they expire) and budgets (spend limits per
day, week or month, with their progress; owners and admins create, change and delete them)."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts import selectors as account_selectors
from billing_site.errors import DomainError, NotFound
from billing_site.money import ZERO, plain_amount
from dashboard import forms
from dashboard.context import dashboard_view, page
from payments import budgets as budget_services
from payments import selectors as payment_selectors

GRANTS_SHOWN = 100


@require_GET
@dashboard_view()
def credits(request, current):
    organization_id = current.organization.pk
    now = timezone.now()
    grants = list(payment_selectors.grant_list(organization_id=organization_id)[:GRANTS_SHOWN])
    rows = [{"grant": grant, "expires_soon": payment_selectors.grant_expires_soon(grant, now=now)} for grant in grants]
    context = {
        "rows": rows,
        "expiring": [row["grant"] for row in rows if row["expires_soon"]],
        "live_total": sum((g.remaining for g in grants if g.expires_at is None or g.expires_at > now), start=ZERO),
        "currency": payment_selectors.wallet_get(organization_id=organization_id).currency,
        "now": now,
    }
    return page(request, "dashboard/credits.html", context)


def _live_keys(current):
    now = timezone.now()
    return [
        key
        for key in account_selectors.api_key_list(organization=current.organization)
        if key.revoked_at is None and key.mode == "live" and (key.expires_at is None or key.expires_at > now)
    ]


@never_cache
@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def budgets(request, current):
    form = forms.BudgetCreateForm(request.POST or None, api_keys=_live_keys(current))
    if request.method == "POST" and form.is_valid():
        try:
            budget_services.budget_create(
                organization_id=current.organization.pk,
                api_key_id=form.api_key_id(),
                period=form.cleaned_data["period"],
                amount=form.cleaned_data["amount"],
                mode=form.cleaned_data["mode"],
            )
        except DomainError as error:
            _errors_add(form, error)
        else:
            messages.success(request, "The budget is set: usage counts against it from now on.")
            return redirect("dashboard:budgets")
    context = {
        "form": form,
        "statuses": budget_services.budget_list(organization_id=current.organization.pk),
        "currency": payment_selectors.wallet_get(organization_id=current.organization.pk).currency,
    }
    return page(request, "dashboard/budgets.html", context, status=400 if form.errors else 200)


def _errors_add(form, error: DomainError) -> None:
    """A service's refusal, each message under the field it names (or above the form)."""
    fields = {"api_key": "scope"}
    if not error.details:
        form.add_error(None, error.message)
    for name, message in error.details.items():
        target = fields.get(name, name)
        form.add_error(target if target in form.fields else None, message)


def _budget(current, budget_id: int):
    try:
        return budget_services.budget_get(organization_id=current.organization.pk, budget_id=budget_id)
    except NotFound as exc:
        raise Http404 from exc


@never_cache
@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def budget_edit(request, current, budget_id: int):
    budget = _budget(current, budget_id)
    initial = {"amount": plain_amount(budget.amount), "mode": budget.mode}
    form = forms.BudgetEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            budget_services.budget_update(budget=budget, amount=form.cleaned_data["amount"], mode=form.cleaned_data["mode"])
        except DomainError as error:
            _errors_add(form, error)
        else:
            messages.success(request, "The budget was changed: the next usage is checked against it.")
            return redirect("dashboard:budgets")
    context = {
        "form": form,
        "status": budget_services.budget_status(budget=budget),
        "currency": payment_selectors.wallet_get(organization_id=current.organization.pk).currency,
    }
    return page(request, "dashboard/budget_edit.html", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def budget_delete(request, current, budget_id: int):
    budget = _budget(current, budget_id)
    if request.method == "POST":
        budget_services.budget_delete(budget=budget)
        messages.success(request, "The budget was deleted: usage is no longer limited by it.")
        return redirect("dashboard:budgets")
    return page(request, "dashboard/budget_delete.html", {"budget": budget})
