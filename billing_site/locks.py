"""Every row lock Tollgate takes, and the one order they are taken in.

    organization → invitation                                        (team changes only)
    subscription → usage positions (ascending service) → budgets → budget spends → wallet → hold | payment → refund
        → stripes (ascending) → credit grants (burn order) → API key (money)
    auto recharge → wallet → payment                                 (auto top-up only)
    … → document counter                                             (a receipt, a statement: always last)

A transaction that needs several of these rows locks them in this order, so two transactions can
never wait on each other. Every money path that locks more than one row takes the wallet row first;
the one exception is the hot path on a high-volume wallet, which locks a single stripe (then, like any
usage statement, the API key's row), so it waits on nobody but that stripe's other writers. Nothing
here talks to the network, and no caller may either while it holds one of these locks: commit a
pending state, call out, then lock again and apply.

- wallet: the organization's `payments_wallet` row, the lock every money movement of an organization
  serializes on (on a high-volume wallet: every movement but the hot path's stripe debits). The ledger's statements take it implicitly, by the UPDATE that moves the balance
  (the same row lock as SELECT … FOR UPDATE, one round trip fewer). `wallet_lock` takes it up front
  for a caller that must check another row under it before moving money.
- hold, payment: checked under their wallet's lock, so a racing capture, release, expiry, settlement
  or refund sees the state the other left.
- stripes: a high-volume wallet's `payments_walletstripe` rows (docs/contract.md §2.9). A hot-path
  debit locks one, by its UPDATE. A rebalance or a change of the stripe count locks them all, in
  ascending stripe number, after the wallet row (and after any hold, payment or refund the same
  transaction holds): `wallet_stripes_lock`.
- usage positions: `metering_usageposition` rows, an organization's usage of a service this period,
  which positional prices (docs/pricing.md) are priced at. Taken before the wallet: by the hot path's
  guarded statement (its UPDATE of the position runs before the wallet's), and by
  `metering.services.positions.position_lock` in the locked paths (a batch locks its services'
  positions in ascending service id). A stripe rebalance never runs while a position is locked by the
  hot path: a guarded statement that the wallet refuses fails and is settled on the locked path.
- refund: after its payment.
- budgets: `payments_budget` rows, which the statements that write budget spends lock FOR KEY SHARE
  (ascending id) as they read them, so a spend row is never written for a budget deleted meanwhile. A
  budget's deletion locks its row FOR UPDATE before it deletes its spends and itself; editing one (a
  non-key UPDATE) waits for nobody.
- budget spends: `payments_budgetspend` rows, what a budget's scope spent this period (docs/credits.md).
  A usage posting's statement upserts them before its UPDATE of the wallet (or stripe) row, which
  waits for them (its condition reads the upsert's answer); `budget_spends_lock` takes them in the
  locked paths (ascending id), before the wallet. A hold's capture takes this period's spends, then
  its hold's (an older period's when it rolled over): a newer period's before an older one's.
- credit grants: `payments_creditgrant` rows, locked in burn order by the draw function a usage or
  subscription posting calls in its own statement after the wallet row (or stripe) is locked, and by
  `grant_lock` (an expiry's write-off) after `wallet_lock`. Every writer of a grant holds its
  wallet's lock first, except a debit on a stripe, which locks only its stripe, then the grants.
- API key: never locked here. The usage statements' `UPDATE accounts_apikey SET spent = …` takes its
  row lock last, after the wallet's or the stripe's (spend caps are checked under the wallet lock:
  capped keys never take the stripes' hot path).
- subscription: an organization's open `metering_subscription` row (`subscription_lock`), taken first by
  every change of a plan and every period renewal or collection of its fee
  (metering/services/subscriptions.py), so two of them never interleave; then the usage positions its
  included quantities are granted on (metering/services/positions.py), then the wallet the fee moves.
- position: a `metering_usageposition` row, before the wallet (the usage paths that price at a
  position lock it first; a grant of included quantities takes it by its upsert).
- auto recharge: an organization's `payments_autorecharge` row (`auto_recharge_lock`), taken first by
  every decision of auto top-up (payments/auto_recharge.py): a change of its settings, the start of an
  off-session recharge (the monthly maximum is summed and the pending payment inserted under it), and
  the record of a decline. Then the wallet (its `auto_recharge_below` column follows the setting), then
  the payment. No other money path takes it, and the provider is called only after it is released.
- document counter: a `payments_documentcounter` row, one per organization and kind of document
  (docs/statements.md). The numbering trigger of a receipt or statement upserts it as the document is
  inserted, so every insert holds it until its transaction ends: last, after the wallet and payment a
  settlement holds. A statement's issuance takes it first and alone (`document_counter_lock`), so one
  organization's months are issued one at a time, in order.
- organization: only team changes (roles, removals) lock it, to keep the last owner; no money path does.

This module sits on the lowest floor so every app may use it; it names the models through Django's
app registry rather than importing the apps above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db import connection, transaction
from django.utils import timezone


def _in_transaction(what: str) -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"{what} must run inside a transaction: a lock outside one is released at once")


@dataclass(frozen=True, slots=True)
class WalletState:
    """A wallet's money columns, read under its lock."""

    balance: Decimal
    held: Decimal
    credit_limit: Decimal
    low_balance_threshold: Decimal
    low_balance_alerted: bool
    stripes: int
    expired_unwritten: Decimal  # credit grants past their expiry not yet written off: not spendable

    @property
    def unavailable(self) -> Decimal:
        """What the overdraft rule counts as not available: the holds and the expired credit."""
        return self.held + self.expired_unwritten


def wallet_lock(*, organization_id: int, now: datetime | None = None) -> WalletState:
    """Lock the organization's wallet until the transaction ends and answer its money columns; its
    expired credit as of `now` (the moment the caller's postings will name, so both agree)."""
    _in_transaction("wallet_lock")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT balance, held, credit_limit, low_balance_threshold, low_balance_alerted, stripes,"
            " (SELECT COALESCE(sum(g.remaining), 0) FROM payments_creditgrant g"
            "   WHERE g.organization_id = w.organization_id AND g.remaining > 0 AND g.expires_at <= %s)"
            " FROM payments_wallet w WHERE organization_id = %s FOR UPDATE OF w",
            [now or timezone.now(), organization_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"organization {organization_id} has no wallet")
    return WalletState(*row)


def document_counter_lock(*, organization_id: int, kind: str) -> int:
    """Lock (creating it at 0 if need be) the organization's counter of `kind` documents until the
    transaction ends; answer the last number issued."""
    _in_transaction("document_counter_lock")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO payments_documentcounter (organization_id, kind, last) VALUES (%s, %s, 0)"
            " ON CONFLICT (organization_id, kind) DO UPDATE SET last = payments_documentcounter.last RETURNING last",
            [organization_id, kind],
        )
        return int(cursor.fetchone()[0])


def wallet_stripes_lock(*, organization_id: int) -> dict[int, Decimal]:
    """Lock every stripe of a high-volume wallet, in ascending order, after its wallet; answer
    stripe → balance (empty for a wallet without stripes)."""
    _in_transaction("wallet_stripes_lock")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT stripe, balance FROM payments_walletstripe WHERE organization_id = %s ORDER BY stripe FOR UPDATE",
            [organization_id],
        )
        return dict(cursor.fetchall())


def _locked(app_label: str, model_name: str, **lookup: Any) -> Any:
    return apps.get_model(app_label, model_name).objects.select_for_update().get(**lookup)


def hold_lock(*, hold_id: int) -> Any:
    """Lock and answer a metering Hold (after its wallet)."""
    _in_transaction("hold_lock")
    return _locked("metering", "Hold", pk=hold_id)


def payment_lock(*, payment_id: int) -> Any:
    """Lock and answer a Payment (after its wallet)."""
    _in_transaction("payment_lock")
    return _locked("payments", "Payment", pk=payment_id)


def refund_lock(*, refund_id: int) -> Any:
    """Lock and answer a Refund (after its wallet and its payment)."""
    _in_transaction("refund_lock")
    return _locked("payments", "Refund", pk=refund_id)


def grant_lock(*, grant_id: int) -> Any:
    """Lock and answer a CreditGrant (after its wallet)."""
    _in_transaction("grant_lock")
    return _locked("payments", "CreditGrant", pk=grant_id)


def subscription_lock(*, subscription_id: int) -> Any:
    """Lock and answer a metering Subscription (before any position and the wallet)."""
    _in_transaction("subscription_lock")
    return _locked("metering", "Subscription", pk=subscription_id)


def subscription_open_lock(*, organization_id: int) -> Any:
    """Lock and answer the organization's subscription that is not canceled, or None."""
    _in_transaction("subscription_open_lock")
    model = apps.get_model("metering", "Subscription")
    return model.objects.select_for_update().filter(organization_id=organization_id).exclude(status="canceled").first()


def auto_recharge_lock(*, organization_id: int) -> Any:
    """Lock and answer the organization's AutoRecharge, or None (before its wallet and payments)."""
    _in_transaction("auto_recharge_lock")
    return apps.get_model("payments", "AutoRecharge").objects.select_for_update().filter(pk=organization_id).first()


def organization_lock(*, organization_id: int) -> None:
    """Lock an organization for a team change (roles, removals), so the last owner is never removed."""
    _in_transaction("organization_lock")
    apps.get_model("accounts", "Organization").objects.select_for_update().filter(pk=organization_id).first()


def invitation_lock(*, digest: str) -> Any:
    """Lock and answer the invitation with this token digest, or None."""
    _in_transaction("invitation_lock")
    return apps.get_model("accounts", "Invitation").objects.select_for_update().filter(digest=digest).first()
