"""Team: members and roles, invitations by email, role changes, removal."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.mail import send_mail
from django.http import Http404
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from accounts import services as account_services
from accounts.models import Invitation, Membership, Role
from billing_site.errors import DomainError
from dashboard import forms, selectors
from dashboard.context import dashboard_view, page


def _grantable(current) -> list[str]:
    if current.is_owner:
        return [Role.OWNER, Role.ADMIN, Role.MEMBER]
    return [Role.ADMIN, Role.MEMBER] if current.is_manager else []


def _membership(current, membership_id: int) -> Membership:
    try:
        return selectors.membership_get(organization_id=current.organization.pk, membership_id=membership_id)
    except Membership.DoesNotExist as exc:
        raise Http404 from exc


def _may_manage(current, membership: Membership) -> bool:
    """Whether the controls for `membership` are shown (the services enforce the same rules)."""
    return current.is_manager and (current.is_owner or membership.role != Role.OWNER)


def invitation_email_send(request, invitation: Invitation, token: str) -> None:
    url = request.build_absolute_uri(reverse("dashboard:invitation", args=[token]))
    context = {"invitation": invitation, "url": url, "inviter": request.user}
    send_mail(
        subject=render_to_string("dashboard/emails/invitation_subject.txt", context).strip(),
        message=render_to_string("dashboard/emails/invitation.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[invitation.email],
    )


@require_http_methods(["GET", "POST"])
@dashboard_view()
def team(request, current):
    invite_form = forms.InviteForm(request.POST or None, grantable=_grantable(current))
    if request.method == "POST":
        if not current.is_manager:
            return page(request, "dashboard/403.html", status=403)
        if invite_form.is_valid():
            try:
                created = account_services.invitation_create(
                    organization=current.organization,
                    email=invite_form.cleaned_data["email"],
                    role=invite_form.cleaned_data["role"],
                    invited_by=request.user,
                )
            except DomainError as error:
                forms.service_error_add(invite_form, error)
            else:
                invitation_email_send(request, created.invitation, created.token)
                messages.success(request, f"Invitation sent to {created.invitation.email}. The link works for 7 days.")
                return redirect("dashboard:team")
    members = [(m, _may_manage(current, m)) for m in selectors.team_list(organization_id=current.organization.pk)]
    context = {
        "members": members,
        "owners": sum(1 for m, _ in members if m.role == Role.OWNER),
        "invitations": selectors.invitation_list_open(organization_id=current.organization.pk) if current.is_manager else [],
        "invite_form": invite_form,
        "role_choices": [(value, name) for value, name in Role.choices if value in _grantable(current)],
    }
    return page(request, "dashboard/team.html", context, status=400 if invite_form.errors else 200)


@require_POST
@dashboard_view(managers_only=True)
def member_role(request, current, membership_id: int):
    membership = _membership(current, membership_id)
    form = forms.RoleForm(request.POST)
    if form.is_valid():
        role = form.cleaned_data["role"]
        ownership_changes = role != membership.role and Role.OWNER in (role, membership.role)
        if ownership_changes and request.POST.get("confirmed") != "yes":
            # Granting or taking away ownership is asked once more, on a page of its own.
            context = {"membership": membership, "role": Role(role), "granting": role == Role.OWNER}
            return page(request, "dashboard/member_role_confirm.html", context)
        try:
            account_services.membership_role_change(membership=membership, role=form.cleaned_data["role"], actor=request.user)
        except DomainError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"{membership.user.email} is now {Role(form.cleaned_data['role']).label.lower()}.")
    return redirect("dashboard:team")


@require_http_methods(["GET", "POST"])
@dashboard_view()
def member_remove(request, current, membership_id: int):
    """Confirm, then remove a member; a member may also remove themselves (leave)."""
    membership = _membership(current, membership_id)
    leaving = membership.user_id == request.user.pk
    if not leaving and not _may_manage(current, membership):
        return page(request, "dashboard/403.html", status=403)
    if request.method == "POST":
        try:
            account_services.membership_remove(membership=membership, actor=request.user)
        except DomainError as error:
            messages.error(request, error.message)
            return redirect("dashboard:team")
        if leaving:
            messages.success(request, f"You left {current.organization.name}.")
            return redirect("dashboard:overview")
        messages.success(request, f"{membership.user.email} was removed from {current.organization.name}.")
        return redirect("dashboard:team")
    return page(request, "dashboard/member_remove.html", {"membership": membership, "leaving": leaving})


@require_POST
@dashboard_view(managers_only=True)
def invitation_revoke(request, current, invitation_id: int):
    try:
        invitation = selectors.invitation_get(organization_id=current.organization.pk, invitation_id=invitation_id)
    except Invitation.DoesNotExist as exc:
        raise Http404 from exc
    account_services.invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"The invitation to {invitation.email} was revoked.")
    return redirect("dashboard:team")
