"""Reads the dashboard needs beyond the apps' own selectors. Every one is scoped to an organization."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum

from accounts.models import ApiKey, Invitation, Membership, User
from accounts.services import invitation_digest
from metering.models import Service, UsageRecord, UsageRollup
from payments.models import AlertDelivery, Payment


def daily_spend_by_service(*, organization_id: int, day_from: date, day_to: date) -> list[dict]:
    """Live spend per (day, service slug) over [day_from, day_to], from the daily rollups."""
    rows = (
        UsageRollup.objects.filter(organization_id=organization_id, test=False, day__gte=day_from, day__lte=day_to)
        .values("day", "service__slug")
        .annotate(cost=Sum("cost"))
        .order_by("day", "service__slug")
    )
    return [{"day": row["day"], "service": row["service__slug"], "cost": row["cost"]} for row in rows]


def burn_rate(rows: list[dict], *, today: date, days: int) -> Decimal:
    """Average live spend per day over the `days` whole days before today (today is not over yet)."""
    start = today - timedelta(days=days)
    return sum((row["cost"] for row in rows if start <= row["day"] < today), Decimal(0)) / days


def runway_days(*, available: Decimal, per_day: Decimal) -> int | None:
    """Whole days `available` lasts at `per_day`; None when nothing is being spent."""
    if per_day <= 0:
        return None
    return max(int(available / per_day), 0)


def service_options() -> list[tuple[str, str]]:
    """Every service, retired ones too: old usage may name them."""
    return list(Service.objects.order_by("slug").values_list("slug", "name"))


def api_keys_by_id(*, organization_id: int) -> dict[int, ApiKey]:
    return {key.pk: key for key in ApiKey.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")}


def alert_delivery_list(*, organization_id: int) -> QuerySet[AlertDelivery]:
    """The organization's alert webhook attempts, newest first."""
    return AlertDelivery.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")


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


# --- Usage pages: keyset pagination, so page 10,000 costs what page 1 does (no OFFSET, no COUNT) ----


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: int

    def encode(self) -> str:
        micros = (self.created_at - EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.id}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        try:
            micros, record_id = (int(part) for part in (text or "").split("."))
            created_at = EPOCH + timedelta(microseconds=micros)
        except (TypeError, ValueError, OverflowError, OSError):
            return None
        return cls(created_at=created_at, id=record_id)


@dataclass(frozen=True)
class UsagePage:
    records: list[UsageRecord]
    older: Cursor | None  # the cursor for the next (older) page, if there is one
    newer: Cursor | None  # the cursor for the previous (newer) page, if there is one


def usage_page(
    records: QuerySet[UsageRecord], *, before: Cursor | None = None, after: Cursor | None = None, size: int = 50
) -> UsagePage:
    """One page of `records` (newest first): the `size` after `before`, or the `size` just
    newer than `after`, or the newest."""
    if after is not None:
        newer_first = records.filter(Q(created_at__gt=after.created_at) | Q(created_at=after.created_at, id__gt=after.id))
        chunk = list(newer_first.order_by("created_at", "id")[: size + 1])
        has_newer = len(chunk) > size
        rows = list(reversed(chunk[:size]))
        older = Cursor(rows[-1].created_at, rows[-1].pk) if rows else None
        newer = Cursor(rows[0].created_at, rows[0].pk) if rows and has_newer else None
        return UsagePage(records=rows, older=older, newer=newer)
    if before is not None:
        records = records.filter(Q(created_at__lt=before.created_at) | Q(created_at=before.created_at, id__lt=before.id))
    chunk = list(records[: size + 1])
    rows = chunk[:size]
    older = Cursor(rows[-1].created_at, rows[-1].pk) if len(chunk) > size else None
    newer = Cursor(rows[0].created_at, rows[0].pk) if rows and before is not None else None
    return UsagePage(records=rows, older=older, newer=newer)
