"""Reads for statements: the figures of a month straight from the ledger, and the issued statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

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


# The wallet's entries (the wallet row's and its stripes'), by their time: summed before the month
# (opening) and before its end (closing) in one pass over them.
_BALANCES_SQL = """
SELECT COALESCE(SUM(e.amount) FILTER (WHERE e.created_at < %(start)s), 0), COALESCE(SUM(e.amount), 0)
  FROM payments_ledgerentry e
 WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.created_at < %(end)s
"""
# The month's wallet entries with their transfer's kind, read once for both results: the totals by kind
# (rows with by_service false), and usage by service (by_service true). A usage transfer's records say
# which services it paid for (their costs sum to its wallet leg); a volume true-up's transfer names its
# service. Records are found by the organization's time index around the month (a record carries its
# transfer's time), then kept by transfer.
_MONTH_SQL = """
WITH month AS MATERIALIZED (
    SELECT e.transfer_id, t.kind, e.amount
      FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id
     WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.created_at >= %(start)s AND e.created_at < %(end)s
), used AS (
    SELECT DISTINCT transfer_id AS id FROM month WHERE kind = 'usage'
)
SELECT false AS by_service, kind, NULL::bigint AS service_id, SUM(amount), COUNT(DISTINCT transfer_id)
  FROM month GROUP BY kind
UNION ALL
SELECT true, 'usage', service_id, SUM(amount), COUNT(DISTINCT transfer_id) FROM (
    SELECT r.service_id, -r.cost AS amount, r.transfer_id FROM metering_usagerecord r
     WHERE r.organization_id = %(org)s AND r.created_at >= %(near_start)s AND r.created_at < %(near_end)s
       AND NOT r.test AND r.transfer_id IN (SELECT id FROM used)
    UNION ALL
    SELECT v.service_id, e.amount, v.transfer_id FROM metering_volumetrueup v
      JOIN payments_ledgerentry e ON e.transfer_id = v.transfer_id AND e.account = 'wallet'
     WHERE v.organization_id = %(org)s AND v.transfer_id IN (SELECT id FROM used)
) attributed
GROUP BY service_id
ORDER BY 1, 3
"""
_RECORD_SLACK = timedelta(days=1)


def statement_figures(*, organization_id: int, start: datetime, end: datetime) -> Figures:
    """The wallet's movements over [start, end) from the ledger: opening and closing balance (the sum
    of its entries before each instant) and one line per transfer kind, usage split by service. The
    lines sum exactly to closing − opening; a usage remainder no record names is a line without a
    service (none is expected)."""
    params: dict[str, int | datetime] = {
        "org": organization_id,
        "start": start,
        "end": end,
        "near_start": start - _RECORD_SLACK,
        "near_end": end + _RECORD_SLACK,
    }
    with connection.cursor() as cursor:
        cursor.execute(_BALANCES_SQL, params)
        opening, closing = cursor.fetchone()
        cursor.execute(_MONTH_SQL, params)
        rows = cursor.fetchall()
    by_kind = {kind: (amount, count) for by_service, kind, _, amount, count in rows if not by_service}
    by_service: list[tuple[int, Decimal, int]] = [
        (sid, amount, count) for by_service, _, sid, amount, count in rows if by_service
    ]
    lines: list[FigureLine] = []
    for kind in [*KIND_ORDER, *sorted(set(by_kind) - set(KIND_ORDER))]:
        if kind not in by_kind:
            continue
        amount, count = by_kind[kind]
        if kind != TransferKind.USAGE:
            lines.append(FigureLine(kind=kind, service_id=None, amount=amount, transfers=count))
            continue
        lines.extend(FigureLine(kind=kind, service_id=sid, amount=total, transfers=n) for sid, total, n in by_service if total)
        rest = amount - sum((total for _, total, _ in by_service), ZERO)
        if rest:
            lines.append(FigureLine(kind=kind, service_id=None, amount=rest, transfers=count))
    return Figures(opening_balance=opening, closing_balance=closing, lines=tuple(lines))


def statement_list(*, organization_id: int) -> QuerySet[Statement]:
    return Statement.objects.filter(organization_id=organization_id).order_by("-period_start")


def statement_get(*, organization_id: int, statement_id: int) -> Statement | None:
    return Statement.objects.filter(organization_id=organization_id, pk=statement_id).prefetch_related("lines__service").first()
