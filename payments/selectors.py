"""Reads for wallets and the ledger."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from billing_site.money import ZERO
from payments.models import (
    Account,
    LedgerEntry,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    TransferKind,
    Wallet,
    WebhookEvent,
)


def wallet_get(*, organization_id: int) -> Wallet:
    return Wallet.objects.select_related("organization").get(organization_id=organization_id)


def ledger_entry_list(*, organization_id: int) -> QuerySet[LedgerEntry]:
    """The wallet's own entries, newest first (system-account legs are the back office's)."""
    return (
        LedgerEntry.objects.filter(organization_id=organization_id, account="wallet").select_related("transfer").order_by("-id")
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
