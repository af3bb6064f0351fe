"""Reads for wallets and the ledger."""

from django.db.models import QuerySet

from payments.models import LedgerEntry, Wallet


def wallet_get(*, organization_id: int) -> Wallet:
    return Wallet.objects.select_related("organization").get(organization_id=organization_id)


def ledger_entry_list(*, organization_id: int) -> QuerySet[LedgerEntry]:
    """The wallet's own entries, newest first (system-account legs are the back office's)."""
    return (
        LedgerEntry.objects.filter(organization_id=organization_id, account="wallet").select_related("transfer").order_by("-id")
    )
