"""High-volume wallets under real concurrency (docs/contract.md §2.9): threads debiting, holding,
capturing, crediting, batching and turning striping on and off on one organization, on real
transactions; afterwards the money invariants hold and the balance equals an exact (Fraction) oracle."""

import time
from collections import Counter
from decimal import Decimal
from fractions import Fraction

import pytest

from accounts.models import Role
from accounts.tenancy import Tenant
from metering import selectors, services
from metering.models import CalcMethod, UsageRecord
from payments import ledger
from payments.models import LedgerEntry, WalletStripe
from payments.services import wallet_settings_update
from tests.concurrency import run_concurrently
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

D = Decimal
PRICE = D("0.001")


@pytest.fixture
def hot():
    """An organization with a $0.001-per-request service and a $1-per-million-tokens one."""
    owner = UserFactory()
    organization = organization_create(name="Hot", owner=owner)
    service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price=str(PRICE))
    service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="1", output_price="1")
    return {"organization": organization, "tenant": Tenant(organization=organization, user=owner, api_key=None, role=Role.OWNER)}


def stripe_the_wallet(organization, stripes: int) -> None:
    wallet_settings_update(organization_id=organization.pk, stripes=stripes)
    organization.refresh_from_db()


def ping(tenant: Tenant, key: str) -> Fraction | None:
    """One $0.001 debit: its cost, or None when refused."""
    try:
        services.usage_record(tenant=tenant, event=services.UsageEvent(service="ping", idempotency_key=key, data={}))
    except ledger.InsufficientBalance:
        return None
    return Fraction(str(PRICE))


def assert_no_row_ever_went_below(organization, floor: Decimal) -> None:
    """Every row's running balance (the wallet row's, each stripe's) stayed at or above `floor`: the
    wallet row carries holds and the credit limit, so its balance is at least −credit_limit, and a
    stripe's at least 0."""
    lowest = LedgerEntry.objects.filter(organization_id=organization.pk, account="wallet").values_list("stripe", "balance_after")
    for stripe, balance_after in lowest:
        assert balance_after >= (floor if stripe is None else 0), (stripe, balance_after)


@pytest.mark.parametrize("stripes", [0, 6, 16])  # shares that do not divide by the price: leftovers must be found
@pytest.mark.parametrize(("funding", "credit_limit"), [("0.3", "0"), ("0.2", "0.1")])
def test_concurrent_debits_on_a_striped_wallet_never_overdraw_and_refuse_only_when_it_is_all_spent(
    hot, stripes, funding, credit_limit
):
    organization = hot["organization"]
    wallet_settings_update(organization_id=organization.pk, credit_limit=D(credit_limit))
    wallet_fund(organization, funding)
    if stripes:
        stripe_the_wallet(organization, stripes)
    affordable = int((D(funding) + D(credit_limit)) / PRICE)  # 300 of the 16 × 50 = 800 attempts

    per_thread = run_concurrently(16, lambda t: [ping(hot["tenant"], f"t{t}-{n}") for n in range(50)], reraise=True)

    outcomes = Counter(cost is not None for thread in per_thread for cost in thread)
    # Exactly as many as the whole wallet affords: never one more (an overdraft), never one fewer
    # (a refusal while some stripe, or the stripes together, could still pay).
    assert outcomes == {True: affordable, False: 800 - affordable}
    assert wallet_of(organization).balance == -D(credit_limit)
    assert UsageRecord.objects.filter(organization_id=organization.pk).count() == affordable
    assert_no_row_ever_went_below(organization, -D(credit_limit))
    assert_money_invariants([organization.pk])


def test_debits_holds_captures_credits_batches_and_restriping_race_and_the_books_stay_exact(hot):
    organization, tenant = hot["organization"], hot["tenant"]
    funding = D("0.3")
    wallet_fund(organization, funding)
    stripe_the_wallet(organization, 4)

    def debits(t: int) -> list[Fraction]:
        return [cost for n in range(40) if (cost := ping(tenant, f"d{t}-{n}")) is not None]

    def holds_and_captures(t: int) -> list[Fraction]:
        costs = []
        for n in range(10):
            try:
                hold = services.hold_create(
                    tenant=tenant, service="gpt", idempotency_key=f"h{t}-{n}", amount=D("0.05"), maxima={}, expires_in=None
                ).hold
            except ledger.InsufficientBalance:
                continue
            hold = selectors.hold_get(organization_id=organization.pk, hold_id=hold.pk, test=False)
            if n % 3 == 2:
                services.hold_release(hold=hold)
                continue
            outcome = services.hold_capture(tenant=tenant, hold=hold, data={"input_tokens": 40_000, "output_tokens": 0})
            costs.append(Fraction(str(outcome.record.cost)))
        return costs

    def credits(t: int) -> list[Fraction]:
        for _ in range(10):
            ledger.wallet_adjust(organization_id=organization.pk, amount=D("0.1"), reason="top-up", created_by_id=None)
            time.sleep(0.005)
        return [Fraction(-1, 10)] * 10  # negative costs: money in

    def restripe(t: int) -> list[Fraction]:
        for stripes in (8, 0, 2, 4, 0, 16, 3):
            wallet_settings_update(organization_id=organization.pk, stripes=stripes)  # the threads' hint goes stale
            time.sleep(0.01)
        return []

    def batches(t: int) -> list[Fraction]:
        costs = []
        for n in range(4):
            events = [services.UsageEvent(service="ping", idempotency_key=f"b{t}-{n}-{i}", data={}) for i in range(10)]
            results = services.usage_record_batch(tenant=tenant, events=events)
            assert {r.status for r in results} <= {201, 402}
            costs += [Fraction(str(PRICE)) for r in results if r.status == 201]
        return costs

    roles = [debits] * 6 + [holds_and_captures] * 2 + [credits, restripe] + [batches] * 2

    per_thread = run_concurrently(len(roles), lambda t: roles[t](t), reraise=True)

    spent = sum((cost for thread in per_thread for cost in thread), Fraction(0))
    wallet = wallet_of(organization)
    assert Fraction(str(wallet.balance)) == Fraction(str(funding)) - spent  # the oracle: exact, not the code's own sums
    assert Fraction(str(wallet.balance)) == Fraction(str(funding)) + 1 - sum(
        Fraction(str(cost)) for cost in UsageRecord.objects.filter(organization_id=organization.pk).values_list("cost", flat=True)
    )
    assert wallet.held == 0 and wallet.balance >= 0
    assert wallet.stripes == 3 == WalletStripe.objects.filter(organization_id=organization.pk).count()
    assert_no_row_ever_went_below(organization, D(0))
    assert_money_invariants([organization.pk])


def test_concurrent_holds_and_over_captures_on_a_striped_wallet_start_nothing_past_the_limit(hot):
    """As test_concurrency's, on stripes: over-captures land on the wallet row, and the stripes' money
    moves to cover it, so once the whole wallet is spent no stripe lets anything start."""
    organization, tenant = hot["organization"], hot["tenant"]
    wallet_fund(organization, "1")
    stripe_the_wallet(organization, 8)

    def hold_then_over_capture(t: int) -> str:
        try:
            hold = services.hold_create(
                tenant=tenant, service="gpt", idempotency_key=f"over-{t}", amount=D("0.1"), maxima={}, expires_in=None
            ).hold
        except ledger.InsufficientBalance:
            return "refused"
        hold = selectors.hold_get(organization_id=organization.pk, hold_id=hold.pk, test=False)
        services.hold_capture(tenant=tenant, hold=hold, data={"input_tokens": 1_000_000, "output_tokens": 0})
        return "captured"

    def debit_while_it_lasts(t: int) -> str:
        return "debited" if ping(tenant, f"ping-{t}") is not None else "refused"

    outcomes = Counter(
        run_concurrently(24, lambda t: hold_then_over_capture(t) if t < 20 else debit_while_it_lasts(t), reraise=True)
    )

    assert 1 <= outcomes["captured"] <= 10
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D(1) - outcomes["captured"] * D(1) - outcomes["debited"] * PRICE, D(0))
    assert not WalletStripe.objects.filter(organization_id=organization.pk, balance__gt=0).exists()
    assert ping(tenant, "after") is None
    with pytest.raises(ledger.InsufficientBalance):
        services.hold_create(
            tenant=tenant, service="gpt", idempotency_key="after", amount=D("0.000001"), maxima={}, expires_in=None
        )
    assert_money_invariants([organization.pk])
