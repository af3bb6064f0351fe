"""Organization settings (alerts, their signing secret) and the organization switcher."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from billing_site.errors import DomainError
from dashboard import forms, services
from dashboard.context import dashboard_view, organization_choose, page
from dashboard.templatetags.dashboard import plain_amount
from payments import selectors as payment_selectors


@require_http_methods(["GET", "POST"])
@dashboard_view()
def settings_page(request, current):
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    initial = {"low_balance_threshold": plain_amount(wallet.low_balance_threshold), "alert_webhook_url": wallet.alert_webhook_url}
    form = forms.AlertSettingsForm(request.POST or None, initial=initial)
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
    return page(request, "dashboard/settings.html", {"form": form, "wallet": wallet}, status=400 if form.errors else 200)


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
