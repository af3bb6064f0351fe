"""Reads for accounts."""

from django.db.models import QuerySet

from accounts.models import ApiKey, Membership, Organization, User


def membership_list(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("organization").filter(user=user).order_by("organization__name")


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).order_by("-created_at", "-id")


def api_key_get(*, organization: Organization, api_key_id: int) -> ApiKey:
    """Raises ApiKey.DoesNotExist for another organization's key, so it answers 404."""
    return ApiKey.objects.get(organization=organization, pk=api_key_id)
