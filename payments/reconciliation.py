"""Reconciliation (docs/contract.md §2.2): over any period, cash in − revenue − refunds + promotions ±
adjustments must equal the change in the sum of all wallet balances; and every wallet's cached
balance (its row's plus its stripes') must equal the sum of its entries, each row's last entry's
`balance_after` equal to that row's balance."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing_site import metrics
from billing_site.money import ZERO
from payments.models import Account, LedgerEntry

logger = logging.getLogger(__name__)
MISMATCH_GAUGE = metrics.RECONCILIATION_MISMATCHES
LAST_RUN_CACHE_KEY = "reconciliation:last-run"


@dataclass
class ReconciliationReport:
    period_start: datetime | None
    period_end: datetime
    cash_in: Decimal  # recharges, net of refunds' reversal: what payments_clearing gave wallets
    refunds: Decimal
    revenue: Decimal
    promotions: Decimal
    adjustments: Decimal
    wallet_change: Decimal
    wallet_total: Decimal
    wallet_mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expected_change(self) -> Decimal:
        return self.cash_in - self.revenue - self.refunds + self.promotions + self.adjustments

    @property
    def identity_holds(self) -> bool:
        return self.expected_change == self.wallet_change

    @property
    def ok(self) -> bool:
        return self.identity_holds and not self.wallet_mismatches


def _leg_totals(start: datetime | None, end: datetime) -> dict[tuple[str, str], Decimal]:
    entries = LedgerEntry.objects.filter(created_at__lt=end)
    if start is not None:
        entries = entries.filter(created_at__gte=start)
    rows = entries.values("account", "transfer__kind").annotate(total=Sum("amount"))
    return {(row["account"], row["transfer__kind"]): row["total"] for row in rows}


# A wallet's balance is its row's plus its stripes' (a high-volume wallet, docs/contract.md §2.9); each
# row — the wallet's, each stripe's — must equal the `balance_after` of its own last entry.
_WALLET_CHECK_SQL = """
SELECT w.organization_id, w.balance + COALESCE(st.total, 0) AS balance, COALESCE(e.total, 0) AS entries_total, last.balance_after
  FROM payments_wallet w
  LEFT JOIN (SELECT organization_id, SUM(balance) AS total FROM payments_walletstripe GROUP BY organization_id) st
         ON st.organization_id = w.organization_id
  LEFT JOIN (SELECT organization_id, SUM(amount) AS total FROM payments_ledgerentry WHERE account = 'wallet' GROUP BY organization_id) e
         ON e.organization_id = w.organization_id
  LEFT JOIN LATERAL (SELECT balance_after FROM payments_ledgerentry
                      WHERE organization_id = w.organization_id AND account = 'wallet' AND stripe IS NULL
                      ORDER BY id DESC LIMIT 1) last ON true
 WHERE w.balance + COALESCE(st.total, 0) <> COALESCE(e.total, 0)
    OR (last.balance_after IS NOT NULL AND last.balance_after <> w.balance)
    OR EXISTS (SELECT 1 FROM payments_walletstripe s
                 LEFT JOIN LATERAL (SELECT balance_after FROM payments_ledgerentry
                                     WHERE organization_id = s.organization_id AND stripe = s.stripe
                                     ORDER BY id DESC LIMIT 1) l ON true
                WHERE s.organization_id = w.organization_id AND s.balance <> COALESCE(l.balance_after, 0))
"""


def reconciliation_report(*, start: datetime | None = None, end: datetime | None = None) -> ReconciliationReport:
    end = end or timezone.now()
    legs = _leg_totals(start, end)

    def system(account: str, kind: str | None = None) -> Decimal:
        # A system account's leg is the mirror of the wallet's: what it gave wallets is its negation.
        return -sum((total for (acc, k), total in legs.items() if acc == account and (kind is None or k == kind)), ZERO)

    with connection.cursor() as cursor:
        cursor.execute(_WALLET_CHECK_SQL)
        mismatches = [
            {"organization_id": org, "balance": balance, "entries_total": total, "last_balance_after": last}
            for org, balance, total, last in cursor.fetchall()
        ]
    wallet_total = LedgerEntry.objects.filter(account=Account.WALLET).aggregate(total=Sum("amount"))["total"] or ZERO
    return ReconciliationReport(
        period_start=start,
        period_end=end,
        cash_in=system(Account.PAYMENTS_CLEARING, "recharge"),
        refunds=-system(Account.PAYMENTS_CLEARING, "refund"),
        revenue=-system(Account.REVENUE),
        promotions=system(Account.PROMOTIONS),
        adjustments=system(Account.ADJUSTMENTS),
        wallet_change=sum((total for (acc, _), total in legs.items() if acc == Account.WALLET), ZERO),
        wallet_total=wallet_total,
        wallet_mismatches=mismatches,
    )


def reconciliation_run(*, start: datetime | None = None, end: datetime | None = None) -> ReconciliationReport:
    """The beat task's body: build the report, log and export any mismatch."""
    report = reconciliation_report(start=start, end=end)
    failures = len(report.wallet_mismatches) + (0 if report.identity_holds else 1)
    MISMATCH_GAUGE.set(failures)
    if failures:
        logger.error(
            "reconciliation failed: identity_holds=%s wallet_mismatches=%s", report.identity_holds, report.wallet_mismatches[:20]
        )
    # For the back office's front page, which must not recompute every wallet on each visit.
    cache.set(LAST_RUN_CACHE_KEY, {"ok": report.ok, "failures": failures, "at": report.period_end}, timeout=None)
    return report


def reconciliation_last_run() -> dict[str, Any] | None:
    """`{ok, failures, at}` of the last whole-ledger reconciliation (the hourly beat task, or staff
    opening the reconciliation page); None when none ran since the cache was last emptied."""
    last: dict[str, Any] | None = cache.get(LAST_RUN_CACHE_KEY)
    return last
