"""The ledger: the one place money moves.

Every change of a wallet's `balance` or `held` happens here, and every balance change posts a
transfer whose entries sum to zero (a database trigger refuses any that do not).

Locking. A wallet row is the only row ever locked for money, and it is locked by the UPDATE
that changes it (an UPDATE takes the same row lock as SELECT … FOR UPDATE, without the extra
round trip). Callers that must lock more than the wallet take locks in this order:
organization's wallet → hold → payment. Nothing here talks to the network.

Each posting is ONE statement (a data-modifying CTE): check the limit, move the balance, write
the transfer and both entries. The hot path goes further: `usage_charge_in_one_statement` runs the
posting together with the caller's own rows (metering's usage record) as a single autocommit
statement, so the wallet's row lock is held only while PostgreSQL executes and commits it — which
is what bounds a hot wallet's throughput (see PERF-NOTES).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing_site import metrics
from billing_site.errors import DomainError, ErrorCode
from billing_site.money import ZERO
from payments.models import Account, TransferKind, Wallet

logger = logging.getLogger(__name__)


class InsufficientBalance(DomainError):
    code = ErrorCode.INSUFFICIENT_BALANCE
    message = "The organization's available balance is too low for this request."


@dataclass(frozen=True, slots=True)
class Posting:
    transfer_id: int | None  # None when nothing moved (a zero amount)
    balance_after: Decimal
    held_after: Decimal


# The overdraft rule (SPEC §2.4), over the wallet row an UPDATE is changing: nothing new starts (a
# debit, even of zero, or a hold) while `available` is at or below `-credit_limit`, and after it
# `available` is still at or above `-credit_limit`. Credits, releases and a hold's capture of
# delivered usage are not checked (`%(unchecked)s`). `affordable` below is the same rule in Python.
OVERDRAFT_RULE = (
    "(%(unchecked)s OR (balance - held > -credit_limit AND balance + %(delta)s - (held + %(held_delta)s) >= -credit_limit))"
)


def affordable(*, balance: Decimal, held: Decimal, credit_limit: Decimal, cost: Decimal) -> bool:
    """OVERDRAFT_RULE for a debit of `cost` (≥ 0) that changes no hold, on values read under the lock."""
    return balance - held > -credit_limit and balance - cost - held >= -credit_limit


# The posting as CTEs: `w` is the wallet row after the move (its UPDATE takes the row lock and bumps
# `ledger_seq`, which the wallet's trigger requires of every balance change), `t` the transfer, `e`
# its two balanced entries.
_POST_CTES = f"""
w AS (
    UPDATE payments_wallet
       SET balance = balance + %(delta)s, held = held + %(held_delta)s, ledger_seq = ledger_seq + 1,
           -- a credit that lifts the balance back to the threshold re-arms the low-balance alert
           low_balance_alerted = low_balance_alerted AND NOT (%(delta)s > 0 AND balance + %(delta)s >= low_balance_threshold)
     WHERE organization_id = %(org)s AND {OVERDRAFT_RULE}
 RETURNING balance, held, balance < low_balance_threshold AND NOT low_balance_alerted AS crossed
), t AS (
    INSERT INTO payments_transfer (organization_id, kind, reference, created_by_id, memo, created_at)
    SELECT %(org)s, %(kind)s, %(reference)s, %(created_by)s, %(memo)s, %(now)s FROM w
 RETURNING id
), e AS (
    INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, created_at)
    SELECT t.id, %(org)s, 'wallet', %(delta)s, w.balance, %(now)s FROM t, w
    UNION ALL
    SELECT t.id, %(org)s, %(counter)s, -%(delta)s, NULL, %(now)s FROM t
)"""
_POST_SQL = f"WITH {_POST_CTES}\nSELECT t.id, w.balance, w.held, w.crossed FROM w, t"


def post_statement(companion_ctes: str) -> str:
    """The usage posting extended with a caller's own writes, for `usage_charge_in_one_statement`.
    `companion_ctes` may read `w` (balance) and `t` (id) and must end in a CTE named `companion`
    that yields one row; its columns come back after the posting's."""
    return f"WITH {_POST_CTES},\n{companion_ctes}\nSELECT t.id, w.balance, w.held, w.crossed, companion.* FROM w, t, companion"


# A change of holds alone (a hold, a release, or a zero-cost debit that changes nothing but must
# still pass the overdraft rule).
_HELD_SQL = f"""
UPDATE payments_wallet
   SET held = held + %(held_delta)s, ledger_seq = ledger_seq + 1
 WHERE organization_id = %(org)s AND {OVERDRAFT_RULE}
RETURNING balance, held
"""


def wallet_open_for_organization(sender, *, organization, **kwargs) -> Wallet:
    """Receiver of `organization_created`: every organization has exactly one wallet, from birth."""
    return Wallet.objects.create(organization=organization, currency=settings.CURRENCY)


def transfer_post(
    *,
    organization_id: int,
    kind: TransferKind,
    amount: Decimal,
    counter_account: Account,
    reference: str = "",
    memo: str = "",
    created_by_id: int | None = None,
    release_held: Decimal = ZERO,
    may_overdraw: bool = False,
) -> Posting:
    """Move `amount` into the wallet (negative: out of it) against `counter_account`, and free
    `release_held` of the wallet's holds in the same statement.

    Refuses (InsufficientBalance, nothing written) when the wallet would end below
    `-credit_limit` after the move, unless `may_overdraw` (a hold's capture of usage already
    delivered, SPEC §2.4) or the amount is a credit. Joins the caller's transaction if any.
    """
    if counter_account == Account.WALLET:
        raise ValueError("a transfer's counter account must be a system account")
    if amount == ZERO:
        return _held_change(
            organization_id=organization_id, held_delta=-release_held, unchecked=may_overdraw or release_held > ZERO
        )
    params = {
        "org": organization_id,
        "delta": amount,
        "held_delta": -release_held,
        "unchecked": may_overdraw or amount > ZERO,
        "kind": kind,
        "reference": reference,
        "created_by": created_by_id,
        "memo": memo,
        "now": timezone.now(),
        "counter": counter_account,
    }
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_POST_SQL, params)
        row = cursor.fetchone()
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    if row is None:
        raise InsufficientBalance()
    transfer_id, balance_after, held_after, crossed_threshold = row
    if crossed_threshold:
        _alert_low_balance_after_commit(organization_id)
    return Posting(transfer_id=transfer_id, balance_after=balance_after, held_after=held_after)


def usage_charge_in_one_statement(*, statement: str, organization_id: int, cost: Decimal, reference: str,
                                  params: dict) -> tuple[Posting, tuple]:  # fmt: skip
    """Debit usage (wallet → revenue) and write the caller's rows in ONE statement built by
    `post_statement`. Outside a transaction it commits by itself: one round trip, and the wallet's
    row lock is held only while PostgreSQL runs and commits it. Raises InsufficientBalance (nothing
    written); an error in the caller's writes (e.g. a unique violation) rolls the money back too.
    Answers the posting and the caller's `companion` columns."""
    if cost <= ZERO:
        raise ValueError("a one-statement usage charge moves a positive cost")
    params = {
        **params,
        "org": organization_id,
        "delta": -cost,
        "held_delta": ZERO,
        "unchecked": False,
        "kind": TransferKind.USAGE,
        "reference": reference,
        "created_by": None,
        "memo": "",
        "counter": Account.REVENUE,
    }
    params.setdefault("now", timezone.now())
    # Inside a caller's transaction, a savepoint keeps a failed statement from poisoning it.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    started = time.perf_counter()
    with scope, connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    if row is None:
        raise InsufficientBalance()
    transfer_id, balance_after, held_after, crossed_threshold, *companion = row
    if crossed_threshold:
        _alert_low_balance_after_commit(organization_id)
    return Posting(transfer_id=transfer_id, balance_after=balance_after, held_after=held_after), tuple(companion)


def _alert_low_balance_after_commit(organization_id: int) -> None:
    """Queue the low-balance alert once the debit commits. The task re-checks and flips the flag
    under the wallet lock, so a crossing alerts once however many debits saw it."""

    def enqueue() -> None:
        from payments.tasks import low_balance_alert

        try:
            low_balance_alert.delay(organization_id)
        except Exception:  # a broker outage must never fail a debit that already committed
            logger.exception("could not queue the low-balance alert of organization %s", organization_id)

    transaction.on_commit(enqueue)


def _held_change(*, organization_id: int, held_delta: Decimal, unchecked: bool) -> Posting:
    with connection.cursor() as cursor:
        cursor.execute(_HELD_SQL, {"org": organization_id, "held_delta": held_delta, "delta": ZERO, "unchecked": unchecked})
        row = cursor.fetchone()
    if row is None:
        raise InsufficientBalance()
    return Posting(transfer_id=None, balance_after=row[0], held_after=row[1])


def wallet_hold(*, organization_id: int, amount: Decimal) -> Posting:
    """Reserve `amount` (no entry is posted); refused by the overdraft rule. A hold is what bounds
    an over-capture (SPEC §2.4), so it is always positive."""
    if amount <= ZERO:
        raise ValueError("a hold reserves a positive amount")
    return _held_change(organization_id=organization_id, held_delta=amount, unchecked=False)


def wallet_release(*, organization_id: int, amount: Decimal) -> Posting:
    """Free `amount` of the wallet's holds."""
    return _held_change(organization_id=organization_id, held_delta=-amount, unchecked=True)


def wallet_lock(*, organization_id: int) -> None:
    """Lock the wallet's row until the caller's transaction ends: for callers that must check another
    row (a hold) under the wallet's lock before moving money, in the documented order wallet → hold."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("wallet_lock must run inside a transaction")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM payments_wallet WHERE organization_id = %s FOR UPDATE", [organization_id])


def usage_charge(*, organization_id: int, cost: Decimal, reference: str = "", release_held: Decimal = ZERO,
                 may_overdraw: bool = False) -> Posting:  # fmt: skip
    """Debit usage: wallet → revenue."""
    return transfer_post(
        organization_id=organization_id,
        kind=TransferKind.USAGE,
        amount=-cost,
        counter_account=Account.REVENUE,
        reference=reference,
        release_held=release_held,
        may_overdraw=may_overdraw,
    )


_BATCH_TRANSFERS_SQL = """
WITH t AS (
    INSERT INTO payments_transfer (id, organization_id, kind, reference, memo, created_at)
    SELECT u.id, %(org)s, 'usage', u.reference, '', %(now)s FROM unnest(%(ids)s::bigint[], %(references)s::text[]) AS u(id, reference)
)
INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, created_at)
SELECT u.id, %(org)s, 'wallet', -u.cost, u.balance_after, %(now)s
  FROM unnest(%(ids)s::bigint[], %(costs)s::numeric[], %(balances)s::numeric[]) AS u(id, cost, balance_after)
UNION ALL
SELECT u.id, %(org)s, 'revenue', u.cost, NULL, %(now)s FROM unnest(%(ids)s::bigint[], %(costs)s::numeric[]) AS u(id, cost)
"""


class Refusal(StrEnum):
    BALANCE = "balance"  # the wallet cannot afford it
    BUDGET = "budget"  # it would pass the caller's budget (e.g. an API key's remaining spend cap)


def usage_charge_batch(*, organization_id: int, charges: Sequence[tuple[Decimal, str]],
                       budget: Decimal | None = None) -> list[Posting | Refusal]:  # fmt: skip
    """Charge (cost, reference) pairs in order under one wallet lock, each only if it fits the
    wallet and the optional `budget` on the total, as if they came one by one; a Refusal where it
    does not. Must run inside the caller's transaction. A transfer per charge; four statements
    whatever the batch size."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("usage_charge_batch must run inside a transaction")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT balance, held, credit_limit, low_balance_threshold, low_balance_alerted"
            " FROM payments_wallet WHERE organization_id = %s FOR UPDATE",
            [organization_id],
        )
        balance, held, credit_limit, threshold, alerted = cursor.fetchone()
        postings: list[Posting | Refusal] = []
        charged: list[tuple[Decimal, str, Decimal, int]] = []  # cost, reference, balance after, index
        for cost, reference in charges:
            if budget is not None and cost > budget:
                postings.append(Refusal.BUDGET)
            elif not affordable(balance=balance, held=held, credit_limit=credit_limit, cost=cost):
                postings.append(Refusal.BALANCE)
            elif cost == ZERO:
                postings.append(Posting(transfer_id=None, balance_after=balance, held_after=held))
            else:
                balance -= cost
                budget = None if budget is None else budget - cost
                charged.append((cost, reference, balance, len(postings)))
                postings.append(Refusal.BALANCE)  # replaced below once the transfer ids exist
        if not charged:
            return postings
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('payments_transfer', 'id')) FROM generate_series(1, %s)", [len(charged)]
        )
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(_BATCH_TRANSFERS_SQL, {
            "org": organization_id, "now": timezone.now(), "ids": ids, "references": [c[1] for c in charged],
            "costs": [c[0] for c in charged], "balances": [c[2] for c in charged],
        })  # fmt: skip
        cursor.execute(
            "UPDATE payments_wallet SET balance = %s, ledger_seq = ledger_seq + 1 WHERE organization_id = %s",
            [balance, organization_id],
        )
    if balance < threshold and not alerted:
        _alert_low_balance_after_commit(organization_id)
    for transfer_id, (_, _, balance_after, index) in zip(ids, charged, strict=True):
        postings[index] = Posting(transfer_id=transfer_id, balance_after=balance_after, held_after=held)
    return postings


def wallet_adjust(*, organization_id: int, amount: Decimal, reason: str, created_by_id: int | None) -> Posting:
    """A staff adjustment with a mandatory reason: `adjustments` ↔ wallet. A negative adjustment
    may not take the wallet below its limit."""
    if not reason.strip():
        raise ValueError("an adjustment needs a reason")
    with transaction.atomic(durable=True):
        return transfer_post(
            organization_id=organization_id,
            kind=TransferKind.ADJUSTMENT,
            amount=amount,
            counter_account=Account.ADJUSTMENTS,
            reference="staff",
            memo=reason,
            created_by_id=created_by_id,
        )


def wallet_credit(*, organization_id: int, amount: Decimal, kind: TransferKind, counter_account: Account,
                  reference: str, memo: str = "", created_by_id: int | None = None) -> Posting:  # fmt: skip
    """Credit the wallet (recharge from payments_clearing, redemption from promotions, …)."""
    if amount <= ZERO:
        raise ValueError("a credit is positive")
    return transfer_post(
        organization_id=organization_id,
        kind=kind,
        amount=amount,
        counter_account=counter_account,
        reference=reference,
        memo=memo,
        created_by_id=created_by_id,
    )
