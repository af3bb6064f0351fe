"""Reads for wallets and the ledger."""

from django.db.models import QuerySet

from payments.models import LedgerEntry, Payment, PaymentStatus, Wallet


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
