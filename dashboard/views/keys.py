"""API keys: create (the secret is shown once), list, revoke with confirmation."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import ApiKey
from billing_site.errors import DomainError
from dashboard import forms
from dashboard.context import dashboard_view, page


@never_cache
@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def keys(request, current):
    form = forms.ApiKeyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = account_services.api_key_create(
                organization=current.organization,
                name=form.cleaned_data["name"],
                mode=form.cleaned_data["mode"],
                created_by=request.user,
                expires_at=form.expires_at(),
                spend_cap=form.cleaned_data["spend_cap"],
            )
        except DomainError as error:
            form.add_error(None, error.message)
        else:
            # Rendered in the answer to the POST, never stored: the only time the secret exists in clear.
            response = page(request, "dashboard/key_created.html", {"created": created, "api_key": created.api_key})
            response["Cache-Control"] = "no-store"
            return response
    context = {"form": form, "keys": account_selectors.api_key_list(organization=current.organization), "now": timezone.now()}
    return page(request, "dashboard/keys.html", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def key_revoke(request, current, key_id: int):
    try:
        api_key = account_selectors.api_key_get(organization=current.organization, api_key_id=key_id)
    except ApiKey.DoesNotExist as exc:
        raise Http404 from exc
    if request.method == "POST":
        account_services.api_key_revoke(api_key=api_key)
        messages.success(request, f"Key “{api_key.name}” ({api_key.prefix}…) was revoked. Requests with it now fail.")
        return redirect("dashboard:keys")
    return page(request, "dashboard/key_revoke.html", {"api_key": api_key})
