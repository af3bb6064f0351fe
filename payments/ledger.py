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
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Any, Protocol

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from accounts.models import Organization
from billing_site import locks, metrics
from billing_site.db import prepared_cursor
from billing_site.errors import DomainError, ErrorCode
from billing_site.money import MONEY_QUANTUM, ZERO
from payments.models import STRIPES_MAX, STRIPES_MIN, Account, TransferKind, Wallet, WalletStripe, stripes_balance

# Sent after the commit of a posting that took a wallet below its low-balance threshold (kwargs:
# organization_id). The payments app's receiver queues the alert; the ledger never imports tasks.
low_balance_crossed_signal = Signal()
# Sent after the commit of a posting that put money into the wallet from outside (a recharge, a
# redemption, a staff adjustment; kwargs: organization_id). Metering's receiver queues the collection
# of a subscription fee left unpaid (past_due); the ledger never imports metering.
wallet_credited_signal = Signal()
# Sent after the commit of a posting (or a hold) that left `available` below the auto top-up's threshold
# (kwargs: organization_id); the auto top-up's receiver starts at most one recharge (docs/credits.md).
auto_recharge_due_signal = Signal()
# Sent after the commit of a usage posting (or a hold) whose budget spends reached a higher alert level
# (kwargs: organization_id, spend_ids); the alert task claims each level once per period.
budget_alert_signal = Signal()
_CREDITS_ANNOUNCED = frozenset({TransferKind.RECHARGE, TransferKind.REDEMPTION, TransferKind.ADJUSTMENT})


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
# Credit that expired but is not written off yet (the expiry task runs every minute) is not spendable:
# the rule counts it as held (docs/credits.md).
EXPIRED_UNWRITTEN = (
    "(SELECT COALESCE(sum(g.remaining), 0) FROM payments_creditgrant g"
    " WHERE g.organization_id = %(ledger_org)s AND g.remaining > 0 AND g.expires_at <= %(ledger_now)s)"
)
OVERDRAFT_RULE = (
    "(%(ledger_unchecked)s OR (SELECT balance - held - x.expired > -credit_limit"
    " AND balance + %(ledger_delta)s - (held + %(ledger_held_delta)s) - x.expired >= -credit_limit"
    f" FROM (SELECT {EXPIRED_UNWRITTEN} AS expired) AS x))"
)


def affordable(*, balance: Decimal, held: Decimal, credit_limit: Decimal, cost: Decimal) -> bool:
    """OVERDRAFT_RULE for a debit of `cost` (≥ 0) that changes no hold, on values read under the lock
    (`held` including expired credit not yet written off: `locks.WalletState.unavailable`)."""
    return balance - held > -credit_limit and balance - cost - held >= -credit_limit


def _wallet_total(balance: str) -> str:
    """The organization's balance, in a statement over its wallet row: `balance` (the row's own part)
    plus its stripes' (a high-volume wallet's; the subquery runs only for one)."""
    return (
        f"({balance} + CASE WHEN stripes = 0 THEN 0 ELSE (SELECT COALESCE(sum(s.balance), 0) FROM payments_walletstripe s"
        " WHERE s.organization_id = payments_wallet.organization_id) END)"
    )


# A posting took the wallet below its threshold and no alert went out for this crossing yet (the
# alert task claims the crossing with this same condition; a credit back to the threshold re-arms it).
LOW_BALANCE_CROSSED = f"{_wallet_total('balance')} < low_balance_threshold AND NOT low_balance_alerted"


def _auto_due(total: str, held: str, below: str) -> str:
    """The posting left `available` below the auto top-up's threshold (docs/credits.md)."""
    return f"({below} IS NOT NULL AND {total} - {held} < {below})"


# The budgets a usage posting counts against (docs/credits.md), as CTEs that run before the wallet's
# UPDATE (which waits for `budget_ok`, so the budget spends' row locks come first: billing_site/locks.py).
# `budget_spend` adds the cost to this period's spend of every budget that applies (the organization's,
# and its API key's), creating the period's row on its first debit; a hard budget's row takes it only
# while it stays within the ceiling — the upsert's row lock and re-check make that exact at any
# concurrency. `budget_ok`: every budget took it. Nothing applies when `ledger_budget_cost` is 0.
_BUDGET_CTES = """budget_rule AS (
    SELECT b.id, b.amount, CASE WHEN b.mode = 'hard' THEN b.amount END AS ceiling,
           date_trunc(b.period, %(ledger_now)s::timestamptz, 'UTC') AS period_start
      FROM payments_budget b
     WHERE %(ledger_budget_cost)s::numeric > 0 AND b.organization_id = %(ledger_org)s
       AND (b.api_key_id IS NULL OR b.api_key_id = %(ledger_key)s::bigint)
), budget_spend AS (
    INSERT INTO payments_budgetspend AS bs (organization_id, budget_id, period_start, spent, amount, ceiling, alerted)
    SELECT %(ledger_org)s, id, period_start, %(ledger_budget_cost)s, amount, ceiling, 0 FROM budget_rule
     WHERE ceiling IS NULL OR %(ledger_budget_cost)s <= ceiling
     ORDER BY id
        ON CONFLICT (organization_id, budget_id, period_start) DO UPDATE
       SET spent = bs.spent + excluded.spent, amount = excluded.amount, ceiling = excluded.ceiling
     WHERE excluded.ceiling IS NULL OR bs.spent + excluded.spent <= excluded.ceiling
 RETURNING bs.id, bs.spent, bs.amount, bs.alerted
), budget_ok AS (
    SELECT (SELECT count(*) FROM budget_spend) = (SELECT count(*) FROM budget_rule) AS ok
)"""
_BUDGET_POINT = " AND (SELECT ok FROM budget_ok)"
# The alert level a spend reached (BUDGET_ALERT_PERCENTS: 50, 80, 100 %), over `budget_spend`'s columns.
BUDGET_LEVEL = (
    "(CASE WHEN spent >= amount THEN 3 WHEN spent * 100 >= amount * 80 THEN 2 WHEN spent * 100 >= amount * 50 THEN 1 ELSE 0 END)"
)
_BUDGET_ALERTS = f"ARRAY(SELECT id FROM budget_spend WHERE {BUDGET_LEVEL} > alerted ORDER BY id)"
# Raised by a usage posting that a hard budget refused; the statement fails whole.
BUDGET_REFUSED_SQLSTATE = "TG403"


# The posting as CTEs: `w` is the row after the move — the wallet row, or one stripe of a high-volume
# wallet — with `balance` (that row's running balance, for its entry), `held` and `total` (the
# organization's, for the caller) and `crossed`. Its UPDATE takes the row's lock and bumps
# `ledger_seq`, which the row's trigger requires of every balance change. `t` is the transfer, `e` its
# two balanced entries.
_WALLET_ROW = f"""w AS (
    UPDATE payments_wallet
       SET balance = balance + %(ledger_delta)s, held = held + %(ledger_held_delta)s, ledger_seq = ledger_seq + 1,
           -- a credit that lifts the balance back to the threshold re-arms the low-balance alert
           low_balance_alerted = low_balance_alerted
               AND NOT (%(ledger_delta)s > 0 AND {_wallet_total("balance + %(ledger_delta)s")} >= low_balance_threshold)
     WHERE organization_id = %(ledger_org)s AND {OVERDRAFT_RULE}{_BUDGET_POINT}
 RETURNING balance, held, {_wallet_total("balance")} AS total, {LOW_BALANCE_CROSSED} AS crossed,
           stripes, stripes > 0 AND balance - held < -credit_limit AS short, 0 AS stripe,
           {_auto_due(_wallet_total("balance"), "held", "auto_recharge_below")} AS auto_due
)"""
# A stripe: the wallet row is read, not locked (its holds, threshold and the other stripes are
# reported as of the statement's snapshot; the alert task re-checks the crossing under its own update).
_STRIPE_ROW = f"""h AS (
    SELECT balance, held, low_balance_threshold, low_balance_alerted, stripes, auto_recharge_below
      FROM payments_wallet WHERE organization_id = %(ledger_org)s
), s AS (
    UPDATE payments_walletstripe
       SET balance = balance + %(ledger_delta)s, ledger_seq = ledger_seq + 1
     WHERE organization_id = %(ledger_org)s AND stripe = %(ledger_stripe)s AND {OVERDRAFT_RULE}{_BUDGET_POINT}
       -- a draw from credit grants locks them: a wallet that has any debits on its wallet row instead,
       -- so the grants' locks always come after the wallet's (billing_site/locks.py)
       AND NOT EXISTS (SELECT 1 FROM payments_creditgrant g WHERE g.organization_id = %(ledger_org)s AND g.remaining > 0)
 RETURNING balance
), w AS (
    SELECT s.balance, h.held, x.total, x.total < h.low_balance_threshold AND NOT h.low_balance_alerted AS crossed,
           h.stripes, false AS short, %(ledger_stripe)s AS stripe,
           {_auto_due("x.total", "h.held", "h.auto_recharge_below")} AS auto_due
      FROM s, h, LATERAL (SELECT s.balance + h.balance + COALESCE((SELECT sum(o.balance) FROM payments_walletstripe o
                                  WHERE o.organization_id = %(ledger_org)s AND o.stripe <> %(ledger_stripe)s), 0) AS total) x
)"""


def _post_ctes(row: str, *, stripe: bool) -> str:
    entry_stripe = ("stripe, ", "%(ledger_stripe)s, ") if stripe else ("", "")
    return f"""{row}, t AS (
    INSERT INTO payments_transfer (organization_id, kind, reference, created_by_id, memo, created_at)
    SELECT %(ledger_org)s, %(ledger_kind)s, %(ledger_reference)s, %(ledger_created_by)s, %(ledger_memo)s, %(ledger_now)s
      FROM w
 RETURNING id
), e AS (
    INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, {entry_stripe[0]}created_at)
    SELECT t.id, %(ledger_org)s, 'wallet', %(ledger_delta)s, w.balance, {entry_stripe[1]}%(ledger_now)s FROM t, w
    UNION ALL
    SELECT t.id, %(ledger_org)s, %(ledger_counter)s, -%(ledger_delta)s, NULL, {entry_stripe[0] and "NULL, "}%(ledger_now)s FROM t
), {_DRAW_CTE}"""


# A debit's draw from the organization's credit grants (docs/credits.md): the database function takes
# from each live grant in burn order (locking them, after the wallet row: its call waits for `t`) and
# this writes what it took from each as the transfer's allocations. Nothing when `ledger_draw` is 0.
_DRAW_CTE = """drawn AS (
    INSERT INTO payments_grantallocation (organization_id, grant_id, transfer_id, amount, created_at)
    SELECT %(ledger_org)s, d.grant_id, t.id, d.took, %(ledger_now)s
      FROM t CROSS JOIN LATERAL tollgate_grants_draw(%(ledger_org)s, t.id, %(ledger_draw)s::numeric, %(ledger_now)s) AS d
)"""


def _budget_ctes(*, guarded: bool) -> str:
    """`_BUDGET_CTES`; in a guarded statement they count only when the guard held (and run after it)."""
    return _BUDGET_CTES.replace(
        "WHERE %(ledger_budget_cost)s::numeric > 0",
        "WHERE %(ledger_budget_cost)s::numeric > 0" + (" AND EXISTS (SELECT 1 FROM guard)" if guarded else ""),
    )


def _refusals(moved: str, *, guarded: bool) -> str:
    """True, or the statement fails whole: with BUDGET_REFUSED_SQLSTATE when a hard budget refused, with
    REFUSED_SQLSTATE when it wrote something (a budget's spend, a guard's advance) but the wallet
    refused (`moved` is NULL). A CASE, so the checks run in this order and always run."""
    wrote = "EXISTS (SELECT 1 FROM budget_spend)" + (" OR EXISTS (SELECT 1 FROM guard)" if guarded else "")
    # The functions run only to fail: a call per statement costs more than the CASE.
    return (
        "CASE WHEN NOT (SELECT ok FROM budget_ok) THEN tollgate_budget_allows(false)"
        f" WHEN NOT ({moved} IS NOT NULL OR NOT ({wrote})) THEN tollgate_refuse_unless(false) ELSE true END"
    )


# What a posting answers, in this order (POSTING_COLUMNS of them; a caller's columns follow).
_POST_RESULT = f"t.id, w.total, w.held, w.crossed, w.stripes, w.short, w.auto_due, {_BUDGET_ALERTS}"
POSTING_COLUMNS = 8


def _unguarded(ctes: str, *, columns: str, joined: str, moved: str) -> str:
    """A statement's answer: one row with `columns` when the money moved, none when the wallet refused
    and nothing else was written; it fails (`_refusals`) otherwise."""
    return (
        f"WITH {ctes}\nSELECT {columns} FROM (SELECT 1) AS one LEFT JOIN {joined if ' ' not in joined else f'({joined})'} ON true"
        f" WHERE CASE WHEN {_refusals(moved, guarded=False)} THEN {moved} IS NOT NULL END"
    )


_POST_SQL = _unguarded(
    f"{_budget_ctes(guarded=False)}, {_post_ctes(_WALLET_ROW, stripe=False)}",
    columns=_POST_RESULT,
    joined="w CROSS JOIN t",
    moved="t.id",
)


@dataclass(frozen=True, slots=True)
class PostStatements:
    """A usage posting fused with a caller's writes, on the wallet row and on one stripe."""

    wallet: str
    stripe: str


# Raised inside a posting that wrote (a guard's advance, a budget's spend) but whose wallet refused, so
# those writes roll back with it.
REFUSED_SQLSTATE = "TG402"


def post_statement(companion_ctes: str, *, guard_ctes: str | None = None) -> PostStatements:
    """The usage posting extended with a caller's own writes, for `usage_charge_in_one_statement`.
    `companion_ctes` may read `w` (`total`: the organization's balance after; `stripe`: the row, 0 for
    the wallet's) and `t` (id) and must end in a CTE named `companion` that yields one row; its
    columns come back after the posting's (POSTING_COLUMNS).

    `guard_ctes`, when given, run first and must define `seen` (one row: what the caller's guess is
    checked against, as this statement saw it) and `guard` (a row only when the guess held, after its
    own write). The money moves only when `guard` has a row; when it has one and the wallet refuses, the
    statement fails with REFUSED_SQLSTATE, so the guard's write is undone too. It answers one row per
    `seen` row: the posting's columns, the companion's, then `seen`'s — the first two NULL when the
    guess did not hold. Either way a hard budget's refusal fails it with BUDGET_REFUSED_SQLSTATE."""
    if guard_ctes is None:
        return PostStatements(
            *(
                _unguarded(
                    f"{_budget_ctes(guarded=False)}, {_post_ctes(row, stripe=stripe)},\n{companion_ctes}",
                    columns=f"{_POST_RESULT}, companion.*",
                    joined="w CROSS JOIN t CROSS JOIN companion",
                    moved="t.id",
                )
                for row, stripe in ((_WALLET_ROW, False), (_STRIPE_ROW, True))
            )
        )
    return PostStatements(
        *(
            _guarded(
                f"{guard_ctes}, {_budget_ctes(guarded=True)}, "
                f"{_post_ctes(row.replace(_GUARD_POINT, _GUARD_POINT + _GUARD_HELD), stripe=stripe)},\n{companion_ctes}",
                columns=_POST_RESULT,
                joined="w CROSS JOIN t",
                moved="t.id",
            )
            for row, stripe in ((_WALLET_ROW, False), (_STRIPE_ROW, True))
        )
    )


# Where a guard's condition joins a posting's UPDATE (both row statements have it once), and the condition.
_GUARD_POINT = f"AND {OVERDRAFT_RULE}"
_GUARD_HELD = " AND EXISTS (SELECT 1 FROM guard)"


def _guarded(ctes: str, *, columns: str, joined: str, moved: str, budgets: bool = True) -> str:
    """The answer of a guarded statement: one row per `seen` row, with `columns` and the companion's
    (NULL when the guard did not hold), then `seen`'s; and a failure (`_refusals`) when the guard held
    but `moved` is NULL, so the guard's write is undone with the rest."""
    check = (
        _refusals(moved, guarded=True)
        if budgets
        else f"tollgate_refuse_unless({moved} IS NOT NULL OR NOT EXISTS (SELECT 1 FROM guard))"
    )
    return (
        f"WITH {ctes}\nSELECT {columns}, companion.*, seen.*, {check} FROM seen LEFT JOIN ({joined} CROSS JOIN companion) ON true"
    )


# A free event on the hot path (a plan's included units): no money moves, but nothing starts while the
# wallet is at or past its limit (the overdraft rule with nothing to move), checked on the wallet row as
# the statement sees it — a free event needs no lock on it. Guarded like `post_statement`'s.
_FREE_ROW = f"""w AS (
    SELECT {_wallet_total("balance")} AS total, held FROM payments_wallet
     WHERE organization_id = %(ledger_org)s {_GUARD_POINT}{_GUARD_HELD}
)"""


def free_statement(companion_ctes: str, *, guard_ctes: str) -> str:
    """A guarded statement for a usage event that costs nothing: `guard_ctes` as for `post_statement`;
    `companion_ctes` may read `w` (`total`) and must end in `companion`. Answers (total, held, the
    companion's columns, `seen`'s) — NULL total when the guard did not hold — and fails with
    REFUSED_SQLSTATE when the guard held but the overdraft rule refused. Budgets count nothing free."""
    return _guarded(
        f"{guard_ctes}, {_FREE_ROW},\n{companion_ctes}", columns="w.total, w.held", joined="w", moved="w.total", budgets=False
    )


def usage_free_in_one_statement(*, statement: str, organization_id: int, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run a `free_statement` (autocommit: one round trip): its row, or None when the guard's row does
    not exist yet. GuardRefused when the guard held but the wallet is at or past its limit."""
    params = {
        **params,
        **posting_params(organization_id=organization_id, amount=ZERO, counter_account=Account.REVENUE, kind=TransferKind.USAGE),
    }
    row = _one_statement(statement, params, guarded=True)
    return None if row is None else tuple(row)


class BudgetExceeded(DomainError):
    code = ErrorCode.BUDGET_EXCEEDED
    message = "This would pass a hard spending budget of the organization or of this API key."


class _WalletRefused(Exception):
    """A posting that wrote a budget's spend before its wallet refused: it failed whole."""


def _one_statement(statement: str, params: dict[str, Any], *, guarded: bool, prepared: bool = True) -> Any:
    """Run one statement (in a savepoint inside a caller's transaction, so a failure does not poison
    it) and answer its row. A hard budget's refusal raises BudgetExceeded; a refusal after the
    statement wrote raises GuardRefused (guarded) or _WalletRefused."""
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with scope, prepared_cursor() if prepared else connection.cursor() as cursor:  # prepared: planned once per connection
            cursor.execute(statement, params)
            return cursor.fetchone()
    except DatabaseError as error:
        sqlstate = getattr(error.__cause__, "sqlstate", None)
        if sqlstate == BUDGET_REFUSED_SQLSTATE:
            raise BudgetExceeded() from error
        if sqlstate == REFUSED_SQLSTATE:
            raise (GuardRefused() if guarded else _WalletRefused()) from error
        raise


# A change of holds alone: a hold, a release, or a zero-cost debit (which moves nothing but must
# still pass the overdraft rule). A new hold counts against the budgets that apply until it is captured
# or released; it answers the budget spends it counts against.
_HELD_SQL = _unguarded(
    f"""{_budget_ctes(guarded=False)}, w AS (
    UPDATE payments_wallet
       SET held = held + %(ledger_held_delta)s, ledger_seq = ledger_seq + 1
     WHERE organization_id = %(ledger_org)s AND {OVERDRAFT_RULE}{_BUDGET_POINT}
 RETURNING {_wallet_total("balance")} AS total, held, {_auto_due(_wallet_total("balance"), "held", "auto_recharge_below")} AS auto_due
)""",
    columns=f"w.total, w.held, w.auto_due, ARRAY(SELECT id FROM budget_spend ORDER BY id), {_BUDGET_ALERTS}",
    joined="w",
    moved="w.total",
)

# Usage kinds whose debits count against budgets, and kinds whose debits draw from credit grants.
_BUDGETED_KINDS = frozenset({TransferKind.USAGE})
_DRAWING_KINDS = frozenset({TransferKind.USAGE, TransferKind.SUBSCRIPTION})


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
    api_key_id: int | None = None,
    budgeted: bool = True,
) -> dict[str, Any]:
    """The parameters of `_POST_SQL` / `post_statement` for one posting (all named `ledger_*`). A usage
    debit counts against the budgets of the organization and of `api_key_id` unless not `budgeted` (a
    hold's capture: the hold counted already); usage and subscription debits draw from credit grants."""
    debit = -amount if amount < ZERO else ZERO
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
        "ledger_key": api_key_id,
        "ledger_budget_cost": debit if budgeted and kind in _BUDGETED_KINDS else ZERO,
        "ledger_draw": debit if kind in _DRAWING_KINDS else ZERO,
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
    api_key_id: int | None = None,
    budgeted: bool = True,
    now: datetime | None = None,
) -> Posting:
    """Move `amount` into the wallet (negative: out of it) against `counter_account`, and free
    `release_held` of the wallet's holds in the same statement.

    A debit (a negative or zero amount) passes the overdraft rule or is refused (InsufficientBalance,
    nothing written), unless `may_overdraw` (a hold's capture of usage already delivered, docs/contract.md §2.4).
    A usage debit passes its budgets or is refused (BudgetExceeded, nothing written), and a usage or
    subscription debit draws from the credit grants (docs/credits.md), in the same statement.
    On a high-volume wallet it posts to the wallet row, rebalancing the stripes when the row alone
    cannot pay or was overdrawn (docs/contract.md §2.9). Joins the caller's transaction if any.
    """
    if counter_account == Account.WALLET:
        raise ValueError("a transfer's counter account must be a system account")
    if amount == ZERO:
        return _held_change(
            organization_id=organization_id, held_delta=-release_held, unchecked=may_overdraw or release_held > ZERO
        ).posting
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
        api_key_id=api_key_id,
        budgeted=budgeted,
        now=now,
    )
    started = time.perf_counter()
    row = _wallet_row_statement(organization_id=organization_id, sql=_POST_SQL, params=params, reserve=-amount)
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    transfer_id, balance_after, held_after, *_ = row
    if row[5]:  # short
        # An over-draw (a capture past its hold, a forced refund) took the wallet row below its floor
        # while stripes may still hold money: move it back, so nothing new starts anywhere.
        with transaction.atomic():
            _stripes_rebalance(organization_id=organization_id, reserve=ZERO)
    _announce_after_commit(organization_id, crossed=row[3], auto_due=row[6], alerts=row[7])
    if amount > ZERO and kind in _CREDITS_ANNOUNCED:
        transaction.on_commit(lambda: wallet_credited_signal.send(sender=Wallet, organization_id=organization_id))
    return Posting(transfer_id=transfer_id, amount=amount, balance_after=balance_after, held_after=held_after)


def _wallet_row_statement(*, organization_id: int, sql: str, params: dict[str, Any], reserve: Decimal) -> tuple[Any, ...]:
    """Run a posting over the wallet row. When the row alone refuses and the wallet is high-volume,
    rebalance its stripes keeping `reserve` (what this posting needs) on the row, and run it again:
    refused (InsufficientBalance, nothing written) only when the whole wallet cannot pay. A hard
    budget's refusal raises BudgetExceeded (nothing written)."""
    row = _refusable_statement(sql, params)
    if row is None and _is_striped(organization_id):
        with transaction.atomic():
            _budgets_before_rebalance(params)
            _stripes_rebalance(organization_id=organization_id, reserve=reserve)
            row = _refusable_statement(sql, params)
            if row is None:
                raise InsufficientBalance()  # rolls the rebalance back too
    if row is None:
        raise InsufficientBalance()
    return tuple(row)


def _refusable_statement(sql: str, params: dict[str, Any]) -> Any:
    """A posting's row, or None when the wallet refused. One that may write a budget's spend before its
    wallet refuses fails whole then, so it runs in a savepoint; the others need none."""
    if params.get("ledger_budget_cost"):
        try:
            return _one_statement(sql, params, guarded=False, prepared=False)
        except _WalletRefused:
            return None
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _budgets_before_rebalance(params: dict[str, Any]) -> None:
    """A rebalance locks the wallet before the posting runs again: lock the budgets' spends the posting
    will count against first, so their locks still come before the wallet's (billing_site/locks.py)."""
    if params.get("ledger_budget_cost"):
        budget_spends_take(organization_id=params["ledger_org"], api_key_id=params["ledger_key"], now=params["ledger_now"])


def _is_striped(organization_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT stripes FROM payments_wallet WHERE organization_id = %s", [organization_id])
        row = cursor.fetchone()
    return bool(row and row[0])


class GuardRefused(Exception):
    """A guarded one-statement charge whose guard held but whose wallet row (or stripe) refused: nothing
    was written; the caller settles it on its locked path, which rebalances stripes when it must."""


def usage_charge_in_one_statement(
    *,
    statements: PostStatements,
    organization_id: int,
    stripes: int,
    cost: Decimal,
    reference: str,
    params: dict[str, Any],
    now: datetime,
    api_key_id: int | None = None,
    guarded: bool = False,
) -> tuple[Posting | None, tuple[Any, ...]]:
    """Debit usage (wallet → revenue) and write the caller's rows in ONE statement built by
    `post_statement`. Outside a transaction it commits by itself: one round trip, and the row lock is
    held only while PostgreSQL executes and commits it. `stripes` is the organization's stripe count as
    the caller last saw it: with stripes, the statement goes to one stripe picked at random (so
    debits spread over their row locks); when that stripe cannot pay (or no longer exists, or the
    organization has credit grants), the debit runs on the wallet row, and when that cannot pay either
    the stripes are rebalanced under the wallet's lock and it runs there again. Raises
    InsufficientBalance (nothing written) only when the whole wallet cannot pay, BudgetExceeded when a
    hard budget of the organization or of `api_key_id` would be passed; an error in the caller's writes
    (e.g. a unique violation) rolls the money back too. Answers the posting and the caller's
    `companion` columns.

    `guarded`: the statements were built with guard CTEs. Then the posting is None when the guard did
    not hold (the extra columns say what it saw), and a refusal raises GuardRefused instead of being
    retried here: the guard's row lock comes before the wallet's, so a rebalance must not run inside it."""
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
            api_key_id=api_key_id,
        ),
    }
    statement = statements.wallet
    if stripes:
        statement, params["ledger_stripe"] = statements.stripe, stripe_pick(stripes)
    started = time.perf_counter()
    try:
        row = _one_statement(statement, params, guarded=guarded)
    except _WalletRefused:
        row = None
    if guarded:
        if row is None or row[0] is None:  # no row: the guard's own row does not exist yet
            return None, () if row is None else tuple(row[POSTING_COLUMNS:])
    elif row is None and stripes:
        row = _refusable_statement(statements.wallet, params)
    if row is None and not guarded and (stripes or _is_striped(organization_id)):
        with transaction.atomic():
            _budgets_before_rebalance(params)
            _stripes_rebalance(organization_id=organization_id, reserve=cost)
            row = _refusable_statement(statements.wallet, params)
            if row is None:
                raise InsufficientBalance()  # rolls the rebalance back too
    metrics.WALLET_LOCK_SECONDS.observe(time.perf_counter() - started)
    if row is None:
        raise InsufficientBalance()
    transfer_id, balance_after, held_after = row[:3]
    _announce_after_commit(organization_id, crossed=row[3], auto_due=row[6], alerts=row[7])
    companion = row[POSTING_COLUMNS:]
    return Posting(transfer_id=transfer_id, amount=-cost, balance_after=balance_after, held_after=held_after), tuple(companion)


def stripe_pick(stripes: int) -> int:
    return random.randint(1, stripes)  # noqa: S311 - spreads load; nothing depends on it being unpredictable


def _announce_after_commit(organization_id: int, *, crossed: bool, auto_due: bool, alerts: Sequence[int]) -> None:
    """What a posting's statement noticed, announced once it commits: a low-balance crossing (the alert
    re-checks and flips its flag, so a crossing alerts once however many debits saw it), available
    below the auto top-up's threshold, and budget spends whose alert level rose (the alert task claims
    each level once per period)."""
    if crossed:
        transaction.on_commit(lambda: low_balance_crossed_signal.send(sender=Wallet, organization_id=organization_id))
    if auto_due:
        transaction.on_commit(lambda: auto_recharge_due_signal.send(sender=Wallet, organization_id=organization_id))
    if alerts:
        spend_ids = list(alerts)
        transaction.on_commit(
            lambda: budget_alert_signal.send(sender=Wallet, organization_id=organization_id, spend_ids=spend_ids)
        )


@dataclass(frozen=True, slots=True)
class HeldChange:
    posting: Posting
    budget_spends: list[int]  # the budget spends a new hold counts against (ids)


def _held_change(
    *, organization_id: int, held_delta: Decimal, unchecked: bool, api_key_id: int | None = None, budgeted: bool = False
) -> HeldChange:
    params: dict[str, Any] = {
        "ledger_org": organization_id,
        "ledger_held_delta": held_delta,
        "ledger_delta": ZERO,
        "ledger_unchecked": unchecked,
        "ledger_now": timezone.now(),
        "ledger_key": api_key_id,
        "ledger_budget_cost": held_delta if budgeted and held_delta > ZERO else ZERO,
    }
    row = _wallet_row_statement(organization_id=organization_id, sql=_HELD_SQL, params=params, reserve=max(held_delta, ZERO))
    total, held, auto_due, spends, alerts = row
    _announce_after_commit(organization_id, crossed=False, auto_due=auto_due, alerts=alerts)
    return HeldChange(Posting(transfer_id=None, amount=ZERO, balance_after=total, held_after=held), list(spends))


def wallet_hold(*, organization_id: int, amount: Decimal, usage: bool, api_key_id: int | None = None) -> HeldChange:
    """Reserve `amount` (no entry is posted); refused by the overdraft rule (InsufficientBalance). A
    hold for `usage` is also refused by a hard budget of the organization or of `api_key_id`
    (BudgetExceeded), and counts against them until `budget_spends_settle` takes it back (a refund's
    hold is not usage). A hold is what bounds an over-capture (docs/contract.md §2.4), so it is always
    positive."""
    if amount <= ZERO:
        raise ValueError("a hold reserves a positive amount")
    return _held_change(
        organization_id=organization_id, held_delta=amount, unchecked=False, api_key_id=api_key_id, budgeted=usage
    )


def wallet_release(*, organization_id: int, amount: Decimal) -> Posting:
    """Free `amount` of the wallet's holds."""
    return _held_change(organization_id=organization_id, held_delta=-amount, unchecked=True).posting


def budget_spends_lock(*, spend_ids: Sequence[int]) -> None:
    """Lock budget spend rows in the order the usage statements take them (ascending budget), before
    the wallet (billing_site/locks.py)."""
    if spend_ids:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM payments_budgetspend WHERE id = ANY(%s) ORDER BY budget_id FOR UPDATE", [list(spend_ids)]
            )


# The locked paths' view of the budgets that apply (a batch decides under them): this period's spend
# row of each, created when missing, locked in the usage statements' order; its headroom (NULL: soft).
_BUDGET_SPENDS_TAKE_SQL = """
INSERT INTO payments_budgetspend AS bs (organization_id, budget_id, period_start, spent, amount, ceiling, alerted)
SELECT b.organization_id, b.id, date_trunc(b.period, %(ledger_now)s::timestamptz, 'UTC'), 0, b.amount,
       CASE WHEN b.mode = 'hard' THEN b.amount END, 0
  FROM payments_budget b
 WHERE b.organization_id = %(ledger_org)s AND (b.api_key_id IS NULL OR b.api_key_id = %(ledger_key)s::bigint)
 ORDER BY b.id
    ON CONFLICT (organization_id, budget_id, period_start) DO UPDATE SET amount = excluded.amount, ceiling = excluded.ceiling
RETURNING bs.id, bs.ceiling - bs.spent
"""


@dataclass(frozen=True, slots=True)
class BudgetSpends:
    spend_ids: list[int]
    headroom: Decimal | None  # what the hard budgets still allow together; None: no hard budget


def budget_spends_take(*, organization_id: int, api_key_id: int | None, now: datetime) -> BudgetSpends:
    """Lock this period's spend of every budget that applies to the organization's usage by
    `api_key_id`, before the wallet, for a caller that decides under its own locks (a batch), then
    adds what it charged with `budget_spends_settle`. In the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_BUDGET_SPENDS_TAKE_SQL, {"ledger_org": organization_id, "ledger_key": api_key_id, "ledger_now": now})
        rows = cursor.fetchall()
    hard = [headroom for _, headroom in rows if headroom is not None]
    return BudgetSpends(spend_ids=[spend_id for spend_id, _ in rows], headroom=min(hard) if hard else None)


def budget_spends_settle(*, spend_ids: Sequence[int], delta: Decimal) -> None:
    """Move what a hold counted against its budgets by `delta` once it ends: −(its amount) on a release,
    (actual − held) on a capture, which may pass a hard budget (the service was delivered). In the
    caller's transaction, after `budget_spends_lock`; a budget deleted since has no rows left to move."""
    if spend_ids and delta != ZERO:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE payments_budgetspend SET spent = spent + %s WHERE id = ANY(%s)", [delta, list(spend_ids)])


def usage_charge(
    *,
    organization_id: int,
    cost: Decimal,
    reference: str = "",
    release_held: Decimal = ZERO,
    may_overdraw: bool = False,
    api_key_id: int | None = None,
    budgeted: bool = True,
    now: datetime | None = None,
) -> Posting:
    """Debit usage: wallet → revenue (counted against the budgets that apply unless not `budgeted`)."""
    return transfer_post(
        organization_id=organization_id,
        kind=TransferKind.USAGE,
        amount=-cost,
        counter_account=Account.REVENUE,
        reference=reference,
        release_held=release_held,
        may_overdraw=may_overdraw,
        api_key_id=api_key_id,
        budgeted=budgeted,
        now=now,
    )


class Refusal(StrEnum):
    BALANCE = "balance"  # the wallet cannot afford it
    BUDGET = "budget"  # it would pass the caller's budget (e.g. an API key's remaining spend cap)
    PERIOD_BUDGET = "period_budget"  # it would pass a hard budget of the day, week or month (docs/credits.md)


class BatchPricer(Protocol):
    """Costs that depend on which earlier events of the batch were charged (a positional price): the
    batch asks for each cost in order and says which were charged; it may start over."""

    def begin(self) -> None: ...
    def cost(self, index: int) -> Decimal: ...
    def charged(self, index: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _FixedCosts:
    costs: Sequence[Decimal]

    def begin(self) -> None:
        return None

    def cost(self, index: int) -> Decimal:
        return self.costs[index]

    def charged(self, index: int) -> None:
        return None


def usage_charge_batch(
    *,
    organization_id: int,
    costs: Sequence[Decimal],
    reference: str,
    budget: Decimal | None = None,
    locked: locks.WalletState | None = None,
    pricer: BatchPricer | None = None,
    period_budget: Decimal | None = None,
    now: datetime | None = None,
) -> list[Posting | Refusal]:
    """Charge `costs` in order under one wallet lock, each only if it fits the wallet and the
    optional `budget` on the total (and `period_budget`, the hard budgets' headroom from
    `budget_spends_take`, which the caller settles), as if they came one by one; a Refusal where it does not. With a
    `pricer`, each event's cost is asked of it in order instead (`costs` gives only how many there are).

    What is charged posts as ONE usage transfer (wallet → revenue, the sum): the batch's events share
    its id, and each event's Posting carries the running balance after it, which its usage record
    keeps. So the ledger grows by three rows per batch, not per event, and its wallet entry's
    `balance_after` is the balance after the last event. Must run inside the caller's transaction;
    `locked` is the wallet's state when the caller already took its lock. Two statements whatever the
    batch size. On a high-volume wallet the batch is decided on the wallet row; only when the row
    cannot pay every event are the stripes rebalanced (the batch's total, or all of the money, left on
    the row) and the batch decided again, as the whole wallet would; balances after are the
    organization's totals."""
    pricer = pricer or _FixedCosts(costs)
    now = now or timezone.now()  # one moment for the decision and the posting: what credit has expired
    wallet = locked or locks.wallet_lock(organization_id=organization_id, now=now)
    outcomes, charged, total, balance = _batch_decide(
        pricer, len(costs), wallet=wallet, budget=budget, period_budget=period_budget
    )
    rebalanced, stripes_total = False, ZERO
    if wallet.stripes and Refusal.BALANCE in outcomes:
        # The wallet row alone cannot pay all of it: gather the stripes' money and decide again, as the
        # whole wallet would. (When the row alone pays everything, so would the whole wallet: stripes
        # are never negative. Rebalancing then would only lock every stripe and post a leg each.)
        # What the events cost as first decided (a pricer's costs may differ from the estimates in `costs`).
        wallet, stripes_total = _stripes_rebalance(organization_id=organization_id, reserve=sum(charged, ZERO))
        outcomes, charged, total, balance = _batch_decide(
            pricer, len(costs), wallet=wallet, budget=budget, period_budget=period_budget
        )
        rebalanced = True
    transfer_id = None
    if total > ZERO:
        posting = usage_charge(organization_id=organization_id, cost=total, reference=reference, budgeted=False, now=now)
        # The organization's balance is the wallet row's plus its stripes' as this statement saw them;
        # they are locked (and fixed) only after a rebalance, and there are none on a one-row wallet.
        on_stripes = posting.balance_after - balance
        if (rebalanced or not wallet.stripes) and on_stripes != stripes_total:
            raise RuntimeError("the wallet's balance moved while this transaction held its lock")
        transfer_id = posting.transfer_id
    else:
        on_stripes = stripes_total if rebalanced or not wallet.stripes else stripes_balance(organization_id=organization_id)
    return [
        outcome
        if isinstance(outcome, Refusal)
        else Posting(
            transfer_id=transfer_id if cost > ZERO else None,
            amount=-cost,
            balance_after=outcome + on_stripes,
            held_after=wallet.held,
        )
        for cost, outcome in zip(charged, outcomes, strict=True)
    ]


def _batch_decide(
    pricer: BatchPricer, count: int, *, wallet: locks.WalletState, budget: Decimal | None, period_budget: Decimal | None
) -> tuple[list[Decimal | Refusal], list[Decimal], Decimal, Decimal]:
    """Each cost in order against the wallet row and the budget, as if they came one by one: the row's
    balance after each charged one (or its refusal), each event's cost, the total charged, and the row's
    balance at the end."""
    pricer.begin()
    balance = wallet.balance
    outcomes: list[Decimal | Refusal] = []
    costs: list[Decimal] = []
    total = ZERO
    for index in range(count):
        cost = pricer.cost(index)
        costs.append(cost)
        if budget is not None and cost > budget:
            outcomes.append(Refusal.BUDGET)
        elif period_budget is not None and cost > ZERO and cost > period_budget:  # a free event passes, as alone
            outcomes.append(Refusal.PERIOD_BUDGET)
        elif not affordable(balance=balance, held=wallet.unavailable, credit_limit=wallet.credit_limit, cost=cost):
            outcomes.append(Refusal.BALANCE)
        else:
            balance -= cost
            total += cost
            budget = None if budget is None else budget - cost
            period_budget = None if period_budget is None else period_budget - cost
            pricer.charged(index)
            outcomes.append(balance)
    return outcomes, costs, total, balance


# --- High-volume wallets: stripes (docs/contract.md §2.9) -----------------------------------------------------

# One `rebalance` transfer: every stripe in the arrays is set to its new balance, the wallet row
# takes the difference; one wallet leg per row that changes (running balances per row), summing to zero.
_STRIPES_MOVE_SQL = """
WITH t AS (
    INSERT INTO payments_transfer (organization_id, kind, reference, memo, created_at)
    VALUES (%(ledger_org)s, 'rebalance', 'stripes', '', %(ledger_now)s)
 RETURNING id
), s AS (
    UPDATE payments_walletstripe x SET balance = v.balance, ledger_seq = x.ledger_seq + 1
      FROM unnest(%(ledger_stripes)s::int[], %(ledger_balances)s::numeric[]) AS v(stripe, balance)
     WHERE x.organization_id = %(ledger_org)s AND x.stripe = v.stripe
), h AS (
    UPDATE payments_wallet SET balance = balance + %(ledger_delta)s, ledger_seq = ledger_seq + 1
     WHERE organization_id = %(ledger_org)s AND %(ledger_delta)s <> 0
)
INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, stripe, created_at)
SELECT t.id, %(ledger_org)s, 'wallet', v.amount, v.balance, v.stripe, %(ledger_now)s
  FROM t, unnest(%(ledger_stripes)s::int[], %(ledger_amounts)s::numeric[], %(ledger_balances)s::numeric[]) AS v(stripe, amount, balance)
UNION ALL
SELECT t.id, %(ledger_org)s, 'wallet', %(ledger_delta)s, %(ledger_balance)s, NULL, %(ledger_now)s FROM t WHERE %(ledger_delta)s <> 0
"""


def _stripes_move(
    *, organization_id: int, wallet: locks.WalletState, stripes: dict[int, Decimal], targets: dict[int, Decimal]
) -> Decimal:
    """Set each stripe of `targets` to its balance there, the wallet row giving or taking the
    difference (the caller holds every lock involved). Answers the wallet row's balance after."""
    moves = [
        (stripe, target, target - stripes[stripe]) for stripe, target in sorted(targets.items()) if target != stripes[stripe]
    ]
    if not moves:
        return wallet.balance
    delta = -sum((amount for _, _, amount in moves), ZERO)
    with connection.cursor() as cursor:
        cursor.execute(
            _STRIPES_MOVE_SQL,
            {
                "ledger_org": organization_id,
                "ledger_now": timezone.now(),
                "ledger_stripes": [stripe for stripe, _, _ in moves],
                "ledger_balances": [target for _, target, _ in moves],
                "ledger_amounts": [amount for _, _, amount in moves],
                "ledger_delta": delta,
                "ledger_balance": wallet.balance + delta,
            },
        )
    return wallet.balance + delta


def _stripes_rebalance(*, organization_id: int, reserve: Decimal) -> tuple[locks.WalletState, Decimal]:
    """Lock the wallet row, then every stripe; give each stripe an equal share of what the wallet can
    spend beyond `reserve` (rounded down) and leave the rest — at least `reserve` when the wallet has
    it, and a share — on the wallet row. What the wallet can spend is `balance − held + credit_limit`
    over all its rows, so when it is nothing every stripe ends empty: nothing new starts anywhere.
    Answers the wallet row's state after and the stripes' total. Inside the caller's transaction."""
    wallet = locks.wallet_lock(organization_id=organization_id)
    stripes = locks.wallet_stripes_lock(organization_id=organization_id)
    if not stripes:
        return wallet, ZERO
    spendable = wallet.balance - wallet.held + wallet.credit_limit + sum(stripes.values(), ZERO)
    share = (max(spendable - reserve, ZERO) / (len(stripes) + 1)).quantize(MONEY_QUANTUM, rounding=ROUND_DOWN)
    balance = _stripes_move(
        organization_id=organization_id, wallet=wallet, stripes=stripes, targets=dict.fromkeys(stripes, share)
    )
    return dataclasses.replace(wallet, balance=balance), share * len(stripes)


def wallet_stripes_rebalance(*, organization_id: int) -> None:
    """Spread a high-volume wallet's money evenly over its rows again (after a change of its credit
    limit, say). Nothing for a wallet without stripes."""
    with transaction.atomic():
        _stripes_rebalance(organization_id=organization_id, reserve=ZERO)


def wallet_stripes_set(*, organization_id: int, stripes: int) -> None:
    """Make the wallet high-volume with `stripes` stripes (STRIPES_MIN..STRIPES_MAX), or one row again
    (0), moving its money exactly: all of it back to the wallet row with a `rebalance` transfer, the
    stripe rows dropped or added, then spread again — under the wallet's lock and every stripe's."""
    if stripes != 0 and not STRIPES_MIN <= stripes <= STRIPES_MAX:
        raise ValueError(f"a wallet has 0 or {STRIPES_MIN}..{STRIPES_MAX} stripes")
    with transaction.atomic():
        wallet = locks.wallet_lock(organization_id=organization_id)
        if wallet.stripes == stripes:
            return
        current = locks.wallet_stripes_lock(organization_id=organization_id)
        _stripes_move(organization_id=organization_id, wallet=wallet, stripes=current, targets=dict.fromkeys(current, ZERO))
        WalletStripe.objects.filter(organization_id=organization_id, stripe__gt=stripes).delete()
        WalletStripe.objects.bulk_create(
            WalletStripe(organization_id=organization_id, stripe=stripe)
            for stripe in range(1, stripes + 1)
            if stripe not in current
        )
        Wallet.objects.filter(organization_id=organization_id).update(stripes=stripes)
        # The hot path's copy, read with the API key: a stale copy only sends a debit to the wallet
        # row or to a missing stripe, and both fall back to the locked path above.
        Organization.objects.filter(pk=organization_id).update(wallet_stripes=stripes)
        _stripes_rebalance(organization_id=organization_id, reserve=ZERO)


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


def subscription_charge(
    *, organization_id: int, amount: Decimal, reference: str, memo: str = "", reverses_transfer_id: int | None = None
) -> Posting:
    """Post a subscription fee (`amount` > 0: wallet → revenue, refused by the overdraft rule with
    InsufficientBalance; it draws from credit grants like usage) or the credit of an upgrade's unused
    part (`amount` < 0: revenue → wallet), which gives back to the grants the fee's transfer
    (`reverses_transfer_id`) drew from, as a `subscription` transfer. Joins the caller's transaction
    (metering/services/subscriptions.py)."""
    if amount == ZERO:
        raise ValueError("a subscription charge moves a non-zero amount")
    posting = transfer_post(
        organization_id=organization_id,
        kind=TransferKind.SUBSCRIPTION,
        amount=-amount,
        counter_account=Account.REVENUE,
        reference=reference,
        memo=memo,
    )
    if amount < ZERO and reverses_transfer_id is not None and posting.transfer_id is not None:
        grants_give_back(
            organization_id=organization_id,
            transfer_id=posting.transfer_id,
            reversed_transfer_ids=[reverses_transfer_id],
            amount=-amount,
        )
    return posting


def grants_give_back(*, organization_id: int, transfer_id: int, reversed_transfer_ids: Sequence[int], amount: Decimal) -> None:
    """A credit (`transfer_id`, of `amount`) that reverses debits (an upgrade's credit of the fee, a volume
    true-up's credit of a month's usage) gives back to the grants the debits drew from, the last drawn
    first, never more than the debits took from each nor more than the grant ever held. A grant that expired
    meanwhile gets it back too and the expiry task writes it off; one already written off has its share
    written off at once (an `expiry` transfer), so reversed credit never turns into money without an
    expiry. Under the wallet's lock (the credit's posting took it); then the grants'. A debit is
    reversed at most once (an upgrade credits the fee its plan was last charged); were it reversed
    twice, the grant's `remaining <= amount` constraint refuses the second."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT grant_id, sum(amount) FROM payments_grantallocation"
            " WHERE organization_id = %s AND transfer_id = ANY(%s) AND amount > 0 GROUP BY grant_id ORDER BY max(id) DESC",
            [organization_id, list(reversed_transfer_ids)],
        )
        taken = cursor.fetchall()
        back: dict[int, Decimal] = {}
        for grant_id, took in taken:
            if amount <= ZERO:
                break
            back[grant_id] = min(took, amount)
            amount -= back[grant_id]
        if not back:
            return
        cursor.execute(
            "SELECT id, expiry_transfer_id IS NOT NULL, amount - remaining FROM payments_creditgrant"
            " WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [sorted(back)],
        )
        lapsed = set()
        for grant_id, written_off, spent in cursor.fetchall():
            # A batch's transfer may be reversed by two services' true-ups: never more than the grant gave.
            back[grant_id] = min(back[grant_id], spent)
            if written_off:
                lapsed.add(grant_id)
        back = {grant_id: give for grant_id, give in back.items() if give > ZERO}
        live = [(grant_id, give) for grant_id, give in back.items() if grant_id not in lapsed]
        _allocations_write(cursor, organization_id=organization_id, transfer_id=transfer_id, gives=live, bump=True)
        if lapsed:
            gone = [(grant_id, back[grant_id]) for grant_id in sorted(lapsed)]
            # back to the written-off grant (net nothing on it), then out to expired_credits with its write-off
            _allocations_write(cursor, organization_id=organization_id, transfer_id=transfer_id, gives=gone, bump=False)
            expiry = transfer_post(
                organization_id=organization_id,
                kind=TransferKind.EXPIRY,
                amount=-sum((give for _, give in gone), ZERO),
                counter_account=Account.EXPIRED_CREDITS,
                reference=f"reverses:{transfer_id}",
                memo="Credit given back to an expired grant",
                may_overdraw=True,
            )
            assert expiry.transfer_id is not None
            _allocations_write(
                cursor,
                organization_id=organization_id,
                transfer_id=expiry.transfer_id,
                gives=[(g, -a) for g, a in gone],
                bump=False,
            )


def _allocations_write(
    cursor: Any, *, organization_id: int, transfer_id: int, gives: list[tuple[int, Decimal]], bump: bool
) -> None:
    """Allocations of `transfer_id` giving each grant its amount back (a negative allocation; a negative
    amount here takes it again), and with `bump` the grants' `remaining` moved to match."""
    if not gives:
        return
    cursor.execute(
        "WITH v AS (SELECT * FROM unnest(%(grants)s::bigint[], %(amounts)s::numeric[]) AS v(grant_id, amount)),"
        " bumped AS (UPDATE payments_creditgrant g SET remaining = g.remaining + v.amount FROM v"
        "            WHERE g.id = v.grant_id AND %(bump)s)"
        " INSERT INTO payments_grantallocation (organization_id, grant_id, transfer_id, amount, created_at)"
        " SELECT %(org)s, v.grant_id, %(transfer)s, -v.amount, now() FROM v",
        {
            "grants": [grant_id for grant_id, _ in gives],
            "amounts": [give for _, give in gives],
            "org": organization_id,
            "transfer": transfer_id,
            "bump": bump,
        },
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
