"""Shared by the credit-grant and budget money tests (docs/credits.md): an exact Fraction oracle of the
burn order, the books' invariants checked against the database, and small request helpers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db.models import Sum
from django.utils import timezone

from payments.credits import GrantSpec, grant_create
from payments.models import (
    Account,
    CreditGrant,
    GrantAllocation,
    GrantCategory,
    LedgerEntry,
    TransferKind,
    Wallet,
)
from tests.payments.helpers import assert_money_invariants

USAGE = "/api/v1/usage/"
BATCH = "/api/v1/usage/batch/"
HOLDS = "/api/v1/holds/"
D = Decimal
F = Fraction


def frac(value: Decimal | str | int) -> Fraction:
    return Fraction(Decimal(value))


def use(client, key: str, service: str = "meter", **extra):
    return client.post(USAGE, {"service": service, "idempotency_key": key, **extra}, format="json")


def batch(client, keys: Iterable[str], service: str = "meter"):
    return client.post(BATCH, {"events": [{"service": service, "idempotency_key": k} for k in keys]}, format="json")


def hold(client, key: str, amount: Decimal | str, service: str = "meter"):
    return client.post(HOLDS, {"service": service, "amount": str(amount), "idempotency_key": key}, format="json")


def capture(client, hold_id: int):
    return client.post(f"{HOLDS}{hold_id}/capture/", {}, format="json")


def release(client, hold_id: int):
    return client.post(f"{HOLDS}{hold_id}/release/", {}, format="json")


def code_of(response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def grant(organization, amount, *, priority: int = 50, expires_at: datetime | None = None, reason: str = "test"):
    return grant_create(
        organization_id=organization.pk,
        spec=GrantSpec(
            amount=D(amount), category=GrantCategory.PROMOTIONAL, priority=priority, expires_at=expires_at, reason=reason
        ),
        created_by_id=None,
    )


@contextmanager
def clock_at(when: datetime) -> Iterator[None]:
    """The application's clock (django.utils.timezone.now, which every money path reads) says `when`.
    The database's own now() keeps the real time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timezone, "now", lambda: when)
        yield


# --- The oracle: burn order over Fractions ------------------------------------------------------------


@dataclass
class ModelGrant:
    id: int
    amount: Fraction
    remaining: Fraction
    priority: int
    expires_at: datetime | None
    seq: int  # creation order (created_at, id)
    written_off: bool = False

    def live(self, now: datetime) -> bool:
        return self.remaining > 0 and (self.expires_at is None or self.expires_at > now)

    def burn_key(self) -> tuple:
        # priority asc, expires_at asc with none last, then creation order
        return (self.priority, self.expires_at is None, self.expires_at or datetime.min, self.seq)


def burn(grants: Iterable[ModelGrant], owed: Fraction, now: datetime) -> dict[int, Fraction]:
    """What a debit of `owed` takes from each live grant, in burn order (the model's grants change)."""
    taken: dict[int, Fraction] = {}
    for g in sorted((g for g in grants if g.live(now)), key=ModelGrant.burn_key):
        if owed <= 0:
            break
        took = min(g.remaining, owed)
        g.remaining -= took
        owed -= took
        taken[g.id] = took
    return taken


# --- The books ------------------------------------------------------------------------------------------


def wallet_entries_total(organization_id: int) -> Decimal:
    total = LedgerEntry.objects.filter(organization_id=organization_id, account=Account.WALLET).aggregate(s=Sum("amount"))["s"]
    return total or D(0)


def expired_credits_total(organization_id: int) -> Decimal:
    total = LedgerEntry.objects.filter(organization_id=organization_id, account=Account.EXPIRED_CREDITS).aggregate(
        s=Sum("amount")
    )["s"]
    return total or D(0)


def allocations_by_transfer(organization_id: int) -> dict[tuple[int, int], Decimal]:
    """(transfer, grant) → amount, over every allocation of the organization."""
    rows = GrantAllocation.objects.filter(organization_id=organization_id).values_list("transfer_id", "grant_id", "amount")
    found: dict[tuple[int, int], Decimal] = {}
    for transfer_id, grant_id, amount in rows:
        assert (transfer_id, grant_id) not in found, f"two allocations of transfer {transfer_id} to grant {grant_id}"
        found[(transfer_id, grant_id)] = amount
    return found


def assert_grant_books(organization_id: int, *, holds: bool = True) -> None:
    """docs/credits.md's invariants: balance == Σ wallet entries; each grant's remaining == amount − Σ its
    allocations and ≥ 0; Σ allocations of a usage or subscription debit ≤ its cost, of a credit that
    reverses one (an upgrade's) a give-back of at most the credit; an expiry transfer writes off exactly
    its grant's allocation; plus the ledger's own invariants."""
    assert_money_invariants([organization_id], holds=holds)
    wallet = Wallet.objects.get(organization_id=organization_id)
    assert wallet.balance == wallet_entries_total(organization_id)
    for g in CreditGrant.objects.filter(organization_id=organization_id):
        taken = GrantAllocation.objects.filter(grant=g).aggregate(s=Sum("amount"))["s"] or D(0)
        assert g.remaining == g.amount - taken, (g.pk, g.remaining, g.amount, taken)
        assert g.remaining >= 0
    for row in (
        GrantAllocation.objects.filter(organization_id=organization_id)
        .values("transfer_id", "transfer__kind")
        .annotate(total=Sum("amount"))
    ):
        wallet_leg = LedgerEntry.objects.get(transfer_id=row["transfer_id"], account=Account.WALLET).amount
        if row["transfer__kind"] in (TransferKind.USAGE, TransferKind.SUBSCRIPTION) and wallet_leg < 0:
            assert 0 < row["total"] <= -wallet_leg, row  # a debit draws at most its cost
        elif row["transfer__kind"] in (TransferKind.USAGE, TransferKind.SUBSCRIPTION):
            assert -wallet_leg <= row["total"] < 0, row  # a credit gives back at most itself
        else:
            assert row["transfer__kind"] == TransferKind.EXPIRY, row
            assert row["total"] == -wallet_leg, row
