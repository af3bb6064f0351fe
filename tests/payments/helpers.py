"""Assertions shared by the money-path tests: docs/contract.md §2 invariants, checked against the database."""

from collections.abc import Iterable
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Sum

from metering.models import Hold, HoldStatus, UsageRecord, UsageRollup
from payments.models import LedgerEntry, Payment, Transfer, Wallet, WalletStripe, WebhookEvent

ZERO = Decimal(0)


def assert_money_invariants(organization_ids: Iterable[int] | None = None, *, holds: bool = True) -> None:
    """docs/contract.md §2.2, §2.4 and §2.9 for the given wallets (all when None): balance (the
    wallet row's plus its stripes') == Σ entries; each entry's balance_after is the running sum, in
    entry-id (commit) order, of the row it posted to, ending at that row's balance; no stripe is
    negative or holds anything; held == Σ active live Hold rows (unless `holds` is False, for tests
    that reserve through the ledger directly); held ≥ 0; every transfer sums to zero over at least
    two entries."""
    wallets = Wallet.objects.all()
    if organization_ids is not None:
        wallets = wallets.filter(organization_id__in=list(organization_ids))
    for wallet in wallets:
        org = wallet.organization_id
        rows = {None: wallet_row_balance(org)} | dict(
            WalletStripe.objects.filter(organization_id=org).values_list("stripe", "balance")
        )
        assert all(balance >= ZERO for stripe, balance in rows.items() if stripe is not None), rows
        assert not WalletStripe.objects.filter(organization_id=org).exclude(held=0, credit_limit=0).exists()
        assert WalletStripe.objects.filter(organization_id=org).count() == Wallet.objects.get(organization_id=org).stripes
        entries = LedgerEntry.objects.filter(organization_id=org, account="wallet").order_by("id")
        running: dict[int | None, Decimal] = {}
        for entry in entries.values("id", "amount", "balance_after", "stripe"):
            running[entry["stripe"]] = running.get(entry["stripe"], ZERO) + entry["amount"]
            assert entry["balance_after"] == running[entry["stripe"]], (org, entry, running)
        for stripe, balance in rows.items():
            assert balance == running.get(stripe, ZERO), (org, stripe, balance, running)
        for stripe, total in running.items():  # a stripe dropped when striping went off ended empty
            assert stripe in rows or total == ZERO, (org, stripe, total)
        assert wallet.balance == sum(running.values(), ZERO) == sum(rows.values(), ZERO), (org, wallet.balance, running)
        assert wallet.held >= ZERO
        if not holds:
            continue
        active = Hold.objects.filter(organization_id=org, status=HoldStatus.ACTIVE, test=False)
        assert wallet.held == (active.aggregate(s=Sum("amount"))["s"] or ZERO), org
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


def wallet_row_balance(organization_id: int) -> Decimal:
    """The wallet row's own balance column (a striped wallet's model instance carries the total)."""
    return Wallet.objects.filter(organization_id=organization_id).values_list("balance", flat=True).get()


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
