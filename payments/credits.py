"""Credit grants: putting one into a wallet, and writing off what is left of it at its expiry
(docs/credits.md). The money moves through `payments.ledger`; a debit's draw from the grants happens
inside the ledger's own posting statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing_site import locks
from billing_site.errors import InvalidRequest
from billing_site.money import ZERO, money_amount_error
from payments import ledger
from payments.credit_models import (
    GRANT_PRIORITY_DEFAULT,
    GRANT_PRIORITY_MAX,
    GRANT_PRIORITY_MIN,
    CreditGrant,
    GrantAllocation,
    GrantCategory,
    GrantSource,
)
from payments.models import Account, TransferKind

# Where a grant's money comes from: promotional credit is our gift; paid credit was bought outside
# the checkout (an invoice, a contract), so it comes in through the clearing account like a recharge.
_GRANT_COUNTER = {GrantCategory.PROMOTIONAL: Account.PROMOTIONS, GrantCategory.PAID: Account.PAYMENTS_CLEARING}


@dataclass(frozen=True, slots=True)
class GrantSpec:
    amount: Decimal
    category: GrantCategory
    priority: int = GRANT_PRIORITY_DEFAULT
    expires_at: datetime | None = None
    reason: str = ""


def grant_spec_validate(spec: GrantSpec, *, now: datetime | None = None) -> GrantSpec:
    """The rules of a grant, each error under its field (InvalidRequest)."""
    errors: dict[str, str] = {}
    if (amount_error := money_amount_error(spec.amount)) is not None:
        errors["amount"] = amount_error
    if spec.category not in GrantCategory.values:
        errors["category"] = f"One of {', '.join(GrantCategory.values)}."
    if (
        isinstance(spec.priority, bool)
        or not isinstance(spec.priority, int)
        or not GRANT_PRIORITY_MIN <= spec.priority <= GRANT_PRIORITY_MAX
    ):
        errors["priority"] = f"An integer from {GRANT_PRIORITY_MIN} to {GRANT_PRIORITY_MAX}; lower burns first."
    if spec.expires_at is not None and spec.expires_at <= (now or timezone.now()):
        errors["expires_at"] = "A grant expires in the future."
    if errors:
        raise InvalidRequest("The grant is not valid.", details=errors)
    return spec


def grant_create_in_transaction(
    *,
    organization_id: int,
    spec: GrantSpec,
    source: GrantSource,
    reference: str,
    created_by_id: int | None = None,
    kind: TransferKind = TransferKind.GRANT,
    counter_account: Account | None = None,
) -> CreditGrant:
    """Credit the wallet with `spec.amount` and earmark it as a grant, in the caller's transaction (a
    redemption passes its own transfer kind and counter account). The grant's transfer is its one credit."""
    grant_spec_validate(spec)
    posting = ledger.wallet_credit(
        organization_id=organization_id,
        amount=spec.amount,
        kind=kind,
        counter_account=counter_account or _GRANT_COUNTER[spec.category],
        reference=reference,
        memo=spec.reason,
        created_by_id=created_by_id,
    )
    assert posting.transfer_id is not None  # a credit always posts a transfer
    return CreditGrant.objects.create(
        organization_id=organization_id,
        amount=spec.amount,
        remaining=spec.amount,
        category=spec.category,
        priority=spec.priority,
        expires_at=spec.expires_at,
        source=source,
        reason=spec.reason,
        transfer_id=posting.transfer_id,
        created_by_id=created_by_id,
    )


def grant_create(
    *, organization_id: int, spec: GrantSpec, created_by_id: int | None, source: GrantSource = GrantSource.STAFF
) -> CreditGrant:
    """A grant made by staff (or the product): one `grant` transfer into the wallet, and the grant."""
    if not spec.reason.strip() and source == GrantSource.STAFF:
        raise InvalidRequest("The grant is not valid.", details={"reason": "Say why the grant is made."})
    with transaction.atomic(durable=True):
        return grant_create_in_transaction(
            organization_id=organization_id, spec=spec, source=source, reference=source.value, created_by_id=created_by_id
        )


def granted_total(*, organization_id: int) -> Decimal:
    """What the organization's grants still hold, expired or not (read as of now; under the wallet's
    lock it is exact, since every writer of a grant holds it first or, on a stripe, only draws)."""
    total = CreditGrant.objects.filter(organization_id=organization_id, remaining__gt=0).aggregate(s=Sum("remaining"))["s"]
    return total or ZERO


def grant_expire(*, grant_id: int, now: datetime | None = None) -> Decimal:
    """Write off what an expired grant still holds: one `expiry` transfer (wallet → expired_credits) and
    its allocation, under the wallet's lock and the grant's, exactly once however often or concurrently
    it runs. Answers the amount written off (0 when there was nothing, or it is not expired yet)."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        grant = CreditGrant.objects.filter(pk=grant_id).values("organization_id").first()
        if grant is None:
            return ZERO
        organization_id = grant["organization_id"]
        locks.wallet_lock(organization_id=organization_id)
        locked = locks.grant_lock(grant_id=grant_id)
        if locked.remaining <= ZERO or locked.expires_at is None or locked.expires_at > now:
            return ZERO
        left: Decimal = locked.remaining
        posting = ledger.transfer_post(
            organization_id=organization_id,
            kind=TransferKind.EXPIRY,
            amount=-left,
            counter_account=Account.EXPIRED_CREDITS,
            reference=f"grant:{grant_id}",
            memo="Credit grant expired",
            may_overdraw=True,  # written off, not spent: the money is gone whatever the balance
        )
        assert posting.transfer_id is not None  # a non-zero amount always posts a transfer
        CreditGrant.objects.filter(pk=grant_id).update(remaining=ZERO, expiry_transfer_id=posting.transfer_id)
        GrantAllocation.objects.create(
            organization_id=organization_id, grant_id=grant_id, transfer_id=posting.transfer_id, amount=left, created_at=now
        )
        return left


def grants_expire(*, now: datetime | None = None, limit: int = 1000) -> int:
    """The beat task's body: expire every grant past its `expires_at` that still holds something, one
    transaction each. Safe to run twice, or in two workers at once. Answers how many were written off."""
    now = now or timezone.now()
    due = list(
        CreditGrant.objects.filter(remaining__gt=0, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for grant_id in due if grant_expire(grant_id=grant_id, now=now) > ZERO)
