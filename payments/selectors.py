"""Reads for wallets and the ledger."""

from django.db.models import F, QuerySet, Sum, Window

from payments.models import LedgerEntry, Payment, PaymentStatus, TransferKind, Wallet


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
