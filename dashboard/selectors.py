"""Reads the dashboard needs beyond the apps' own selectors. Every one is scoped to an organization."""

from __future__ import annotations

from datetime import date

from django.db.models import QuerySet, Sum

from accounts.models import ApiKey, Invitation, Membership, User
from accounts.services import invitation_digest
from metering.models import Service, UsageRollup
from payments.models import Payment


def daily_spend_by_service(*, organization_id: int, day_from: date, day_to: date) -> list[dict]:
    """Live spend per (day, service slug) over [day_from, day_to], from the daily rollups."""
    rows = (
        UsageRollup.objects.filter(organization_id=organization_id, test=False, day__gte=day_from, day__lte=day_to)
        .values("day", "service__slug")
        .annotate(cost=Sum("cost"))
        .order_by("day", "service__slug")
    )
    return [{"day": row["day"], "service": row["service__slug"], "cost": row["cost"]} for row in rows]


def service_options() -> list[tuple[str, str]]:
    """Every service, retired ones too: old usage may name them."""
    return list(Service.objects.order_by("slug").values_list("slug", "name"))


def api_keys_by_id(*, organization_id: int) -> dict[int, ApiKey]:
    return {key.pk: key for key in ApiKey.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")}


def payment_get(*, organization_id: int, payment_id: int) -> Payment:
    """Raises Payment.DoesNotExist for another organization's payment."""
    return Payment.objects.get(organization_id=organization_id, pk=payment_id)


def membership_get(*, organization_id: int, membership_id: int) -> Membership:
    """Raises Membership.DoesNotExist for another organization's membership."""
    return Membership.objects.select_related("user", "organization").get(organization_id=organization_id, pk=membership_id)


def team_list(*, organization_id: int) -> QuerySet[Membership]:
    return Membership.objects.filter(organization_id=organization_id).select_related("user").order_by("created_at", "id")


def invitation_list_open(*, organization_id: int) -> QuerySet[Invitation]:
    """Invitations neither accepted nor revoked (expired ones too, shown as such)."""
    return (
        Invitation.objects.filter(organization_id=organization_id, accepted_at__isnull=True, revoked_at__isnull=True)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get(*, organization_id: int, invitation_id: int) -> Invitation:
    return Invitation.objects.get(organization_id=organization_id, pk=invitation_id)


def user_exists(*, email: str) -> bool:
    return User.objects.filter(email=email.lower()).exists()


def invitation_by_token(*, token: str) -> Invitation | None:
    return Invitation.objects.select_related("organization", "invited_by").filter(digest=invitation_digest(token)).first()
