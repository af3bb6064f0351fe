"""Reads the dashboard needs beyond the apps' own selectors. Every one is scoped to an organization."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate

from accounts.models import ApiKey, Invitation, Membership, User
from accounts.services import invitation_digest
from metering.models import Service, UsageRecord, UsageRollup
from payments.models import AlertDelivery, Payment


def daily_spend_by_service(*, organization_id: int, day_from: date, day_to: date) -> list[dict]:
    """Live spend per (day, service slug) over [day_from, day_to], from the daily rollups, with the
    service's name."""
    rows = (
        UsageRollup.objects.filter(organization_id=organization_id, test=False, day__gte=day_from, day__lte=day_to)
        .values("day", "service__slug", "service__name")
        .annotate(cost=Sum("cost"))
        .order_by("day", "service__slug")
    )
    return [
        {"day": row["day"], "service": row["service__slug"], "name": row["service__name"], "cost": row["cost"]} for row in rows
    ]


def burn_rate(rows: list[dict], *, today: date, days: int) -> Decimal:
    """Average live spend per day over the `days` whole days before today (today is not over yet)."""
    start = today - timedelta(days=days)
    return sum((row["cost"] for row in rows if start <= row["day"] < today), Decimal(0)) / days


def runway_days(*, available: Decimal, per_day: Decimal) -> int | None:
    """Whole days `available` lasts at `per_day`; None when nothing is being spent."""
    if per_day <= 0:
        return None
    return max(int(available / per_day), 0)


def services_by_id() -> dict[int, Service]:
    """Every service, retired ones too (old usage may name them), by id."""
    return Service.objects.in_bulk()


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


# --- Usage summaries: the daily rollups for whole UTC days, records only for what they cannot answer -


USAGE_SCAN_MAX = 100_000  # records one summary reads at most where the rollups cannot answer (a key's usage)


@dataclass(frozen=True)
class UsageCell:
    """Usage of one (UTC day, service, API key, mode); api_key_id is None when read from the rollups
    (which do not know the key) or for a signed-in person's own calls."""

    day: date
    service_id: int
    api_key_id: int | None
    test: bool
    events: int
    quantity: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


@dataclass(frozen=True)
class UsageCells:
    cells: list[UsageCell]
    too_many: bool  # more than USAGE_SCAN_MAX records would have to be read: no figures at all
    records_read: bool  # some figures came from the records (edges of a range, or by key)


def whole_utc_days(start: datetime, end: datetime) -> tuple[date, date] | None:
    """The first and last UTC day lying wholly inside [start, end), if any."""
    first = start.astimezone(UTC).date()
    if start.astimezone(UTC) != datetime.combine(first, time.min, tzinfo=UTC):
        first += timedelta(days=1)
    last = end.astimezone(UTC).date() - timedelta(days=1)
    return (first, last) if first <= last else None


_CELL_SUMS = {
    "events": Count("id"),
    "quantity_sum": Sum("quantity"),
    "input_tokens_sum": Sum(Coalesce("input_tokens", 0)),
    "output_tokens_sum": Sum(Coalesce("output_tokens", 0)),
    "cost_sum": Sum("cost"),
}


def _record_cells(records: QuerySet[UsageRecord], *, by_key: bool) -> list[UsageCell]:
    keys = ["utc_day", "service_id", "test", *(["api_key_id"] if by_key else [])]
    rows = records.annotate(utc_day=TruncDate("created_at", tzinfo=UTC)).values(*keys).annotate(**_CELL_SUMS).order_by()
    return [
        UsageCell(
            day=row["utc_day"],
            service_id=row["service_id"],
            api_key_id=row.get("api_key_id"),
            test=row["test"],
            events=row["events"],
            quantity=int(row["quantity_sum"]),
            input_tokens=int(row["input_tokens_sum"]),
            output_tokens=int(row["output_tokens_sum"]),
            cost=row["cost_sum"],
        )
        for row in rows
    ]


def usage_cells(
    *,
    organization_id: int,
    start: datetime,
    end: datetime,
    service: str | None = None,
    api_key_id: int | None = None,
    test: bool | None = None,
    by_key: bool = False,
) -> UsageCells:
    """Exact usage over [start, end) by UTC day, service and mode (and API key when `by_key` or
    filtered by key). Whole UTC days come from the daily rollups, so a month costs what a day costs;
    only the part of a range that is not whole UTC days (a time zone's offset at either end, under a
    day in all) is summed from the records. The rollups know no key: usage by key reads the records,
    at most USAGE_SCAN_MAX of them, and answers `too_many` (no figures) beyond."""
    records = UsageRecord.objects.filter(organization_id=organization_id)
    rollups = UsageRollup.objects.filter(organization_id=organization_id)
    if service:
        records, rollups = records.filter(service__slug=service), rollups.filter(service__slug=service)
    if test is not None:
        records, rollups = records.filter(test=test), rollups.filter(test=test)
    if api_key_id is not None or by_key:
        if api_key_id is not None:
            records = records.filter(api_key_id=api_key_id)
        in_range = records.filter(created_at__gte=start, created_at__lt=end)
        newest = in_range.order_by("-created_at", "-id").values("id")[: USAGE_SCAN_MAX + 1]
        cells = _record_cells(records.filter(id__in=Subquery(newest)), by_key=True)
        too_many = sum(cell.events for cell in cells) > USAGE_SCAN_MAX
        return UsageCells(cells=[] if too_many else cells, too_many=too_many, records_read=True)
    days = whole_utc_days(start, end)
    if days is None:
        return UsageCells(
            cells=_record_cells(records.filter(created_at__gte=start, created_at__lt=end), by_key=False),
            too_many=False,
            records_read=True,
        )
    first, last = days
    head_end = datetime.combine(first, time.min, tzinfo=UTC)
    tail_start = datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC)
    cells = [
        UsageCell(
            day=row["day"],
            service_id=row["service_id"],
            api_key_id=None,
            test=row["test"],
            events=row["events"],
            quantity=int(row["quantity"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cost=row["cost"],
        )
        for row in rollups.filter(day__gte=first, day__lte=last).values(
            "day", "service_id", "test", "events", "quantity", "input_tokens", "output_tokens", "cost"
        )
    ]
    edges = Q(created_at__gte=start, created_at__lt=head_end) | Q(created_at__gte=tail_start, created_at__lt=end)
    edge_cells = _record_cells(records.filter(edges), by_key=False) if start < head_end or tail_start < end else []
    return UsageCells(
        cells=cells + edge_cells, too_many=False, records_read=bool(edge_cells) or start < head_end or tail_start < end
    )
