"""Assertions shared by the money-path tests: docs/contract.md §2 invariants, checked against the database."""

from collections.abc import Iterable
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Sum

from metering.models import Hold, HoldStatus, UsageRecord, UsageRollup
from payments.models import LedgerEntry, Payment, Transfer, Wallet, WebhookEvent

ZERO = Decimal(0)


def assert_money_invariants(organization_ids: Iterable[int] | None = None, *, holds: bool = True) -> None:
    """docs/contract.md §2.2 and §2.4 for the given wallets (all when None): balance == Σ entries; each
    balance_after is the running sum in entry-id (commit) order; held == Σ active live Hold rows
    (unless `holds` is False, for tests that reserve through the ledger directly); held ≥ 0; every
    transfer sums to zero over at least two entries."""
    wallets = Wallet.objects.all()
    if organization_ids is not None:
        wallets = wallets.filter(organization_id__in=list(organization_ids))
    for wallet in wallets:
        entries = LedgerEntry.objects.filter(organization_id=wallet.organization_id, account="wallet").order_by("id")
        running = ZERO
        for entry in entries.values("id", "amount", "balance_after"):
            running += entry["amount"]
            assert entry["balance_after"] == running, (wallet.organization_id, entry, running)
        assert wallet.balance == running, (wallet.organization_id, wallet.balance, running)
        assert wallet.held >= ZERO
        if not holds:
            continue
        active = Hold.objects.filter(organization_id=wallet.organization_id, status=HoldStatus.ACTIVE, test=False)
        assert wallet.held == (active.aggregate(s=Sum("amount"))["s"] or ZERO), wallet.organization_id
    transfers = Transfer.objects.all()
    if organization_ids is not None:
        transfers = transfers.filter(organization_id__in=list(organization_ids))
    unbalanced = [
        row
        for row in transfers.values("id").annotate(total=Sum("entries__amount"), n=Count("entries"))
        if row["total"] != ZERO or row["n"] < 2
    ]
    assert unbalanced == [], unbalanced
    _assert_usage_is_in_the_ledger(organization_ids)


# Live usage that cost something is in the ledger: each such record points at a usage transfer, and
# the transfer's revenue leg is exactly the cost of the records pointing at it (one record for a single
# event or a capture, a whole batch's for a batch). Transfers posted by tests straight through the
# ledger have no records and are not checked here.
_USAGE_VS_LEDGER_SQL = """
WITH records AS (
    SELECT u.transfer_id, sum(u.cost) AS cost, count(*) AS n
      FROM metering_usagerecord u
     WHERE NOT u.test AND u.cost > 0 AND (%(all)s OR u.organization_id = ANY(%(orgs)s))
     GROUP BY u.transfer_id
)
SELECT r.transfer_id, r.n, r.cost,
       (SELECT sum(e.amount) FROM payments_ledgerentry e JOIN payments_transfer t ON t.id = e.transfer_id
         WHERE e.transfer_id = r.transfer_id AND e.account = 'revenue' AND t.kind = 'usage') AS revenue
  FROM records r
"""


def _assert_usage_is_in_the_ledger(organization_ids: Iterable[int] | None) -> None:
    orgs = None if organization_ids is None else list(organization_ids)
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_VS_LEDGER_SQL, {"orgs": orgs or [], "all": orgs is None})
        mismatches = [row for row in cursor.fetchall() if row[0] is None or row[2] != row[3]]
    assert mismatches == [], f"usage and ledger disagree (transfer, records, Σ their costs, revenue leg): {mismatches}"


def money_state(organization) -> dict:
    """Everything a refused request must leave untouched: the wallet, the ledger, usage, holds,
    payments and stored provider events (of this organization, and ledger totals overall)."""
    wallet = Wallet.objects.get(organization_id=organization.pk)
    org = {"organization_id": organization.pk}
    return {
        "balance": wallet.balance,
        "held": wallet.held,
        "ledger_entries": LedgerEntry.objects.count(),
        "transfers": Transfer.objects.count(),
        "usage_records": UsageRecord.objects.filter(**org).count(),
        "rollups": list(UsageRollup.objects.filter(**org).order_by("pk").values_list("events", "cost")),
        "holds": list(Hold.objects.filter(**org).order_by("pk").values_list("pk", "status")),
        "payments": list(Payment.objects.filter(**org).order_by("pk").values_list("pk", "status", "refunded_amount")),
        "webhook_events": WebhookEvent.objects.count(),
    }


def wallet_tamper(organization_id: int, balance_sql: str) -> None:
    """Set a wallet's cached balance to `balance_sql` behind the ledger's back, as a buggy ledger
    statement would (it bumps `ledger_seq` like the ledger, so the wallet's trigger lets it through)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE payments_wallet SET balance = {balance_sql}, ledger_seq = ledger_seq + 1 WHERE organization_id = %s",
            [organization_id],
        )


def wallet_of(organization) -> Wallet:
    return Wallet.objects.get(organization_id=organization.pk)


def assert_error(response, status: int, code: str) -> dict:
    """The response is docs/contract.md §3's error body with this status and code."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]
