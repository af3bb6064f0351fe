"""API keys: create (the secret is shown once), list, revoke with confirmation."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import ApiKey
from billing_site.errors import DomainError
from dashboard import forms
from dashboard.context import dashboard_view, page
from gateway import selectors as gateway_selectors


@never_cache
@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def keys(request, current):
    models = [route.model for route in gateway_selectors.route_list_for_key(allowed_models=[])]
    form = forms.ApiKeyCreateForm(request.POST or None, models=models)
    if request.method == "POST" and form.is_valid():
        try:
            created = account_services.api_key_create(
                organization=current.organization,
                name=form.cleaned_data["name"],
                mode=form.cleaned_data["mode"],
                created_by=request.user,
                expires_at=form.expires_at(),
                spend_cap=form.cleaned_data["spend_cap"],
                allowed_models=form.cleaned_data["allowed_models"],
                rpm_limit=form.cleaned_data["rpm_limit"],
                tpm_limit=form.cleaned_data["tpm_limit"],
                max_concurrent_streams=form.cleaned_data["max_concurrent_streams"],
            )
        except DomainError as error:
            forms.service_error_add(form, error)
        else:
            # Redirect-after-POST, so a refresh cannot create a second key. The secret rides in the
            # session only until the next page shows it once (key_created pops it).
            request.session[_secret_session_key(created.api_key.pk)] = created.secret
            return redirect("dashboard:key_created", key_id=created.api_key.pk)
    context = {"form": form, "keys": account_selectors.api_key_list(organization=current.organization), "now": timezone.now()}
    return page(request, "dashboard/keys.html", context, status=400 if form.errors else 200)


def _secret_session_key(key_id: int) -> str:
    return f"new_api_key_secret:{key_id}"


def _api_key(current, key_id: int) -> ApiKey:
    try:
        return account_selectors.api_key_get(organization=current.organization, api_key_id=key_id)
    except ApiKey.DoesNotExist as exc:
        raise Http404 from exc


@never_cache
@require_GET
@dashboard_view(managers_only=True)
def key_created(request, current, key_id: int):
    """The new key's secret, shown on the first visit only (a refresh shows that it is gone)."""
    api_key = _api_key(current, key_id)
    secret = request.session.pop(_secret_session_key(api_key.pk), None)
    response = page(request, "dashboard/key_created.html", {"api_key": api_key, "secret": secret})
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def key_revoke(request, current, key_id: int):
    api_key = _api_key(current, key_id)
    if request.method == "POST":
        account_services.api_key_revoke(api_key=api_key)
        messages.success(request, f"Key “{api_key.name}” ({api_key.prefix}…) was revoked. Requests with it now fail.")
        return redirect("dashboard:keys")
    return page(request, "dashboard/key_revoke.html", {"api_key": api_key})
