"""Budgets and grants against a customer looking for a way round them (docs/credits.md): every refusal
writes nothing (no budget spend either), replays and duplicates count once, other keys, test keys
and other organizations neither count nor are counted, and a capture settles the hold's own budgets."""

from decimal import Decimal

import pytest
from django.db.models import Sum

from accounts import services as account_services
from metering.models import CalcMethod, Hold, UsageRecord
from payments import ledger
from payments.models import Budget, BudgetSpend, CreditGrant, GrantAllocation, Transfer, TransferKind
from tests.conftest import key_client
from tests.factories import service_with_price, wallet_fund
from tests.payments.credit_world import HOLDS, assert_grant_books, batch, capture, code_of, grant, hold, release, use
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of

D = Decimal


@pytest.fixture
def meter(db):
    """$1.00 per request, and a $0.37 one."""
    service_with_price(slug="cheap", unit_price="0.37")
    return service_with_price(slug="meter", unit_price="1.00")


def spends(organization) -> dict[int, Decimal]:
    return dict(BudgetSpend.objects.filter(organization=organization).values_list("budget_id", "spent"))


def budget(organization, amount, *, key=None, period="day", mode="hard") -> Budget:
    return Budget.objects.create(
        organization=organization, api_key=key.api_key if key else None, period=period, amount=D(amount), mode=mode
    )


def moving_transfers(organization) -> int:
    return Transfer.objects.filter(organization=organization).exclude(kind=TransferKind.REBALANCE).count()


# --- A refusal writes nothing, the budgets' spend included ---------------------------------------------


@pytest.mark.parametrize("path", ["usage", "batch", "hold"])
@pytest.mark.parametrize("striped", [False, True], ids=["one_row", "striped"])
def test_a_wallet_refusal_counts_nothing_against_any_budget(organization, live_key, live_client, meter, path, striped):
    wallet_fund(organization, "0.5")
    if striped:
        ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
    org_budget = budget(organization, "10", mode="soft")
    key_budget = budget(organization, "10", key=live_key, period="month")
    before, spent, moving = money_state(organization), spends(organization), moving_transfers(organization)

    if path == "usage":
        response = use(live_client, "a")
        assert (response.status_code, code_of(response)) == (402, "insufficient_balance")
    elif path == "batch":
        assert [r["status"] for r in batch(live_client, ["a", "b"]).json()["results"]] == [402, 402]
    else:
        response = hold(live_client, "h", "1")
        assert (response.status_code, code_of(response)) == (402, "insufficient_balance")

    after = money_state(organization)
    if striped:
        # a refused batch on a striped wallet may still gather the stripes' money on the wallet row (a
        # `rebalance` transfer, which moves nothing in or out of the wallet)
        assert moving_transfers(organization) == moving
        for field in ("ledger_entries", "transfers"):
            after.pop(field), before.pop(field)
    assert after == before
    assert all(spends(organization).get(b.pk, D(0)) == spent.get(b.pk, D(0)) == D(0) for b in (org_budget, key_budget))


@pytest.mark.parametrize("path", ["usage", "batch", "hold"])
def test_a_key_budget_refusal_counts_nothing_against_the_organizations_budget(organization, live_key, live_client, meter, path):
    wallet_fund(organization, "100")
    org_budget = budget(organization, "50", period="month")
    key_budget = budget(organization, "1.5", key=live_key)
    assert use(live_client, "first").status_code == 201
    before = money_state(organization)

    if path == "usage":
        refused = use(live_client, "a")
        assert (refused.status_code, code_of(refused)) == (402, "budget_exceeded")
    elif path == "batch":
        results = batch(live_client, ["a", "b"]).json()["results"]
        assert [(r["status"], r["error"]["code"]) for r in results] == [(402, "budget_exceeded")] * 2
    else:
        refused = hold(live_client, "h", "0.6")
        assert (refused.status_code, code_of(refused)) == (402, "budget_exceeded")

    assert money_state(organization) == before
    assert spends(organization) == {org_budget.pk: D(1), key_budget.pk: D(1)}


def test_a_striped_wallet_that_rebalances_counts_the_debit_and_the_hold_once(organization, live_client, meter):
    """On a high-volume wallet the first try (a stripe, or the wallet row) may be refused and the debit
    run again after a rebalance: the budget counts what finally moved, once."""
    wallet_fund(organization, "40")
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)  # 8 on the row, 8 per stripe
    b = budget(organization, "100", mode="soft")
    made = hold(live_client, "h", "30")  # more than the row holds: refused there, rebalanced, retried
    assert made.status_code == 201, made.content
    assert spends(organization) == {b.pk: D(30)}
    for n in range(10):  # stripes run dry one after another and debits fall back to the row
        assert use(live_client, f"u{n}").status_code == 201
    assert spends(organization) == {b.pk: D(40)}
    assert code_of(use(live_client, "over")) == "insufficient_balance"
    assert spends(organization) == {b.pk: D(40)}
    assert release(live_client, made.json()["id"]).status_code == 200
    assert spends(organization) == {b.pk: D(10)}
    assert wallet_of(organization).balance == D(30)
    assert_money_invariants([organization.pk])


# --- Counted once ------------------------------------------------------------------------------------------


def test_a_replayed_or_duplicated_event_counts_once(organization, live_client, meter):
    wallet_fund(organization, "100")
    b = budget(organization, "3")
    assert use(live_client, "a").status_code == 201
    assert use(live_client, "a").status_code == 200  # a replay answers the first result, counts nothing
    results = batch(live_client, ["a", "b", "b", "c"]).json()["results"]
    assert [r["status"] for r in results] == [200, 201, 200, 201]  # the batch's own duplicate replays "b"
    assert spends(organization) == {b.pk: D(3)}
    assert UsageRecord.objects.filter(organization=organization).count() == 3
    # the budget is used up, but a key already used answers its first result
    assert use(live_client, "c").status_code == 200
    assert code_of(use(live_client, "d")) == "budget_exceeded"
    assert hold(live_client, "h", "1").status_code == 402
    assert hold(live_client, "h", "1").status_code == 402  # a refused hold left no key behind
    assert spends(organization) == {b.pk: D(3)}
    assert wallet_of(organization).balance == D(97)


def test_a_batch_decides_each_event_against_what_the_budget_has_left(organization, live_client, meter):
    wallet_fund(organization, "100")
    b = budget(organization, "1.5")
    response = live_client.post(
        "/api/v1/usage/batch/",
        {"events": [{"service": s, "idempotency_key": f"e{n}"} for n, s in enumerate(["meter", "meter", "cheap", "cheap"])]},
        format="json",
    )
    # 1.00 fits (0.50 left), 1.00 does not, 0.37 does (0.13 left), 0.37 does not
    assert [r["status"] for r in response.json()["results"]] == [201, 402, 201, 402]
    assert spends(organization) == {b.pk: D("1.37")}
    assert wallet_of(organization).balance == D("98.63")
    assert_money_invariants([organization.pk])


# --- Other keys, test keys, other organizations ------------------------------------------------------------


def test_a_hold_captured_by_another_key_settles_the_holding_keys_budget(organization, owner, live_key, live_client, meter):
    wallet_fund(organization, "100")
    other = account_services.api_key_create(organization=organization, name="other", created_by=owner)
    mine = budget(organization, "5", key=live_key)
    theirs = budget(organization, "5", key=other)
    made = hold(live_client, "h", "4").json()["id"]
    assert spends(organization) == {mine.pk: D(4)}

    assert capture(key_client(other.secret), made).status_code in (200, 201)

    assert spends(organization) == {mine.pk: D(1)}  # the hold's 4 became its actual 1.00
    assert not BudgetSpend.objects.filter(budget=theirs).exists()
    assert UsageRecord.objects.get(hold_id=made).api_key_id == live_key.api_key.pk
    assert [use(live_client, f"u{n}").status_code for n in range(5)] == [201] * 4 + [402]


def test_test_keys_never_count_and_never_touch_live_holds(organization, owner, live_client, test_key, meter):
    wallet_fund(organization, "100")
    on_test_key = budget(organization, "1", key=test_key)
    on_org = budget(organization, "1", period="week")
    client = key_client(test_key.secret)
    for n in range(3):
        assert use(client, f"t{n}").status_code == 201
    assert [r["status"] for r in batch(client, ["b0", "b1"]).json()["results"]] == [201, 201]
    test_hold = hold(client, "th", "50")
    assert test_hold.status_code == 201
    assert capture(client, test_hold.json()["id"]).status_code in (200, 201)
    assert not BudgetSpend.objects.filter(budget__in=[on_test_key, on_org]).exists()
    assert wallet_of(organization).balance == D(100)

    live_hold = hold(live_client, "lh", "1").json()["id"]
    assert capture(client, live_hold).status_code == 404
    assert release(client, live_hold).status_code == 404
    assert Hold.objects.get(pk=live_hold).status == "active"
    assert spends(organization) == {on_org.pk: D(1)}


def test_another_organizations_budgets_and_grants_never_apply(
    organization, live_key, live_client, other_organization, other_key, other_client, meter
):
    wallet_fund(organization, "10")
    wallet_fund(other_organization, "10")
    exhausted = budget(organization, "1")
    assert use(live_client, "a").status_code == 201
    assert code_of(use(live_client, "b")) == "budget_exceeded"
    # a budget row naming our organization but their key (only an ORM slip could make one) binds nobody
    budget(organization, "0.01", key=other_key, period="month")
    mine = grant(organization, "5", priority=1)

    assert [use(other_client, f"o{n}").status_code for n in range(3)] == [201] * 3
    assert hold(other_client, "h", "1").status_code == 201
    assert [r["status"] for r in batch(other_client, ["x", "y"]).json()["results"]] == [201, 201]

    assert not BudgetSpend.objects.filter(organization=other_organization).exists()
    assert spends(organization) == {exhausted.pk: D(1)}
    assert CreditGrant.objects.get(pk=mine.pk).remaining == D(5)
    assert not GrantAllocation.objects.filter(organization=other_organization).exists()
    assert wallet_of(other_organization).balance == D(5)
    assert_grant_books(organization.pk)
    assert_grant_books(other_organization.pk)


def test_a_hold_refused_by_the_budget_leaves_no_hold_and_no_spend(organization, live_client, meter):
    wallet_fund(organization, "100")
    b = budget(organization, "2")
    assert hold(live_client, "h1", "1.5").status_code == 201
    before = money_state(organization)
    for amount in ["0.51", "100", "0.500000000001"]:
        response = hold(live_client, f"h-{amount}", amount)
        assert (response.status_code, code_of(response)) == (402, "budget_exceeded"), (amount, response.content)
    assert money_state(organization) == before
    assert spends(organization) == {b.pk: D("1.5")}
    assert (
        live_client.post(HOLDS, {"service": "meter", "amount": "0.5", "idempotency_key": "fits"}, format="json").status_code
        == 201
    )
    assert spends(organization) == {b.pk: D(2)}


def test_releasing_a_hold_twice_or_after_capture_gives_the_budget_back_once(organization, live_client, meter):
    wallet_fund(organization, "100")
    b = budget(organization, "5")
    first = hold(live_client, "h1", "2").json()["id"]
    second = hold(live_client, "h2", "2").json()["id"]
    assert release(live_client, first).status_code == 200
    assert release(live_client, first).status_code == 200  # idempotent
    assert capture(live_client, second).status_code in (200, 201)
    assert release(live_client, second).status_code == 409
    assert capture(live_client, first).status_code == 409
    assert spends(organization) == {b.pk: D(1)}
    usage_cost = UsageRecord.objects.filter(organization=organization).aggregate(s=Sum("cost"))["s"]
    assert usage_cost == D(1)
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("overspent_by", ["a_capture_past_its_hold", "a_lowered_budget"])
def test_a_free_event_in_a_batch_passes_an_overspent_budget_as_it_does_alone(organization, live_client, meter, overspent_by):
    """A batch applies its events "as if sent one by one". Alone, an event that costs nothing moves no
    money and no budget counts it (201, whatever the budgets say). But once a hard budget's spend is past
    its amount — a capture past its hold may pass it (the service was delivered), or the budget was
    lowered — the batch's headroom is negative, and a free event in a batch must still pass, as alone."""
    service_with_price(slug="free", unit_price="0")
    service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="1", output_price="1")
    wallet_fund(organization, "100")
    b = budget(organization, "2")
    if overspent_by == "a_capture_past_its_hold":
        made = live_client.post(HOLDS, {"service": "gpt", "amount": "0.5", "idempotency_key": "h"}, format="json")
        captured = live_client.post(
            f"{HOLDS}{made.json()['id']}/capture/", {"input_tokens": 3_000_000, "output_tokens": 0}, format="json"
        )
        assert captured.status_code in (200, 201), captured.content
        assert spends(organization) == {b.pk: D(3)}
    else:
        assert [use(live_client, k).status_code for k in "ab"] == [201, 201]
        Budget.objects.filter(pk=b.pk).update(amount=D(1))

    alone = use(live_client, "free-alone", service="free")
    assert alone.status_code == 201, alone.content
    together = batch(live_client, ["free-in-batch"], service="free").json()["results"]
    assert [r["status"] for r in together] == [201], together


def test_another_organization_can_neither_capture_nor_release_our_hold(organization, live_client, other_client, meter):
    wallet_fund(organization, "10")
    b = budget(organization, "5")
    made = hold(live_client, "h", "4").json()["id"]
    before = money_state(organization)
    assert capture(other_client, made).status_code == 404
    assert release(other_client, made).status_code == 404
    assert money_state(organization) == before
    assert spends(organization) == {b.pk: D(4)}
