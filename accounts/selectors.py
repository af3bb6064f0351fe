"""Reads for accounts."""

from datetime import datetime
from functools import partial
from typing import Any

from django.db import connection
from django.db.models import OuterRef, QuerySet, Subquery, Sum

from accounts.models import ApiKey, ApiKeyStripeSpend, Membership, Organization, Role, User
from billing_site.cache import TwoLevelCache
from billing_site.errors import NotFound


def organization_get(*, slug: str) -> Organization:
    """The organization with this slug; NotFound (404) otherwise. For staff tools, which name one."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise NotFound("No such organization.")
    return organization


def membership_list(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("organization").filter(user=user).order_by("organization__name")


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    """Newest first, each with what it spent on a high-volume wallet's stripes (`ApiKey.lifetime_spent`)."""
    on_stripes = ApiKeyStripeSpend.objects.filter(api_key=OuterRef("pk")).values("api_key").annotate(total=Sum("spent"))
    return (
        ApiKey.objects.filter(organization=organization)
        .annotate(spent_on_stripes=Subquery(on_stripes.values("total")))
        .order_by("-created_at", "-id")
    )


def api_key_get(*, organization: Organization, api_key_id: int) -> ApiKey:
    """Raises ApiKey.DoesNotExist for another organization's key, so it answers 404."""
    return ApiKey.objects.get(organization=organization, pk=api_key_id)


# What authentication needs of a key and its organization. Not `spent`: it changes with every debit
# of the key, so it is never cached (the instance leaves it deferred: reading it asks the database).
_API_KEY_FIELDS = [
    "id",
    "organization_id",
    "name",
    "mode",
    "prefix",
    "digest",
    "created_by_id",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "spend_cap",
    "allowed_models",
    "rpm_limit",
    "tpm_limit",
    "max_concurrent_streams",
]
_LAST_USED_AT = _API_KEY_FIELDS.index("last_used_at")
_ORGANIZATION_FIELDS = ["id", "name", "slug", "created_at", "requests_per_minute", "batch_events_per_minute", "wallet_stripes"]
# Every request with a key runs this: one index probe, compiled once here instead of by the ORM each time.
_API_KEY_SQL = (
    "SELECT "
    + ", ".join(f"k.{f}" for f in _API_KEY_FIELDS)
    + ", "
    + ", ".join(f"o.{f}" for f in _ORGANIZATION_FIELDS)
    + " FROM accounts_apikey k JOIN accounts_organization o ON o.id = k.organization_id WHERE k.digest = %s"
)
# Key rows by digest (never by secret), with their organization's. Invalidated by every change of a
# key or an organization (accounts/apps.py, api_key_revoke); a key's expiry needs none, since
# authentication compares `expires_at` with the time at every request.
API_KEYS: TwoLevelCache[tuple[Any, ...]] = TwoLevelCache("api_keys")


def _api_key_row(digest: str) -> tuple[tuple[Any, ...], None] | None:
    with connection.cursor() as cursor:
        cursor.execute(_API_KEY_SQL, [digest])
        row = cursor.fetchone()
    return None if row is None else (tuple(row), None)


def api_key_by_digest(*, digest: str) -> ApiKey | None:
    """The key with this digest, its organization loaded; None when unknown. From this process's
    cache while the row is unchanged (billing_site/cache.py), else one query."""
    row = API_KEYS.get(digest, partial(_api_key_row, digest))
    if row is None:
        return None
    api_key = ApiKey.from_db("default", _API_KEY_FIELDS, row[: len(_API_KEY_FIELDS)])
    api_key.organization = Organization.from_db("default", _ORGANIZATION_FIELDS, row[len(_API_KEY_FIELDS) :])
    return api_key


def api_key_used_at_note(*, digest: str, used_at: datetime) -> None:
    """Remember in this process's cache that the key's `last_used_at` was just written, so the next
    requests do not write it again (it is not part of what the cache keeps exact)."""
    API_KEYS.update_local(digest, lambda row: (*row[:_LAST_USED_AT], used_at, *row[_LAST_USED_AT + 1 :]))


def ownerships_of(*, user_ids: list[int]) -> QuerySet[Membership]:
    """The owner memberships of these users, with their organizations."""
    return Membership.objects.filter(user_id__in=user_ids, role=Role.OWNER).select_related("organization", "user")
