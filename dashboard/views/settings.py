"""Organization settings (alerts, their signing secret) and the organization switcher."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from accounts import services as account_services
from billing_site.errors import DomainError
from dashboard import forms, selectors, services
from dashboard.context import dashboard_view, organization_choose, page
from dashboard.templatetags.dashboard import plain_amount
from payments import selectors as payment_selectors
from payments import tasks as payment_tasks

logger = logging.getLogger(__name__)
DELIVERIES_SHOWN = 10


@require_http_methods(["GET", "POST"])
@dashboard_view()
def settings_page(request, current):
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    form = _alert_form(wallet, request.POST or None)
    if request.method == "POST":
        if not current.is_manager:
            return page(request, "dashboard/403.html", status=403)
        if form.is_valid():
            try:
                services.wallet_alerts_update(organization_id=current.organization.pk, **form.cleaned_data)
            except DomainError as error:
                form.add_error(None, error.message)
            else:
                messages.success(request, "Alert settings saved.")
                return redirect("dashboard:settings")
    return _settings_page(request, current, wallet=wallet, form=form)


def _alert_form(wallet, data=None) -> forms.AlertSettingsForm:
    initial = {"low_balance_threshold": plain_amount(wallet.low_balance_threshold), "alert_webhook_url": wallet.alert_webhook_url}
    return forms.AlertSettingsForm(data, initial=initial)


def _billing_form(organization, data=None) -> forms.BillingDetailsForm:
    initial = {
        "billing_name": organization.billing_name,
        "billing_address": organization.billing_address,
        "tax_id": organization.tax_id,
    }
    return forms.BillingDetailsForm(data, initial=initial)


def _settings_page(request, current, *, wallet=None, form=None, rename_form=None, zone_form=None, billing_form=None):
    wallet = wallet or payment_selectors.wallet_get(organization_id=current.organization.pk)
    form = form or _alert_form(wallet)
    context = {
        "form": form,
        "wallet": wallet,
        "rename_form": rename_form or forms.OrganizationRenameForm(initial={"organization": current.organization.name}),
        "billing_form": billing_form or _billing_form(current.organization),
        "zone_form": zone_form or forms.TimeZoneForm(initial={"time_zone": current.user.time_zone}),
        "deliveries": selectors.alert_delivery_list(organization_id=current.organization.pk)[:DELIVERIES_SHOWN]
        if current.is_manager
        else [],
    }
    failed = any(f is not None and f.errors for f in (form, rename_form, zone_form, billing_form))
    return page(request, "dashboard/settings.html", context, status=400 if failed else 200)


@require_POST
@dashboard_view(managers_only=True)
def organization_rename(request, current):
    rename_form = forms.OrganizationRenameForm(request.POST)
    if rename_form.is_valid():
        try:
            account_services.organization_rename(
                organization=current.organization, name=rename_form.cleaned_data["organization"], actor=request.user
            )
        except DomainError as error:
            forms.service_error_add(rename_form, error)
        else:
            messages.success(request, f"The organization is now called {current.organization.name}.")
            return redirect("dashboard:settings")
    return _settings_page(request, current, rename_form=rename_form)


@require_POST
@dashboard_view(managers_only=True)
def billing_details_update(request, current):
    """Who receipts and statements are made out to; a refusal changes nothing and says why, by field."""
    billing_form = _billing_form(current.organization, request.POST)
    if billing_form.is_valid():
        try:
            account_services.organization_billing_update(
                organization=current.organization, actor=request.user, **billing_form.cleaned_data
            )
        except DomainError as error:
            forms.service_errors_add(billing_form, error)
        else:
            messages.success(request, "Billing details saved: receipts and statements print them from now on.")
            return redirect("dashboard:settings")
    return _settings_page(request, current, billing_form=billing_form)


@require_POST
@dashboard_view()
def time_zone_set(request, current):
    zone_form = forms.TimeZoneForm(request.POST)
    if zone_form.is_valid():
        account_services.user_time_zone_set(user=request.user, time_zone=zone_form.cleaned_data["time_zone"])
        messages.success(request, f"Times are now shown in {zone_form.cleaned_data['time_zone']}.")
        return redirect("dashboard:settings")
    return _settings_page(request, current, zone_form=zone_form)


@require_POST
@dashboard_view(managers_only=True)
def alert_test_send(request, current):
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    if not wallet.alert_webhook_url:
        messages.error(request, "Set an alert webhook URL first.")
        return redirect("dashboard:settings")
    try:
        payment_tasks.alert_webhook_test.delay(current.organization.pk)
    except Exception:
        logger.exception("could not queue the test alert of organization %s", current.organization.pk)
        messages.error(request, "The test alert could not be queued. Try again in a minute.")
        return redirect("dashboard:settings")
    messages.success(request, "Test alert sent. Its result appears in the delivery log below (refresh in a few seconds).")
    return redirect("dashboard:settings")


@require_POST
@dashboard_view(managers_only=True)
def alert_secret_rotate(request, current):
    services.wallet_alert_secret_rotate(organization_id=current.organization.pk)
    messages.success(request, "New signing secret in use: alerts are signed with it from now on. Update your receiver.")
    return redirect("dashboard:settings")


@require_POST
@dashboard_view()
def organization_switch(request, current):
    """Remember the chosen organization in the session; 404 for one the user does not belong to."""
    membership = organization_choose(request, request.POST.get("organization", ""))
    messages.info(request, f"Now viewing {membership.organization.name}.")
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = ""
    # Object pages (a payment, a key) belong to the previous organization: go to the section's list.
    return redirect(_section(target) or "dashboard:overview")


SECTION_LISTS = {
    "usage": "usage",
    "keys": "keys",
    "billing": "billing",
    "payments": "billing",
    "team": "team",
    "settings": "settings",
    "pricing": "pricing",
}


def _section(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "dashboard" and parts[1] in SECTION_LISTS:
        return f"/dashboard/{SECTION_LISTS[parts[1]]}/"
    return ""
