"""Hard budgets under real concurrency (docs/credits.md): threads on real transactions debiting through
POST usage/ and holding through POST holds/ against a hard budget that allows exactly K; afterwards
exactly K went through, the budget's spend is exact and the books balance."""

from collections import Counter
from decimal import Decimal

import pytest
from django.db.models import Sum

from accounts import services as account_services
from metering.models import Hold, HoldStatus, Service, UsageRecord
from metering.services import catalog
from payments import ledger
from payments.models import Budget, BudgetSpend, Transfer, TransferKind
from tests.concurrency import run_concurrently
from tests.conftest import key_client
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.credit_world import capture, code_of, hold, release, use
from tests.payments.helpers import assert_money_invariants, wallet_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

D = Decimal
THREADS, EACH = 16, 50
K = 137
FUNDING = D("5000")


@pytest.fixture
def shop():
    """An organization with $5000, a live key and a $1.00-per-request service."""
    owner = UserFactory()
    organization = organization_create(name="Budgeted", owner=owner)
    key = account_services.api_key_create(organization=organization, name="live", created_by=owner)
    service_with_price(slug="meter", unit_price="1.00")
    wallet_fund(organization, FUNDING)
    return {"organization": organization, "key": key}


def outcome(response) -> str:
    if response.status_code == 201:
        return "ok"
    return f"{response.status_code}:{code_of(response)}"


def hammer(secret: str, prefix: str) -> list[str]:
    """THREADS threads each sending EACH usage events; every outcome."""

    def work(index: int) -> list[str]:
        client = key_client(secret)
        return [outcome(use(client, f"{prefix}-{index}-{n}")) for n in range(EACH)]

    results = run_concurrently(THREADS, work, reraise=True)
    return [o for thread in results for o in thread]


@pytest.mark.parametrize("scope", ["organization", "api_key", "organization_striped", "capped_key"])
def test_exactly_k_debits_pass_a_hard_budget_of_k_at_any_concurrency(shop, scope):
    organization, key = shop["organization"], shop["key"]
    if scope == "organization_striped":
        ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
        organization.refresh_from_db()
    elif scope == "capped_key":  # a capped key takes the locked path (its cap is checked under the wallet lock)
        key = account_services.api_key_create(organization=organization, name="capped", spend_cap=D(10_000))
    budget = Budget.objects.create(
        organization=organization, api_key=key.api_key if scope == "api_key" else None, period="day", amount=D(K), mode="hard"
    )

    outcomes = Counter(hammer(key.secret, scope))

    assert outcomes == {"ok": K, "402:budget_exceeded": THREADS * EACH - K}
    assert BudgetSpend.objects.get(budget=budget).spent == D(K)
    assert UsageRecord.objects.filter(organization=organization).count() == K
    assert Transfer.objects.filter(organization=organization, kind=TransferKind.USAGE).count() == K
    assert wallet_of(organization).balance == FUNDING - K
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("stripes", [0, 4])
def test_a_tiered_price_stops_exactly_at_a_hard_budget_and_never_advances_on_a_refusal(shop, stripes):
    """The positional (guarded) statement and its locked fallback: the first 100 requests cost 1.00,
    the next 0.50 each, so a budget of 137 lets exactly 100 + 74 through, and a refused request takes
    no position."""
    organization, key = shop["organization"], shop["key"]
    catalog.price_create(
        service=Service.objects.get(slug="meter"),
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="tiered",
        tiers=[{"up_to": 100, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )
    if stripes:
        ledger.wallet_stripes_set(organization_id=organization.pk, stripes=stripes)
        organization.refresh_from_db()
    budget = Budget.objects.create(organization=organization, period="month", amount=D(K), mode="hard")

    outcomes = Counter(hammer(key.secret, "tiered"))

    assert outcomes == {"ok": 174, "402:budget_exceeded": THREADS * EACH - 174}
    assert BudgetSpend.objects.get(budget=budget).spent == D(K)
    positions = sorted(UsageRecord.objects.filter(organization=organization).values_list("position", flat=True))
    assert positions == list(range(174))
    costs = Counter(UsageRecord.objects.filter(organization=organization).values_list("cost", flat=True))
    assert costs == {D(1): 100, D("0.5"): 74}
    assert wallet_of(organization).balance == FUNDING - K
    assert_money_invariants([organization.pk])


def test_an_org_and_a_key_budget_together_stop_at_the_tighter_and_count_only_what_passed(shop):
    organization, key = shop["organization"], shop["key"]
    org_budget = Budget.objects.create(organization=organization, period="month", amount=D(500), mode="hard")
    key_budget = Budget.objects.create(organization=organization, api_key=key.api_key, period="week", amount=D(K), mode="hard")

    outcomes = Counter(hammer(key.secret, "both"))

    assert outcomes == {"ok": K, "402:budget_exceeded": THREADS * EACH - K}
    # the refused debits wrote nothing to the org's budget either (the statement failed whole)
    assert BudgetSpend.objects.get(budget=org_budget).spent == D(K)
    assert BudgetSpend.objects.get(budget=key_budget).spent == D(K)
    assert wallet_of(organization).balance == FUNDING - K
    assert_money_invariants([organization.pk])


HOLD_AMOUNT = D("2.5")
HOLD_BUDGET = D("100")  # exactly 40 holds of 2.50


def test_concurrent_holds_never_pass_a_hard_budget_and_settle_it_exactly(shop):
    organization, key = shop["organization"], shop["key"]
    budget = Budget.objects.create(organization=organization, period="day", amount=HOLD_BUDGET, mode="hard")

    def reserve(index: int) -> list[tuple[str, int | None]]:
        client = key_client(key.secret)
        made = []
        for n in range(10):
            response = hold(client, f"h-{index}-{n}", HOLD_AMOUNT)
            made.append((outcome(response), response.json().get("id") if response.status_code == 201 else None))
        return made

    made = [m for thread in run_concurrently(THREADS, reserve, reraise=True) for m in thread]
    held_ids = [hold_id for result, hold_id in made if result == "ok"]
    assert Counter(result for result, _ in made) == {"ok": 40, "402:budget_exceeded": THREADS * 10 - 40}
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.spent == HOLD_BUDGET  # 40 × 2.50, never more
    assert wallet_of(organization).held == HOLD_BUDGET
    assert_money_invariants([organization.pk])

    # Settle them all at once: half captured (actual $1.00 each), half released, while other threads
    # keep sending usage that the freed headroom lets through. Each thread settles the holds it owns.
    to_capture, to_release = set(held_ids[::2]), set(held_ids[1::2])
    chunks = [held_ids[n::8] for n in range(8)]

    def settle(index: int) -> list[str]:
        client = key_client(key.secret)
        if index < 8:
            results = []
            for hold_id in chunks[index]:
                response = capture(client, hold_id) if hold_id in to_capture else release(client, hold_id)
                assert response.status_code in (200, 201), response.content
                results.append("settled")
            return results
        return [outcome(use(client, f"after-{index}-{n}")) for n in range(EACH)]

    results = Counter(o for thread in run_concurrently(THREADS, settle, reraise=True) for o in thread)

    assert results["settled"] == 40
    assert not Hold.objects.filter(organization=organization, status=HoldStatus.ACTIVE).exists()
    assert (
        set(Hold.objects.filter(organization=organization, status=HoldStatus.CAPTURED).values_list("pk", flat=True)) == to_capture
    )
    assert (
        set(Hold.objects.filter(organization=organization, status=HoldStatus.RELEASED).values_list("pk", flat=True)) == to_release
    )
    spend.refresh_from_db()
    usage_cost = UsageRecord.objects.filter(organization=organization).aggregate(s=Sum("cost"))["s"]
    # what the budget counts is exactly the usage that was delivered: the captures' actual cost and the
    # debits that passed — and it never passed the budget (no capture cost more than its hold)
    assert spend.spent == usage_cost == len(to_capture) * D(1) + results["ok"] * D(1)
    assert spend.spent <= HOLD_BUDGET
    assert results["ok"] + results["402:budget_exceeded"] == 8 * EACH
    assert wallet_of(organization).held == 0
    assert wallet_of(organization).balance == FUNDING - usage_cost
    assert_money_invariants([organization.pk])


def test_striped_rebalances_under_budgets_never_deadlock_and_count_exactly(shop):
    """A high-volume wallet that keeps running its stripes dry rebalances under the wallet's lock while
    other threads' statements lock the budgets' spends first: the rebalancing posting must take the
    spends before the wallet too (billing_site/locks.py), or two of them deadlock. Debits and holds
    (made and released) from 16 threads, with an organization budget and a hard key budget; the wallet
    runs dry early, so most debits after that try a rebalance."""
    organization, key = shop["organization"], shop["key"]
    ledger.wallet_adjust(organization_id=organization.pk, amount=-(FUNDING - 150), reason="down to 150", created_by_id=None)
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
    organization.refresh_from_db()
    org_budget = Budget.objects.create(organization=organization, period="month", amount=D(10_000), mode="soft")
    key_budget = Budget.objects.create(organization=organization, api_key=key.api_key, period="day", amount=D(1000), mode="hard")

    def work(index: int) -> list[str]:
        client = key_client(key.secret)
        outcomes = []
        for n in range(30):
            if n % 5 == 4:
                made = hold(client, f"h-{index}-{n}", "7")
                outcomes.append(f"hold-{outcome(made)}")
                if made.status_code == 201:
                    assert release(client, made.json()["id"]).status_code == 200
            else:
                outcomes.append(outcome(use(client, f"u-{index}-{n}")))
        return outcomes

    outcomes = Counter(o for thread in run_concurrently(THREADS, work, reraise=True) for o in thread)

    assert set(outcomes) <= {
        "ok",
        "402:insufficient_balance",
        "402:budget_exceeded",
        "hold-ok",
        "hold-402:budget_exceeded",
        "hold-402:insufficient_balance",
    }
    passed = outcomes["ok"]
    assert 0 < passed <= 150
    assert BudgetSpend.objects.get(budget=key_budget).spent == passed
    assert BudgetSpend.objects.get(budget=org_budget).spent == passed
    assert wallet_of(organization).balance == 150 - passed
    assert wallet_of(organization).held == 0
    assert_money_invariants([organization.pk])
