"""The ledger: the one place money moves.

Every change of a wallet's `balance` or `held` happens here, and every balance change posts a
transfer whose entries sum to zero (a database trigger refuses any that do not). A second trigger
refuses any change of `balance` or `held` that does not bump the wallet's `ledger_seq` by one, which
only these statements do.

Each posting is ONE statement (a data-modifying CTE): check the overdraft rule, move the balance
(the UPDATE takes the wallet's row lock), write the transfer and both entries. The hot path goes
further: `usage_charge_in_one_statement` runs the posting together with the caller's own rows
(metering's usage record) as a single autocommit statement, so the wallet's row lock is held only
while PostgreSQL executes and commits it. The lock order is in `billing_site/locks.py`. Nothing here
talks to the network or imports the task layer: a low-balance crossing is announced with the
`low_balance_crossed` signal once the posting commits.

The rules each have one encoding here: `OVERDRAFT_RULE` (SQL) / `affordable` (Python, for the batch,
which decides under a lock it took itself), and `LOW_BALANCE_CROSSED`.
Statement parameters are all named `ledger_*`, so a caller's own parameters cannot collide with them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from billing_site import locks, metrics
from billing_site.db import prepared_cursor
from billing_site.errors import DomainError, ErrorCode
from billing_site.money import ZERO
from payments.models import Account, TransferKind, Wallet

if TYPE_CHECKING:
    from accounts.models import Organization

# Sent after the commit of a posting that took a wallet below its low-balance threshold (kwargs:
# organization_id). The payments app's receiver queues the alert; the ledger never imports tasks.
low_balance_crossed_signal = Signal()


class InsufficientBalance(DomainError):
    code = ErrorCode.INSUFFICIENT_BALANCE
    message = "The organization's available balance is too low for this request."


@dataclass(frozen=True, slots=True)
class Posting:
    transfer_id: int | None  # None when nothing moved (a zero amount)
    amount: Decimal  # what moved into the wallet (negative: out of it)
    balance_after: Decimal
    held_after: Decimal


# The overdraft rule (docs/contract.md §2.4), over the wallet row an UPDATE is changing: nothing new starts (a
# debit, even of zero, or a hold) while `available` is at or below `-credit_limit`, and after it
# `available` is still at or above `-credit_limit`. Credits, releases and a hold's capture of
# delivered usage are not checked (`ledger_unchecked`). `affordable` is the same rule in Python.
OVERDRAFT_RULE = (
    "(%(ledger_unchecked)s OR (balance - held > -credit_limit"
    " AND balance + %(ledger_delta)s - (held + %(ledger_held_delta)s) >= -credit_limit))"
)


def affordable(*, balance: Decimal, held: Decimal, credit_limit: Decimal, cost: Decimal) -> bool:
    """OVERDRAFT_RULE for a debit of `cost` (≥ 0) that changes no hold, on values read under the lock."""
    return balance - held > -credit_limit and balance - cost - held >= -credit_limit


# A posting took the wallet below its threshold and no alert went out for this crossing yet (the
# alert task claims the crossing with this same condition; a credit back to the threshold re-arms it).
LOW_BALANCE_CROSSED = "balance < low_balance_threshold AND NOT low_balance_alerted"


# The posting as CTEs: `w` is the wallet row after the move (its UPDATE takes the row lock and bumps
# `ledger_seq`, which the wallet's trigger requires of every balance change), `t` the transfer, `e`
# its two balanced entries.
_POST_CTES = f"""
w AS (
    UPDATE payments_wallet
       SET balance = balance + %(ledger_delta)s, held = held + %(ledger_held_delta)s, ledger_seq = ledger_seq + 1,
           -- a credit that lifts the balance back to the threshold re-arms the low-balance alert
           low_balance_alerted = low_balance_alerted
               AND NOT (%(ledger_delta)s > 0 AND balance + %(ledger_delta)s >= low_balance_threshold)
     WHERE organization_id = %(ledger_org)s AND {OVERDRAFT_RULE}
 RETURNING balance, held, {LOW_BALANCE_CROSSED} AS crossed
), t AS (
    INSERT INTO payments_transfer (organization_id, kind, reference, created_by_id, memo, created_at)
    SELECT %(ledger_org)s, %(ledger_kind)s, %(ledger_reference)s, %(ledger_created_by)s, %(ledger_memo)s, %(ledger_now)s
      FROM w
 RETURNING id
), e AS (
    INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, created_at)
    SELECT t.id, %(ledger_org)s, 'wallet', %(ledger_delta)s, w.balance, %(ledger_now)s FROM t, w
    UNION ALL
    SELECT t.id, %(ledger_org)s, %(ledger_counter)s, -%(ledger_delta)s, NULL, %(ledger_now)s FROM t
)"""
_POST_SQL = f"WITH {_POST_CTES}\nSELECT t.id, w.balance, w.held, w.crossed FROM w, t"


def post_statement(companion_ctes: str) -> str:
    """The usage posting extended with a caller's own writes, for `usage_charge_in_one_statement`.
    `companion_ctes` may read `w` (balance) and `t` (id) and must end in a CTE named `companion`
    that yields one row; its columns come back after the posting's."""
    return f"WITH {_POST_CTES},\n{companion_ctes}\nSELECT t.id, w.balance, w.held, w.crossed, companion.* FROM w, t, companion"


# A change of holds alone: a hold, a release, or a zero-cost debit (which moves nothing but must
# still pass the overdraft rule).
_HELD_SQL = f"""
UPDATE payments_wallet
   SET held = held + %(ledger_held_delta)s, ledger_seq = ledger_seq + 1
 WHERE organization_id = %(ledger_org)s AND {OVERDRAFT_RULE}
RETURNING balance, held
"""


def posting_params(
    *,
    organization_id: int,
    amount: Decimal,
    counter_account: Account,
    kind: TransferKind,
    reference: str = "",
    memo: str = "",
    created_by_id: int | None = None,
    release_held: Decimal = ZERO,
    unchecked: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The parameters of `_POST_SQL` / `post_statement` for one posting (all named `ledger_*`)."""
    return {
        "ledger_org": organization_id,
        "ledger_delta": amount,
        "ledger_held_delta": -release_held,
        "ledger_unchecked": unchecked,
        "ledger_kind": kind,
        "ledger_reference": reference,
        "ledger_created_by": created_by_id,
        "ledger_memo": memo,
        "ledger_now": now or timezone.now(),
        "ledger_counter": counter_account,
    }


def wallet_open_for_organization(sender: object, *, organization: Organization, **kwargs: Any) -> Wallet:
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

    A debit (a negative or zero amount) passes the overdraft rule or is refused (InsufficientBalance,
    nothing written), unless `may_overdraw` (a hold's capture of usage already delivered, docs/contract.md §2.4).
    Joins the caller's transaction if any.
    """
    if counter_account == Account.WALLET:
        raise ValueError("a transfer's counter account must be a system account")
    if amount == ZERO:
        return _held_change(
            organization_id=organization_id, held_delta=-release_held, unchecked=may_overdraw or release_held > ZERO
        )
    params = posting_params(
        organization_id=organization_id,
        amount=amount,
        counter_account=counter_account,
        kind=kind,
        reference=reference,
        memo=memo,
        created_by_id=created_by_id,
        release_held=release_held,
        unchecked=may_overdraw or amount > ZERO,
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_POST_SQL, params)
        row = cursor.fetchone()
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    if row is None:
        raise InsufficientBalance()
    transfer_id, balance_after, held_after, crossed_threshold = row
    if crossed_threshold:
        _announce_low_balance_after_commit(organization_id)
    return Posting(transfer_id=transfer_id, amount=amount, balance_after=balance_after, held_after=held_after)


def usage_charge_in_one_statement(
    *, statement: str, organization_id: int, cost: Decimal, reference: str, params: dict[str, Any], now: datetime
) -> tuple[Posting, tuple[Any, ...]]:
    """Debit usage (wallet → revenue) and write the caller's rows in ONE statement built by
    `post_statement`. Outside a transaction it commits by itself: one round trip, and the wallet's
    row lock is held only while PostgreSQL runs and commits it. Raises InsufficientBalance (nothing
    written); an error in the caller's writes (e.g. a unique violation) rolls the money back too.
    Answers the posting and the caller's `companion` columns."""
    if cost <= ZERO:
        raise ValueError("a one-statement usage charge moves a positive cost")
    params = {
        **params,
        **posting_params(
            organization_id=organization_id,
            amount=-cost,
            counter_account=Account.REVENUE,
            kind=TransferKind.USAGE,
            reference=reference,
            now=now,
        ),
    }
    # Inside a caller's transaction, a savepoint keeps a failed statement from poisoning it.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    started = time.perf_counter()
    with scope, prepared_cursor() as cursor:  # parsed and planned once per connection
        cursor.execute(statement, params)
        row = cursor.fetchone()
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    if row is None:
        raise InsufficientBalance()
    transfer_id, balance_after, held_after, crossed_threshold, *companion = row
    if crossed_threshold:
        _announce_low_balance_after_commit(organization_id)
    return Posting(transfer_id=transfer_id, amount=-cost, balance_after=balance_after, held_after=held_after), tuple(companion)


def _announce_low_balance_after_commit(organization_id: int) -> None:
    """Announce the crossing once the debit commits. The alert re-checks and flips the flag, so a
    crossing alerts once however many debits saw it."""
    transaction.on_commit(lambda: low_balance_crossed_signal.send(sender=Wallet, organization_id=organization_id))


def _held_change(*, organization_id: int, held_delta: Decimal, unchecked: bool) -> Posting:
    params: dict[str, Any] = {
        "ledger_org": organization_id,
        "ledger_held_delta": held_delta,
        "ledger_delta": ZERO,
        "ledger_unchecked": unchecked,
    }
    with connection.cursor() as cursor:
        cursor.execute(_HELD_SQL, params)
        row = cursor.fetchone()
    if row is None:
        raise InsufficientBalance()
    return Posting(transfer_id=None, amount=ZERO, balance_after=row[0], held_after=row[1])


def wallet_hold(*, organization_id: int, amount: Decimal) -> Posting:
    """Reserve `amount` (no entry is posted); refused by the overdraft rule. A hold is what bounds
    an over-capture (docs/contract.md §2.4), so it is always positive."""
    if amount <= ZERO:
        raise ValueError("a hold reserves a positive amount")
    return _held_change(organization_id=organization_id, held_delta=amount, unchecked=False)


def wallet_release(*, organization_id: int, amount: Decimal) -> Posting:
    """Free `amount` of the wallet's holds."""
    return _held_change(organization_id=organization_id, held_delta=-amount, unchecked=True)


def usage_charge(
    *, organization_id: int, cost: Decimal, reference: str = "", release_held: Decimal = ZERO, may_overdraw: bool = False
) -> Posting:
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


class Refusal(StrEnum):
    BALANCE = "balance"  # the wallet cannot afford it
    BUDGET = "budget"  # it would pass the caller's budget (e.g. an API key's remaining spend cap)


def usage_charge_batch(
    *,
    organization_id: int,
    costs: Sequence[Decimal],
    reference: str,
    budget: Decimal | None = None,
    locked: locks.WalletState | None = None,
) -> list[Posting | Refusal]:
    """Charge `costs` in order under one wallet lock, each only if it fits the wallet and the
    optional `budget` on the total, as if they came one by one; a Refusal where it does not.

    What is charged posts as ONE usage transfer (wallet → revenue, the sum): the batch's events share
    its id, and each event's Posting carries the running balance after it, which its usage record
    keeps. So the ledger grows by three rows per batch, not per event, and its wallet entry's
    `balance_after` is the balance after the last event. Must run inside the caller's transaction;
    `locked` is the wallet's state when the caller already took its lock. Two statements whatever the
    batch size."""
    wallet = locked or locks.wallet_lock(organization_id=organization_id)
    balance, held = wallet.balance, wallet.held
    outcomes: list[Decimal | Refusal] = []  # the balance after each charged event, or its refusal
    total = ZERO
    for cost in costs:
        if budget is not None and cost > budget:
            outcomes.append(Refusal.BUDGET)
        elif not affordable(balance=balance, held=held, credit_limit=wallet.credit_limit, cost=cost):
            outcomes.append(Refusal.BALANCE)
        else:
            balance -= cost
            total += cost
            budget = None if budget is None else budget - cost
            outcomes.append(balance)
    transfer_id = None
    if total > ZERO:
        # Every step passed the overdraft rule above, so the sum does too: the statement re-checks it.
        posting = usage_charge(organization_id=organization_id, cost=total, reference=reference)
        if posting.balance_after != balance:
            raise RuntimeError("the wallet's balance moved while this transaction held its lock")
        transfer_id = posting.transfer_id
    return [
        outcome
        if isinstance(outcome, Refusal)
        else Posting(transfer_id=transfer_id if cost > ZERO else None, amount=-cost, balance_after=outcome, held_after=held)
        for cost, outcome in zip(costs, outcomes, strict=True)
    ]


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


def wallet_credit(
    *,
    organization_id: int,
    amount: Decimal,
    kind: TransferKind,
    counter_account: Account,
    reference: str,
    memo: str = "",
    created_by_id: int | None = None,
) -> Posting:
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
