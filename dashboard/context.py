"""The dashboard's tenant: which organization a signed-in person is looking at, and as what.

The chosen organization's slug lives in the session; it is re-checked against the person's
memberships on every request, so a stale or forged slug falls back to one they belong to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Membership, Organization, Role, User
from accounts.selectors import membership_list
from billing_site.api.throttling import document_download_allowed
from metering.subscription_selectors import past_due_exists

SESSION_KEY = "dashboard_organization"
_Response = TypeVar("_Response", bound=HttpResponseBase)

# Everything the dashboard serves comes from the project itself (docs/contract.md §5); the browser enforces it.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"


def user_zone(user: User) -> ZoneInfo:
    try:
        return ZoneInfo(user.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class Current:
    user: User
    membership: Membership
    memberships: list[Membership]

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def role(self) -> Role:
        return Role(self.membership.role)

    @property
    def is_manager(self) -> bool:
        return self.role in MANAGER_ROLES

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


def _signed_in(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User), "a dashboard page is for a signed-in person (login_required)"
    return user


def current_resolve(request: HttpRequest) -> Current | None:
    """The organization chosen in the session if the user still belongs to it, else their first."""
    user = _signed_in(request)
    memberships = list(membership_list(user=user))
    if not memberships:
        return None
    slug = request.session.get(SESSION_KEY)
    chosen = next((m for m in memberships if m.organization.slug == slug), memberships[0])
    if chosen.organization.slug != slug:
        request.session[SESSION_KEY] = chosen.organization.slug
    return Current(user=user, membership=chosen, memberships=memberships)


def organization_choose(request: HttpRequest, slug: str) -> Membership:
    """Switch the session to `slug`; Http404 unless the user belongs to it."""
    membership = next((m for m in membership_list(user=_signed_in(request)) if m.organization.slug == slug), None)
    if membership is None:
        raise Http404("No such organization.")
    request.session[SESSION_KEY] = slug
    return membership


def page(request: HttpRequest, template: str, context: dict | None = None, *, status: int = 200) -> HttpResponse:
    """Render a dashboard page with the shell's context (current organization, navigation)."""
    current = getattr(request, "current", None)
    base = {
        "current": current,
        "time_zone_name": timezone.get_current_timezone_name(),
        # Read only when the layout asks (every signed-in page): the banner of an unpaid plan fee.
        "subscription_past_due": (lambda: past_due_exists(organization_id=current.organization.pk)) if current else False,
    }
    response = render(request, template, {**base, **(context or {})}, status=status)
    return secure_headers(response)


def secure_headers(response: _Response) -> _Response:
    response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


def dashboard_view(*, managers_only: bool = False, document: bool = False) -> Callable:
    """Sign-in required; resolves `request.current`; answers the dashboard's own 404 page for any
    object outside the current organization, and 403 to members on owner/admin pages. A `document`
    download (a rendered PDF or CSV) counts against the person's download limit (429 past it)."""

    def decorator(view: Callable) -> Callable:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            current = current_resolve(request)
            if current is None:
                return redirect("dashboard:welcome")
            request.current = current  # type: ignore[attr-defined]  # an attribute of ours, for page()
            if managers_only and not current.is_manager:
                return page(request, "dashboard/403.html", status=403)
            if document:
                allowed, wait = document_download_allowed(user_id=current.user.pk)
                if not allowed:
                    refused = HttpResponse("Too many downloads: try again in a minute.", status=429, content_type="text/plain")
                    refused["Retry-After"] = str(wait)
                    return refused
            # Times on the page read in the person's own zone (its name is in every page's context).
            with timezone.override(user_zone(current.user)):
                try:
                    return secure_headers(view(request, current, *args, **kwargs))
                except Http404:
                    return page(request, "dashboard/404.html", status=404)

        return wrapped

    return decorator
