"""Concurrent debits, replays, batches and hold races on one wallet (docs/contract.md §2.4, §2.5): real threads,
real transactions, one PostgreSQL."""

from collections import Counter
from decimal import Decimal

import pytest

from accounts import services as account_services
from accounts.models import Role
from accounts.tenancy import Tenant
from metering import selectors, services
from metering.models import CalcMethod, Hold, HoldStatus, UsageRecord
from payments.ledger import InsufficientBalance
from payments.models import LedgerEntry, Transfer, Wallet
from tests.concurrency import run_concurrently
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

D = Decimal
PRICE = D("0.001")


@pytest.fixture
def shop():
    """An organization with a live API key and a $0.001-per-request service, outside any test transaction."""
    owner = UserFactory()
    organization = organization_create(name="Race", owner=owner)
    service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price=str(PRICE))
    service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="1", output_price="1")
    key = account_services.api_key_create(organization=organization, name="race").api_key
    return {
        "organization": organization,
        "key_tenant": Tenant(organization=organization, user=None, api_key=key, role=None),
        "user_tenant": Tenant(organization=organization, user=owner, api_key=None, role=Role.OWNER),
    }


def debit(tenant: Tenant, key: str) -> str:
    try:
        outcome = services.usage_record(tenant=tenant, event=services.UsageEvent(service="ping", idempotency_key=key, data={}))
    except InsufficientBalance:
        return "refused"
    return "replayed" if outcome.replayed else "recorded"


def assert_running_balances_never_below(organization, floor: Decimal) -> None:
    balances = LedgerEntry.objects.filter(organization_id=organization.pk, account="wallet").values_list(
        "balance_after", flat=True
    )
    assert min(balances) >= floor


@pytest.mark.parametrize(("funding", "credit_limit"), [("0.3", "0"), ("0.2", "0.1")])
def test_concurrent_debits_never_overdraw_and_lose_nothing(shop, funding, credit_limit):
    organization = shop["organization"]
    Wallet.objects.filter(organization_id=organization.pk).update(credit_limit=D(credit_limit))
    wallet_fund(organization, funding)
    affordable = int((D(funding) + D(credit_limit)) / PRICE)  # 300 of the 16 × 50 = 800 attempts

    per_thread = run_concurrently(16, lambda t: [debit(shop["key_tenant"], f"t{t}-{n}") for n in range(50)])

    outcomes = Counter(outcome for thread in per_thread for outcome in thread)  # an exception here fails the test
    assert outcomes == {"recorded": affordable, "refused": 800 - affordable}
    wallet = wallet_of(organization)
    assert wallet.balance == -D(credit_limit)
    assert UsageRecord.objects.filter(organization_id=organization.pk).count() == affordable
    assert Transfer.objects.filter(organization_id=organization.pk, kind="usage").count() == affordable
    shop["key_tenant"].api_key.refresh_from_db()
    assert shop["key_tenant"].api_key.spent == affordable * PRICE
    assert_running_balances_never_below(organization, -D(credit_limit))
    assert_money_invariants([organization.pk])


def test_one_idempotency_key_from_many_threads_debits_once(shop):
    organization = shop["organization"]
    wallet_fund(organization, "1")

    outcomes = run_concurrently(20, lambda t: debit(shop["key_tenant"] if t % 2 else shop["user_tenant"], "same-key"))

    assert sorted(outcomes) == ["recorded"] + ["replayed"] * 19
    assert UsageRecord.objects.filter(organization_id=organization.pk).count() == 1
    assert Transfer.objects.filter(organization_id=organization.pk, kind="usage").count() == 1
    assert wallet_of(organization).balance == D("0.999")
    assert_money_invariants([organization.pk])


def test_concurrent_batches_and_singles_share_one_wallet(shop):
    organization = shop["organization"]
    wallet_fund(organization, "0.25")  # affords 250 of the 8 × 25 single + 4 × 25 batched = 300 events

    def work(t: int) -> list[str]:
        if t < 4:
            events = [services.UsageEvent(service="ping", idempotency_key=f"b{t}-{n}", data={}) for n in range(25)]
            results = services.usage_record_batch(tenant=shop["key_tenant"], events=events)
            return [{201: "recorded", 402: "refused"}[r.status] for r in results]
        return [debit(shop["user_tenant"], f"s{t}-{n}") for n in range(25)]

    per_thread = run_concurrently(12, work)

    outcomes = Counter(outcome for thread in per_thread for outcome in thread)
    assert outcomes == {"recorded": 250, "refused": 50}
    assert wallet_of(organization).balance == 0
    assert UsageRecord.objects.filter(organization_id=organization.pk).count() == 250
    assert_running_balances_never_below(organization, D(0))
    assert_money_invariants([organization.pk])


def _hold(shop, key: str, amount: str = "0.5") -> int:
    outcome = services.hold_create(
        tenant=shop["key_tenant"], service="gpt", idempotency_key=key, amount=D(amount), maxima={}, expires_in=None
    )
    return outcome.hold.pk


def _capture(shop, hold_id: int) -> str:
    hold = selectors.hold_get(organization_id=shop["organization"].pk, hold_id=hold_id, test=False)
    try:
        outcome = services.hold_capture(tenant=shop["key_tenant"], hold=hold, data={"input_tokens": 100_000, "output_tokens": 0})
    except services.HoldNotActive:
        return "not active"
    return "capture replayed" if outcome.replayed else "captured"


def _release(shop, hold_id: int, status: HoldStatus = HoldStatus.RELEASED) -> str:
    hold = selectors.hold_get(organization_id=shop["organization"].pk, hold_id=hold_id, test=False)
    try:
        outcome = services.hold_release(hold=hold, status=status)
    except services.HoldNotActive:
        return "not active"
    return "release replayed" if outcome.replayed else str(status)


@pytest.mark.parametrize("other_holds", [0, 1], ids=["only-hold", "beside-another-hold"])
def test_capture_and_release_of_one_hold_race_and_exactly_one_wins(shop, other_holds):
    organization = shop["organization"]
    wallet_fund(organization, "10")
    if other_holds:
        _hold(shop, "bystander", amount="1")
    rounds = 8
    winners = Counter()
    for n in range(rounds):
        hold_id = _hold(shop, f"race-{n}")

        outcomes = run_concurrently(2, lambda t, hold_id=hold_id: _capture(shop, hold_id) if t == 0 else _release(shop, hold_id))

        assert sorted(map(str, outcomes)) in (["captured", "not active"], ["not active", "released"]), outcomes
        final = Hold.objects.get(pk=hold_id).status
        winners[final] += 1
        assert UsageRecord.objects.filter(hold_id=hold_id).count() == (1 if final == HoldStatus.CAPTURED else 0)

    captured = winners[HoldStatus.CAPTURED]
    assert wallet_of(organization).held == D(other_holds)
    assert wallet_of(organization).balance == D("10") - captured * D("0.1")
    assert_money_invariants([organization.pk])


def test_concurrent_captures_of_one_hold_debit_once(shop):
    organization = shop["organization"]
    wallet_fund(organization, "10")
    hold_id = _hold(shop, "h")

    outcomes = run_concurrently(6, lambda t: _capture(shop, hold_id))

    assert sorted(outcomes) == ["capture replayed"] * 5 + ["captured"], outcomes
    assert Transfer.objects.filter(organization_id=organization.pk, kind="usage").count() == 1
    assert wallet_of(organization).balance == D("9.9")
    assert_money_invariants([organization.pk])


def test_expiry_racing_a_capture_frees_or_charges_exactly_once(shop):
    organization = shop["organization"]
    wallet_fund(organization, "10")
    hold_id = _hold(shop, "h")

    outcomes = run_concurrently(2, lambda t: _capture(shop, hold_id) if t == 0 else _release(shop, hold_id, HoldStatus.EXPIRED))

    assert sorted(map(str, outcomes)) in (["captured", "not active"], ["expired", "not active"]), outcomes
    assert wallet_of(organization).held == 0
    assert_money_invariants([organization.pk])


def test_live_and_test_events_racing_on_one_key_each_record_once(shop):
    """Mode is part of idempotency: a test event can never take (and so make free) the live one."""
    organization = shop["organization"]
    wallet_fund(organization, "1")
    test_key = account_services.api_key_create(organization=organization, name="t", mode="test").api_key
    test_tenant = Tenant(organization=organization, user=None, api_key=test_key, role=None)

    outcomes = run_concurrently(16, lambda t: (t % 2, debit(test_tenant if t % 2 else shop["key_tenant"], "same-key")))

    assert sorted(outcomes) == [(0, "recorded")] + [(0, "replayed")] * 7 + [(1, "recorded")] + [(1, "replayed")] * 7
    records = UsageRecord.objects.filter(organization_id=organization.pk, idempotency_key="same-key")
    assert sorted(records.values_list("test", "cost")) == [(False, PRICE), (True, PRICE)]
    assert wallet_of(organization).balance == D(1) - PRICE
    assert_money_invariants([organization.pk])


def test_concurrent_holds_and_over_captures_start_nothing_past_the_limit(shop):
    """Twenty callers each hold $0.10 and then use $1.00 (an over-capture): holds stop being granted
    once available reaches the limit, so the loss past it is bounded by what the holds allowed."""
    organization = shop["organization"]
    wallet_fund(organization, "1")

    def hold_then_over_capture(t: int) -> str:
        try:
            hold_id = _hold(shop, f"over-{t}", amount="0.1")
        except InsufficientBalance:
            return "refused"
        hold = selectors.hold_get(organization_id=organization.pk, hold_id=hold_id, test=False)
        services.hold_capture(tenant=shop["key_tenant"], hold=hold, data={"input_tokens": 1_000_000, "output_tokens": 0})
        return "captured"

    outcomes = Counter(run_concurrently(20, hold_then_over_capture, reraise=True))

    assert outcomes["captured"] + outcomes["refused"] == 20
    assert 1 <= outcomes["captured"] <= 10  # $1.00 of available admits at most ten $0.10 holds at once
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D(1) - outcomes["captured"] * D(1), D(0))
    with pytest.raises(InsufficientBalance):
        _hold(shop, "after", amount="0.000000000001")
    assert_money_invariants([organization.pk])
