"""Credit grants under real concurrency (docs/credits.md): 16 threads × 50 debits through POST usage/ on
an organization with three grants of different priorities and expiries. Debits on one wallet are
serialized by its row lock and a transfer's id is drawn under that lock, so replaying the successful
debits in transfer-id order through the sequential Fraction oracle must give every transfer's
allocations exactly; and the expiry task racing itself and the debits writes each grant off once."""

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db.models import F as DbF
from django.db.models import Sum
from django.utils import timezone

from accounts import services as account_services
from payments import ledger
from payments.credits import grants_expire
from payments.models import Account, Budget, BudgetSpend, CreditGrant, GrantAllocation, LedgerEntry, Transfer, TransferKind
from tests.concurrency import run_concurrently
from tests.conftest import key_client
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.credit_world import (
    ModelGrant,
    allocations_by_transfer,
    assert_grant_books,
    burn,
    code_of,
    expired_credits_total,
    frac,
    grant,
    use,
)
from tests.payments.helpers import wallet_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

D = Decimal
THREADS, EACH = 16, 50


def shop(price: str, funding: str):
    owner = UserFactory()
    organization = organization_create(name="Granted", owner=owner)
    key = account_services.api_key_create(organization=organization, name="live", created_by=owner)
    service_with_price(slug="meter", unit_price=price)
    if D(funding):
        wallet_fund(organization, funding)
    return organization, key


def three_grants(organization) -> list[ModelGrant]:
    """Burn order: `first` (priority 5), then `soon` (priority 10, expires first), then `later`
    (priority 10, no expiry) — created in the opposite order, so age does not decide it."""
    now = timezone.now()
    specs = [
        ("later", "50.5", 10, None),
        ("soon", "30.13", 10, now + timedelta(days=1)),
        ("first", "20", 5, now + timedelta(days=2)),
    ]
    grants = []
    for seq, (_, amount, priority, expires_at) in enumerate(specs):
        created = grant(organization, amount, priority=priority, expires_at=expires_at)
        grants.append(ModelGrant(created.pk, frac(amount), frac(amount), priority, expires_at, seq))
    return grants


def hammer(secret: str) -> Counter:
    def work(index: int) -> list[str]:
        client = key_client(secret)
        outcomes = []
        for n in range(EACH):
            response = use(client, f"c-{index}-{n}")
            outcomes.append("ok" if response.status_code == 201 else f"{response.status_code}:{code_of(response)}")
        return outcomes

    return Counter(o for thread in run_concurrently(THREADS, work, reraise=True) for o in thread)


# (price per debit, ungranted funding, debits that pass): the grants run out with ungranted money
# behind them; the debits use only part of the grants; the grants are all the money there is.
CASES = [("0.37", "500", THREADS * EACH), ("0.1", "500", THREADS * EACH), ("0.37", "0", 271)]


@pytest.mark.parametrize(("price", "funding", "passing"), CASES)
def test_concurrent_debits_burn_grants_exactly_as_the_sequential_oracle(price, funding, passing):
    organization, key = shop(price, funding)
    grants = three_grants(organization)
    granted = sum((g.amount for g in grants), Fraction(0))

    outcomes = hammer(key.secret)

    assert outcomes == {"ok": passing} | (
        {"402:insufficient_balance": THREADS * EACH - passing} if passing < THREADS * EACH else {}
    )
    cost = frac(price)
    now = timezone.now()
    expected: dict[tuple[int, int], Fraction] = {}
    transfers = Transfer.objects.filter(organization=organization, kind=TransferKind.USAGE).order_by("id")
    assert transfers.count() == passing
    for transfer in transfers:
        for grant_id, amount in burn(grants, cost, now).items():
            expected[(transfer.pk, grant_id)] = amount
    assert {k: frac(v) for k, v in allocations_by_transfer(organization.pk).items()} == expected
    assert {g.pk: frac(g.remaining) for g in CreditGrant.objects.filter(organization=organization)} == {
        g.id: g.remaining for g in grants
    }
    drawn = frac(GrantAllocation.objects.filter(organization=organization).aggregate(s=Sum("amount"))["s"] or 0)
    assert drawn == min(passing * cost, granted)
    assert frac(wallet_of(organization).balance) == frac(funding) + granted - passing * cost
    assert_grant_books(organization.pk)


def test_on_a_striped_wallet_grants_burn_in_order_then_the_stripes_take_over():
    organization, key = shop("0.37", "500")
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
    organization.refresh_from_db()
    grants = three_grants(organization)
    counted = Budget.objects.create(organization=organization, period="month", amount=D(10), mode="soft")

    outcomes = hammer(key.secret)

    assert outcomes == {"ok": THREADS * EACH}
    # on a stripe or, refused there while grants are live, on the wallet row: counted once either way
    assert BudgetSpend.objects.get(budget=counted).spent == THREADS * EACH * D("0.37")
    assert all(g.remaining == 0 for g in CreditGrant.objects.filter(organization=organization))
    per_grant = dict(GrantAllocation.objects.filter(organization=organization).values_list("grant_id").annotate(s=Sum("amount")))
    assert {k: frac(v) for k, v in per_grant.items()} == {g.id: g.amount for g in grants}
    # the debit that finished the last grant paid the rest of its cost with ungranted money; the
    # debits with allocations are exactly the first ones, in transfer order, until the grants ran out
    with_allocations = sorted(
        set(GrantAllocation.objects.filter(organization=organization).values_list("transfer_id", flat=True))
    )
    first = list(
        Transfer.objects.filter(organization=organization, kind=TransferKind.USAGE).order_by("id").values_list("id", flat=True)
    )
    assert with_allocations == first[: len(with_allocations)]
    granted = sum((g.amount for g in grants), Fraction(0))
    assert len(with_allocations) == -(-granted // frac("0.37"))  # ceil: 100.63 / 0.37 → 272 debits
    assert frac(wallet_of(organization).balance) == 500 + granted - THREADS * EACH * frac("0.37")
    assert_grant_books(organization.pk)


def test_the_expiry_task_racing_itself_writes_each_grant_off_once():
    owner = UserFactory()
    first = organization_create(name="One", owner=owner)
    second = organization_create(name="Two", owner=UserFactory())
    service_with_price(slug="meter", unit_price="1")
    amounts = {first: ["1.5", "2.25", "0.000000000001"], second: ["7", "3.33"]}
    expiring = []
    for organization, values in amounts.items():
        wallet_fund(organization, "10")
        for value in values:
            expiring.append(grant(organization, value, expires_at=timezone.now() + timedelta(hours=1)))
        grant(organization, "4", expires_at=timezone.now() + timedelta(days=9))  # not due
    CreditGrant.objects.filter(pk__in=[g.pk for g in expiring]).update(expires_at=DbF("expires_at") - timedelta(hours=2))

    counts = run_concurrently(8, lambda _: grants_expire(), reraise=True)

    assert sum(counts) == len(expiring)  # each write-off counted by the one run that made it
    assert grants_expire() == 0
    for g in expiring:
        assert Transfer.objects.filter(kind=TransferKind.EXPIRY, reference=f"grant:{g.pk}").count() == 1
        g.refresh_from_db()
        assert g.remaining == 0 and g.expiry_transfer_id is not None
    for organization, values in amounts.items():
        total = sum((D(v) for v in values), D(0))
        assert expired_credits_total(organization.pk) == total
        assert wallet_of(organization).balance == D("14")  # 10 funded + the grants − what expired
        assert_grant_books(organization.pk)
    assert LedgerEntry.objects.filter(account=Account.EXPIRED_CREDITS).count() == len(expiring)


def test_debits_racing_the_expiry_never_spend_expired_credit():
    """An expired grant not yet written off is not spendable, whether the debit runs before or after the
    write-off: debits draw only from the live grant and the ungranted money, and the write-off takes
    exactly what the expired grant held."""
    organization, key = shop("1", "100")
    expired = grant(organization, "60", priority=1, expires_at=timezone.now() + timedelta(hours=1))
    live = grant(organization, "50", priority=90)
    CreditGrant.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    def work(index: int):
        if index < 4:
            return [grants_expire() for _ in range(5)]
        client = key_client(key.secret)
        return [use(client, f"r-{index}-{n}").status_code for n in range(EACH)]

    results = run_concurrently(THREADS, work, reraise=True)

    assert sum(sum(r) for r in results[:4]) == 1
    statuses = Counter(s for r in results[4:] for s in r)
    # 150 spendable (100 ungranted + 50 live) of 210 in the wallet: 150 of the 600 debits pass
    assert statuses == {201: 150, 402: (THREADS - 4) * EACH - 150}
    expired.refresh_from_db()
    live.refresh_from_db()
    assert (expired.remaining, live.remaining) == (D(0), D(0))
    assert GrantAllocation.objects.filter(grant=expired).values_list("transfer__kind", "amount").get() == (
        TransferKind.EXPIRY,
        D("60"),
    )
    assert wallet_of(organization).balance == D(0)
    assert_grant_books(organization.pk)
