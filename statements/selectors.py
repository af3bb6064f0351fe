"""Reads for statements: the figures of a month straight from the ledger, and the issued statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from billing_site.money import ZERO
from payments.models import TransferKind
from statements.models import Statement

# The order lines appear in, on every statement.
KIND_ORDER: tuple[str, ...] = (
    TransferKind.RECHARGE,
    TransferKind.REDEMPTION,
    TransferKind.GRANT,
    TransferKind.USAGE,
    TransferKind.SUBSCRIPTION,
    TransferKind.EXPIRY,
    TransferKind.REFUND,
    TransferKind.ADJUSTMENT,
    TransferKind.REBALANCE,
)


@dataclass(frozen=True)
class FigureLine:
    kind: str
    service_id: int | None
    amount: Decimal
    transfers: int


@dataclass(frozen=True)
class Figures:
    opening_balance: Decimal
    closing_balance: Decimal
    lines: tuple[FigureLine, ...]


# One statement, so every figure comes from one snapshot of the ledger: the organization's wallet
# entries (the wallet row's and its stripes') before the month's end, by their time, summed in one pass
# before the month (opening) and in all (closing); the month's, read once, by their transfer's kind and
# its usage by service. A usage transfer's records say which services it paid for (their costs sum to
# its wallet leg); a volume true-up names its service. Records are found by the organization's time
# index around the month (a record carries its transfer's time), then kept by transfer.
_FIGURES_SQL = """
WITH month AS MATERIALIZED (
    SELECT e.transfer_id, t.kind, e.amount
      FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id
     WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.created_at >= %(start)s AND e.created_at < %(end)s
), usage_transfer AS (
    SELECT DISTINCT transfer_id AS id FROM month WHERE kind = 'usage'
), attributed AS (
    SELECT r.service_id, -r.cost AS amount, r.transfer_id FROM metering_usagerecord r
     WHERE r.organization_id = %(org)s AND r.created_at >= %(near_start)s AND r.created_at < %(near_end)s
       AND NOT r.test AND r.transfer_id IN (SELECT id FROM usage_transfer)
    UNION ALL
    SELECT v.service_id, e.amount, v.transfer_id FROM metering_volumetrueup v
      JOIN payments_ledgerentry e ON e.transfer_id = v.transfer_id AND e.account = 'wallet'
     WHERE v.organization_id = %(org)s AND v.transfer_id IN (SELECT id FROM usage_transfer)
)
SELECT 'balance', NULL::text, NULL::bigint,
       COALESCE(SUM(e.amount) FILTER (WHERE e.created_at < %(start)s), 0), COALESCE(SUM(e.amount), 0)
  FROM payments_ledgerentry e
 WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.created_at < %(end)s
UNION ALL
SELECT 'kind', kind, NULL::bigint, SUM(amount), COUNT(DISTINCT transfer_id) FROM month GROUP BY kind
UNION ALL
SELECT 'service', NULL::text, service_id, SUM(amount), COUNT(DISTINCT transfer_id) FROM attributed GROUP BY service_id
"""
# How many of the month's usage transfers their records do not account for in full (their records
# archived): asked only when the month's usage has such a remainder, which it normally has not.
_UNATTRIBUTED_TRANSFERS_SQL = """
WITH month AS (
    SELECT e.transfer_id, e.amount
      FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id AND t.kind = 'usage'
     WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.created_at >= %(start)s AND e.created_at < %(end)s
), named AS (
    SELECT r.transfer_id, -r.cost AS amount FROM metering_usagerecord r
     WHERE r.organization_id = %(org)s AND r.created_at >= %(near_start)s AND r.created_at < %(near_end)s
       AND NOT r.test AND r.transfer_id IN (SELECT transfer_id FROM month)
    UNION ALL
    SELECT v.transfer_id, e.amount FROM metering_volumetrueup v
      JOIN payments_ledgerentry e ON e.transfer_id = v.transfer_id AND e.account = 'wallet'
     WHERE v.organization_id = %(org)s AND v.transfer_id IN (SELECT transfer_id FROM month)
)
SELECT COUNT(*) FROM (SELECT transfer_id, SUM(amount) AS amount FROM month GROUP BY transfer_id) paid
  LEFT JOIN (SELECT transfer_id, SUM(amount) AS amount FROM named GROUP BY transfer_id) named USING (transfer_id)
 WHERE paid.amount <> COALESCE(named.amount, 0)
"""
_RECORD_SLACK = timedelta(days=1)


def _usage_total(rows: list[tuple[str, str | None, int | None, Decimal, Decimal]]) -> Decimal:
    return sum((amount for section, kind, _, amount, _ in rows if section == "kind" and kind == TransferKind.USAGE), ZERO)


def statement_figures(*, organization_id: int, start: datetime, end: datetime) -> Figures:
    """The wallet's movements over [start, end) from the ledger, in one snapshot: opening and closing
    balance (the sum of its entries before each instant) and one line per transfer kind, usage split by
    service. The lines sum exactly to closing − opening; a usage remainder no record names is a line
    without a service (none is expected). A striped wallet's rebalances, netting to nothing, are no line."""
    params: dict[str, Any] = {
        "org": organization_id,
        "start": start,
        "end": end,
        "near_start": start - _RECORD_SLACK,
        "near_end": end + _RECORD_SLACK,
    }
    with connection.cursor() as cursor:
        cursor.execute(_FIGURES_SQL, params)
        rows = cursor.fetchall()
        unattributed = _usage_total(rows) - sum((amount for section, _, _, amount, _ in rows if section == "service"), ZERO)
        unattributed_transfers = 0
        if unattributed:
            cursor.execute(_UNATTRIBUTED_TRANSFERS_SQL, params)
            unattributed_transfers = int(cursor.fetchone()[0])
    opening = closing = ZERO
    by_kind: dict[str, tuple[Decimal, int]] = {}
    by_service: list[tuple[int, Decimal, int]] = []
    for section, kind, service_id, amount, count in rows:
        if section == "balance":
            opening, closing = amount, count
        elif section == "kind":
            by_kind[kind] = (amount, int(count))
        else:
            by_service.append((service_id, amount, int(count)))
    by_service.sort()
    lines: list[FigureLine] = []
    for kind in [*KIND_ORDER, *sorted(set(by_kind) - set(KIND_ORDER))]:
        if kind not in by_kind:
            continue
        amount, count = by_kind[kind]
        if kind == TransferKind.REBALANCE and not amount:
            # A high-volume wallet moving money between its own rows: nothing the customer did or paid.
            continue
        if kind != TransferKind.USAGE:
            lines.append(FigureLine(kind=kind, service_id=None, amount=amount, transfers=count))
            continue
        lines.extend(FigureLine(kind=kind, service_id=sid, amount=total, transfers=n) for sid, total, n in by_service if total)
        if unattributed:
            # the usage transfers whose records do not account for all they took (their records archived)
            lines.append(FigureLine(kind=kind, service_id=None, amount=unattributed, transfers=unattributed_transfers))
    return Figures(opening_balance=opening, closing_balance=closing, lines=tuple(lines))


def statement_list(*, organization_id: int) -> QuerySet[Statement]:
    return Statement.objects.filter(organization_id=organization_id).order_by("-period_start")


def statement_get(*, organization_id: int, statement_id: int) -> Statement | None:
    return (
        Statement.objects.filter(organization_id=organization_id, pk=statement_id)
        .select_related("organization")
        .prefetch_related("lines__service")
        .first()
    )


# --- The statement's summary: its lines in the categories customers read (docs/statements.md) ---------

# (category, label, kinds) in the order the summary shows them; usage gets one row per service.
SUMMARY_CATEGORIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("recharges", "Recharges", (TransferKind.RECHARGE,)),
    ("usage", "Usage", (TransferKind.USAGE,)),
    ("subscription", "Subscription fees", (TransferKind.SUBSCRIPTION,)),
    ("grants", "Credit grants", (TransferKind.GRANT,)),
    ("redemptions", "Redeemed codes", (TransferKind.REDEMPTION,)),
    ("expiry", "Expired credit", (TransferKind.EXPIRY,)),
    ("refunds", "Refunds", (TransferKind.REFUND,)),
    ("adjustments", "Adjustments", (TransferKind.ADJUSTMENT,)),
)
OTHER_CATEGORY = ("other", "Other")
USAGE_OTHER_LABEL = "Usage (other)"


@dataclass(frozen=True)
class SummaryRow:
    category: str
    label: str
    amount: Decimal
    transfers: int
    service_slug: str | None = None
    service_name: str | None = None


@dataclass(frozen=True)
class Summary:
    opening_balance: Decimal
    closing_balance: Decimal
    rows: tuple[SummaryRow, ...]

    @property
    def usage_rows(self) -> tuple[SummaryRow, ...]:
        return tuple(row for row in self.rows if row.category == "usage")


def statement_summary(statement: Statement) -> Summary:
    """The statement's lines in the categories of docs/statements.md, every category present (0 without a
    line): recharges, usage one row per service (a line without a service reads "Usage (other)"),
    subscription fees, credit grants, redeemed codes, expired credit, refunds, adjustments, and "Other"
    for any further kind (rebalance, a kind added later), so no line is ever dropped. The rows sum
    exactly to closing − opening as the lines do."""
    lines = list(statement.lines.all())
    rows: list[SummaryRow] = []
    placed: set[int] = set()
    for category, label, kinds in SUMMARY_CATEGORIES:
        mine = [line for line in lines if line.kind in kinds]
        placed.update(line.pk for line in mine)
        if category != "usage":
            rows.append(
                SummaryRow(
                    category=category,
                    label=label,
                    amount=sum((line.amount for line in mine), ZERO),
                    transfers=sum(line.transfers for line in mine),
                )
            )
            continue
        if not mine:
            rows.append(SummaryRow(category=category, label=label, amount=ZERO, transfers=0))
        for line in sorted(mine, key=lambda line: (line.service is None, line.position)):
            service = line.service
            rows.append(
                SummaryRow(
                    category=category,
                    label=f"Usage: {service.name}" if service is not None else USAGE_OTHER_LABEL,
                    amount=line.amount,
                    transfers=line.transfers,
                    service_slug=service.slug if service is not None else None,
                    service_name=service.name if service is not None else None,
                )
            )
    others = [line for line in lines if line.pk not in placed]
    rows.append(
        SummaryRow(
            category=OTHER_CATEGORY[0],
            label=OTHER_CATEGORY[1],
            amount=sum((line.amount for line in others), ZERO),
            transfers=sum(line.transfers for line in others),
        )
    )
    return Summary(opening_balance=statement.opening_balance, closing_balance=statement.closing_balance, rows=tuple(rows))


def statement_number_display(statement: Statement) -> str:
    """The statement's number as documents print it: `S-000007`."""
    return f"S-{statement.number:06d}"


def statement_period_display(statement: Statement) -> str:
    """The statement's month as people read it: `November 2026` (its UTC month)."""
    return f"{statement.period_start.astimezone(UTC):%B %Y}"


def statement_document_get(*, statement_id: int) -> Statement | None:
    """Any organization's statement with what its documents print (staff's back office; customers go
    through `statement_get`, which scopes to their organization)."""
    return Statement.objects.filter(pk=statement_id).select_related("organization").prefetch_related("lines__service").first()


# A statement's email is queued after its commit; one not sent this long after issuance lost its task
# (the broker was down then, a worker died for good) and is queued again, for a few days.
EMAIL_SWEEP_AFTER = timedelta(minutes=15)
EMAIL_SWEEP_WINDOW = timedelta(days=3)


def statements_unemailed(*, now: datetime) -> list[int]:
    """Statements issued between EMAIL_SWEEP_WINDOW and EMAIL_SWEEP_AFTER before `now` and not emailed yet."""
    return list(
        Statement.objects.filter(
            emailed_at__isnull=True, issued_at__gte=now - EMAIL_SWEEP_WINDOW, issued_at__lte=now - EMAIL_SWEEP_AFTER
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
