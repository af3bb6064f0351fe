"""Reads for wallets and the ledger."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, QuerySet, Sum, Window
from django.utils import timezone

from billing_site.money import ZERO
from payments.models import (
    Account,
    CreditGrant,
    LedgerEntry,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    Transfer,
    TransferKind,
    Wallet,
    WebhookEvent,
)


def wallet_get(*, organization_id: int) -> Wallet:
    return Wallet.objects.select_related("organization").get(organization_id=organization_id)


def ledger_entry_list(*, organization_id: int) -> QuerySet[LedgerEntry]:
    """The wallet's own entries, newest first (system-account legs are the back office's), each with
    `wallet_balance_after`: the organization's balance after it. That is the stored `balance_after`,
    except for a wallet that ever had stripes (docs/contract.md §2.9), whose entries keep their own
    row's running balance: there it is the running sum over the wallet's entries in transfer order,
    and the moves between stripes (`rebalance`, summing to zero) are left out."""
    entries = LedgerEntry.objects.filter(organization_id=organization_id, account="wallet").select_related("transfer")
    if not LedgerEntry.objects.filter(organization_id=organization_id, stripe__isnull=False).exists():
        return entries.annotate(wallet_balance_after=F("balance_after")).order_by("-id")
    return (
        entries.exclude(transfer__kind=TransferKind.REBALANCE)
        .annotate(wallet_balance_after=Window(Sum("amount"), order_by=F("transfer_id").asc()))
        .order_by("-transfer_id", "-id")
    )


def payment_list(*, organization_id: int) -> QuerySet[Payment]:
    return Payment.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")


def payments_pending_count() -> int:
    """Payments waiting for their provider, for the `tollgate_payments_pending` gauge."""
    return Payment.objects.filter(status=PaymentStatus.PENDING).count()


def sandbox_payment_get(*, payment_id: int) -> Payment | None:
    """The sandbox payment a checkout link names, with its organization; None when there is none."""
    return Payment.objects.select_related("organization").filter(pk=payment_id, provider="sandbox").first()


# --- The back office's front page ----------------------------------------------------------------------

STALE_PENDING_AFTER = timedelta(hours=1)
RECENT_FAILURES = timedelta(days=7)
UNSETTLED_AFTER = timedelta(minutes=5)
ATTENTION_ROWS = 10


@dataclass
class RechargeFigures:
    today: int
    recharged_today: Decimal
    month: int
    recharged_month: Decimal


def _recharges_since(since: datetime) -> tuple[int, Decimal]:
    """Recharges credited since `since` and their total, from their payments_clearing legs (the
    (account, created_at) index; a system leg mirrors the wallet's, hence the negation)."""
    legs = LedgerEntry.objects.filter(
        account=Account.PAYMENTS_CLEARING, created_at__gte=since, transfer__kind=TransferKind.RECHARGE
    ).aggregate(n=Count("id"), total=Sum("amount"))
    return legs["n"], -(legs["total"] or ZERO)


def recharge_figures(*, now: datetime | None = None) -> RechargeFigures:
    """Recharges credited today and this month (UTC)."""
    today = (now or timezone.now()).replace(hour=0, minute=0, second=0, microsecond=0)
    count_today, total_today = _recharges_since(today)
    count_month, total_month = _recharges_since(today.replace(day=1))
    return RechargeFigures(today=count_today, recharged_today=total_today, month=count_month, recharged_month=total_month)


@dataclass
class Attention:
    stale_pending: list[Payment]
    failed_payments: list[Payment]
    unsettled_events: list[WebhookEvent]
    pending_refunds: list[Refund]


def payments_needing_attention(*, now: datetime | None = None) -> Attention:
    """Recharges pending for over an hour, payments failed in the last week, provider notifications
    not settled after five minutes, refunds still waiting for their provider; oldest first, a few each."""
    now = now or timezone.now()
    payments = Payment.objects.select_related("organization")
    return Attention(
        stale_pending=list(
            payments.filter(status=PaymentStatus.PENDING, created_at__lt=now - STALE_PENDING_AFTER).order_by("created_at")[
                :ATTENTION_ROWS
            ]
        ),
        failed_payments=list(
            payments.filter(status=PaymentStatus.FAILED, created_at__gte=now - RECENT_FAILURES).order_by("-created_at")[
                :ATTENTION_ROWS
            ]
        ),
        unsettled_events=list(
            WebhookEvent.objects.filter(processed_at__isnull=True, received_at__lt=now - UNSETTLED_AFTER)
            .select_related("organization")
            .order_by("received_at")[:ATTENTION_ROWS]
        ),
        pending_refunds=list(
            Refund.objects.filter(status=RefundStatus.PENDING)
            .select_related("organization", "payment")
            .order_by("created_at")[:ATTENTION_ROWS]
        ),
    )


# --- The wallet's statement: the ledger's own entries, usage gathered per day -----------------------


@dataclass(frozen=True)
class StatementEntry:
    """One wallet entry as the statement reads it."""

    id: int
    amount: Decimal
    balance_after: Decimal
    created_at: datetime
    kind: str
    reference: str
    memo: str


@dataclass
class StatementLine:
    """One line of the statement: one transfer, or a day's consecutive usage debits. `amount` is the
    exact sum of its entries and `balance_after` the ledger's balance after its newest one, so each
    line's balance_after minus its amount is the next older line's balance_after."""

    kind: str
    amount: Decimal
    balance_after: Decimal
    newest_at: datetime
    oldest_at: datetime
    day: date
    entries: int
    reference: str
    memo: str
    partial: bool = False  # a day's usage that goes on in the next (older) page


@dataclass(frozen=True)
class StatementPage:
    lines: list[StatementLine]
    older: int | None  # pass as `before` for the next (older) page


STATEMENT_SCAN = 5000  # wallet entries read per page at most, however busy a day was


def statement_lines_gather(entries: Iterable[StatementEntry], *, tz: tzinfo) -> Iterator[tuple[int, StatementLine]]:
    """Gather wallet entries (newest first) into lines, each answered once complete with the id of its
    first (newest) entry: usage debits of one local day that follow each other in the ledger make one
    line; every other transfer is a line of its own. Lazy, so a whole history streams."""
    line: StatementLine | None = None
    first_id = 0
    for entry in entries:
        if entry.kind == TransferKind.REBALANCE:  # between a high-volume wallet's own rows: not the customer's
            continue
        day = timezone.localtime(entry.created_at, tz).date()
        if line is not None and entry.kind == TransferKind.USAGE and line.kind == TransferKind.USAGE and line.day == day:
            line.amount += entry.amount
            line.oldest_at = entry.created_at
            line.entries += 1
            continue
        if line is not None:
            yield first_id, line
        first_id = entry.id
        line = StatementLine(
            kind=entry.kind,
            amount=entry.amount,
            balance_after=entry.balance_after,
            newest_at=entry.created_at,
            oldest_at=entry.created_at,
            day=day,
            entries=1,
            reference=entry.reference,
            memo=entry.memo,
        )
    if line is not None:
        yield first_id, line


def statement_lines(entries: Iterable[StatementEntry], *, tz: tzinfo, size: int) -> tuple[list[StatementLine], int | None]:
    """At most `size` lines of `entries` (see statement_lines_gather); answers the lines and the id
    of the first entry left out (None when every entry was used)."""
    lines: list[StatementLine] = []
    for first_id, line in statement_lines_gather(entries, tz=tz):
        if len(lines) == size:
            return lines, first_id
        lines.append(line)
    return lines, None


# A high-volume wallet's entries carry the running balance of their own row (the wallet row or one
# stripe, docs/contract.md §2.9), so its statement derives the organization's from the ledger in one
# snapshot: its total now, less every newer entry. Rebalance legs move money between its rows (they sum
# to zero per transfer): they count in that sum and are never shown.
_STRIPED_STATEMENT_SQL = """
WITH total AS (
    SELECT w.balance + COALESCE((SELECT sum(s.balance) FROM payments_walletstripe s WHERE s.organization_id = w.organization_id), 0)
           - COALESCE((SELECT sum(n.amount) FROM payments_ledgerentry n
                        WHERE n.organization_id = w.organization_id AND n.account = 'wallet' AND n.id >= %(before)s), 0) AS amount
      FROM payments_wallet w WHERE w.organization_id = %(org)s
)
SELECT e.id, e.amount,
       total.amount - COALESCE(sum(e.amount) OVER (ORDER BY e.id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0),
       e.created_at, t.kind, t.reference, t.memo
  FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id, total
 WHERE e.organization_id = %(org)s AND e.account = 'wallet' AND e.id < %(before)s
 ORDER BY e.id DESC
 LIMIT %(limit)s
"""


def _wallet_entries(*, organization_id: int) -> QuerySet[LedgerEntry, tuple[Any, ...]]:
    """The wallet's ledger entries, newest first, as StatementEntry's fields."""
    # balance_after: a check constraint sets it on every wallet entry.
    entries = LedgerEntry.objects.filter(organization_id=organization_id, account=Account.WALLET).order_by("-id")
    return entries.values_list(
        "id", "amount", "balance_after", "created_at", "transfer__kind", "transfer__reference", "transfer__memo"
    )


STATEMENT_EXPORT_CHUNK = 2000


def _striped_wallet_entries(*, organization_id: int) -> Iterator[StatementEntry]:
    """A high-volume wallet's entries, newest first, with the organization's running balance, through a
    server-side cursor (the window sum streams: no history is held in memory)."""
    with connection.chunked_cursor() as cursor:
        cursor.execute(_STRIPED_STATEMENT_SQL, {"org": organization_id, "before": 2**63 - 1, "limit": None})
        while rows := cursor.fetchmany(STATEMENT_EXPORT_CHUNK):
            yield from (StatementEntry(*row) for row in rows)


def _is_striped_ever(organization_id: int) -> bool:
    """Whether the wallet was ever high-volume: its stripes only ever get money by a rebalance."""
    return Transfer.objects.filter(organization_id=organization_id, kind=TransferKind.REBALANCE).exists()


def wallet_statement_all(*, organization_id: int, tz: tzinfo) -> Iterator[StatementLine]:
    """The wallet's whole statement, newest first, lines as on the billing page; read in chunks
    through a server-side cursor, so the CSV export streams any history in flat memory."""
    if _is_striped_ever(organization_id):
        entries: Iterator[StatementEntry] = _striped_wallet_entries(organization_id=organization_id)
    else:
        rows = _wallet_entries(organization_id=organization_id).iterator(chunk_size=STATEMENT_EXPORT_CHUNK)
        entries = (StatementEntry(*row) for row in rows)
    for _, line in statement_lines_gather(entries, tz=tz):
        yield line


def wallet_statement(
    *, organization_id: int, tz: tzinfo, before: int | None = None, size: int = 25, scan: int = STATEMENT_SCAN
) -> StatementPage:
    """A page of the wallet's statement, newest first, read from the ledger's wallet entries (ids
    below `before`). Reads at most `scan` entries: a day with more usage than that is cut into
    several lines, the newer ones marked `partial`, each still exact."""
    if _is_striped_ever(organization_id):
        with connection.cursor() as cursor:
            cursor.execute(_STRIPED_STATEMENT_SQL, {"org": organization_id, "before": before or 2**63 - 1, "limit": scan + 1})
            rows = [StatementEntry(*row) for row in cursor.fetchall()]
    else:
        entries = _wallet_entries(organization_id=organization_id)
        if before is not None:
            entries = entries.filter(id__lt=before)
        rows = [StatementEntry(*row) for row in entries[: scan + 1]]
    lines, left_out = statement_lines(rows[:scan], tz=tz, size=size)
    if left_out is not None:
        return StatementPage(lines=lines, older=left_out + 1)
    if len(rows) > scan:
        following = rows[scan]
        if not lines:  # a page of rebalance legs only
            return StatementPage(lines=lines, older=following.id + 1)
        last = lines[-1]
        last.partial = (
            last.kind == following.kind == TransferKind.USAGE and timezone.localtime(following.created_at, tz).date() == last.day
        )
        return StatementPage(lines=lines, older=following.id + 1)
    return StatementPage(lines=lines, older=None)


def grant_list(*, organization_id: int) -> QuerySet[CreditGrant]:
    """The organization's credit grants, newest first, spent and expired ones included."""
    return CreditGrant.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")


def grant_expires_soon(grant: CreditGrant, *, now: datetime | None = None) -> bool:
    """The grant still holds credit and expires within settings.GRANT_EXPIRES_SOON."""
    now = now or timezone.now()
    return grant.expires_at is not None and grant.remaining > 0 and now < grant.expires_at <= now + settings.GRANT_EXPIRES_SOON


def grants_expiring_soon(*, organization_id: int, now: datetime | None = None) -> QuerySet[CreditGrant]:
    """The grants `grant_expires_soon` flags, soonest first (the dashboard's notice)."""
    now = now or timezone.now()
    return CreditGrant.objects.filter(
        organization_id=organization_id, remaining__gt=0, expires_at__gt=now, expires_at__lte=now + settings.GRANT_EXPIRES_SOON
    ).order_by("expires_at", "id")
