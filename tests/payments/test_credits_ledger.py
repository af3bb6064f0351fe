"""Credit grants and budgets inside the ledger's statements (docs/credits.md): each usage path once,
checked against hand-computed figures. The random oracle and the concurrency tests are beside it."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from payments import ledger
from payments.credits import GrantSpec, grant_create, grants_expire
from payments.models import (
    Account,
    Budget,
    BudgetSpend,
    CreditGrant,
    GrantAllocation,
    GrantCategory,
    LedgerEntry,
    Transfer,
    TransferKind,
    Wallet,
)
from tests.factories import service_with_price

USAGE = "/api/v1/usage/"
D = Decimal


@pytest.fixture
def meter(organization, db):
    """A REQUEST service at exactly 1.00 per request."""
    return service_with_price(slug="meter", unit_price="1.00")


def grant(organization, amount, *, priority=50, expires_in=None, category=GrantCategory.PROMOTIONAL):
    expires_at = timezone.now() + expires_in if expires_in else None
    return grant_create(
        organization_id=organization.pk,
        spec=GrantSpec(amount=D(amount), category=category, priority=priority, expires_at=expires_at, reason="test"),
        created_by_id=None,
    )


def use(client, key, service="meter", **extra):
    return client.post(USAGE, {"service": service, "idempotency_key": key, **extra}, format="json")


def remaining(*grants):
    return [CreditGrant.objects.get(pk=g.pk).remaining for g in grants]


def assert_books(organization):
    wallet = Wallet.objects.get(pk=organization.pk)
    entries = LedgerEntry.objects.filter(organization=organization, account=Account.WALLET).aggregate(s=Sum("amount"))["s"]
    assert wallet.balance == (entries or 0)
    for g in CreditGrant.objects.filter(organization=organization):
        taken = GrantAllocation.objects.filter(grant=g).aggregate(s=Sum("amount"))["s"] or 0
        assert g.remaining == g.amount - taken


def test_a_debit_burns_grants_by_priority_then_expiry_then_age(organization, live_client, meter):
    late = grant(organization, "2", priority=10)
    soon = grant(organization, "2", priority=10, expires_in=timedelta(days=3))
    first = grant(organization, "1.5", priority=5)
    paid = grant(organization, "10", priority=90, category=GrantCategory.PAID)

    for n in range(4):
        assert use(live_client, f"u{n}").status_code == 201

    # 4.00 owed: 1.5 from priority 5, then 2 from the one expiring soonest, then 0.5 from the one without expiry
    assert remaining(first, soon, late, paid) == [D("0"), D("0"), D("1.5"), D("10")]
    allocations = GrantAllocation.objects.filter(transfer__kind=TransferKind.USAGE)
    assert allocations.aggregate(s=Sum("amount"))["s"] == D("4")
    assert_books(organization)


def test_ungranted_money_pays_what_grants_do_not_cover(organization, live_client, meter):
    from tests.factories import wallet_fund

    wallet_fund(organization, "5")
    only = grant(organization, "0.25")
    assert use(live_client, "a").status_code == 201
    assert remaining(only) == [D("0")]
    assert Wallet.objects.get(pk=organization.pk).balance == D("4.25")
    assert_books(organization)


def test_expired_credit_cannot_be_spent_before_it_is_written_off(organization, live_client, meter):
    expiring = grant(organization, "3", expires_in=timedelta(seconds=1))
    CreditGrant.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = use(live_client, "late")
    assert response.status_code == 402, response.content
    assert response.json()["error"]["code"] == "insufficient_balance"

    assert grants_expire() == 1
    assert grants_expire() == 0  # once
    assert remaining(expiring) == [D("0")]
    assert Wallet.objects.get(pk=organization.pk).balance == D("0")
    expiry = Transfer.objects.get(kind=TransferKind.EXPIRY)
    assert expiry.entries.get(account=Account.EXPIRED_CREDITS).amount == D("3")
    assert_books(organization)


@pytest.mark.parametrize("scope", ["organization", "api_key"])
def test_a_hard_budget_refuses_the_debit_that_would_pass_it(organization, live_client, live_key, meter, scope):
    grant(organization, "100")
    Budget.objects.create(
        organization=organization,
        api_key=live_key.api_key if scope == "api_key" else None,
        period="day",
        amount=D("2.5"),
        mode="hard",
    )
    assert use(live_client, "a").status_code == 201
    assert use(live_client, "b").status_code == 201
    refused = use(live_client, "c")
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert BudgetSpend.objects.get().spent == D("2")
    assert Wallet.objects.get(pk=organization.pk).balance == D("98")
    assert Transfer.objects.filter(kind=TransferKind.USAGE).count() == 2
    assert_books(organization)


def test_a_soft_budget_counts_and_never_refuses(organization, live_client, meter):
    grant(organization, "10")
    Budget.objects.create(organization=organization, period="month", amount=D("1"), mode="soft")
    for n in range(3):
        assert use(live_client, f"s{n}").status_code == 201
    spend = BudgetSpend.objects.get()
    assert spend.spent == D("3")


def test_another_keys_budget_does_not_apply(organization, owner, live_client, meter):
    from accounts.services import api_key_create

    other = api_key_create(organization=organization, name="other", mode="live", created_by=owner)
    grant(organization, "10")
    Budget.objects.create(organization=organization, api_key=other.api_key, period="day", amount=D("1"), mode="hard")
    for n in range(3):
        assert use(live_client, f"k{n}").status_code == 201
    assert not BudgetSpend.objects.exists()


def test_a_striped_wallet_with_grants_debits_on_its_wallet_row(organization, live_client, meter):
    from tests.factories import wallet_fund

    wallet_fund(organization, "50")
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
    organization.refresh_from_db()
    g = grant(organization, "3")
    for n in range(5):
        assert use(live_client, f"x{n}").status_code == 201
    assert remaining(g) == [D("0")]
    assert Wallet.objects.get(pk=organization.pk).balance == D("48")


def test_a_hold_counts_against_the_budget_until_captured_or_released(organization, live_client, meter):
    grant(organization, "100")
    Budget.objects.create(organization=organization, period="month", amount=D("5"), mode="hard")
    hold = live_client.post("/api/v1/holds/", {"service": "meter", "amount": "4", "idempotency_key": "h1"}, format="json")
    assert hold.status_code == 201, hold.content
    assert BudgetSpend.objects.get().spent == D("4")
    assert use(live_client, "a").status_code == 201  # 5 of 5
    over = use(live_client, "b")
    assert over.json()["error"]["code"] == "budget_exceeded"
    second = live_client.post("/api/v1/holds/", {"service": "meter", "amount": "1", "idempotency_key": "h2"}, format="json")
    assert second.status_code == 402 and second.json()["error"]["code"] == "budget_exceeded"

    captured = live_client.post(f"/api/v1/holds/{hold.json()['id']}/capture/", {}, format="json")
    assert captured.status_code in (200, 201), captured.content
    assert BudgetSpend.objects.get().spent == D("2")  # the hold's 4 became the actual 1
    assert GrantAllocation.objects.filter(transfer__kind=TransferKind.USAGE).aggregate(s=Sum("amount"))["s"] == D("2")

    third = live_client.post("/api/v1/holds/", {"service": "meter", "amount": "3", "idempotency_key": "h3"}, format="json")
    assert third.status_code == 201
    assert BudgetSpend.objects.get().spent == D("5")
    released = live_client.post(f"/api/v1/holds/{third.json()['id']}/release/", {}, format="json")
    assert released.status_code == 200
    assert BudgetSpend.objects.get().spent == D("2")
    assert_books(organization)


def test_a_batch_stops_at_the_hard_budget(organization, live_client, meter):
    grant(organization, "100")
    Budget.objects.create(organization=organization, period="week", amount=D("3"), mode="hard")
    response = live_client.post(
        "/api/v1/usage/batch/", {"events": [{"service": "meter", "idempotency_key": f"b{n}"} for n in range(5)]}, format="json"
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 201, 402, 402]
    assert results[3]["error"]["code"] == "budget_exceeded"
    assert BudgetSpend.objects.get().spent == D("3")
    assert GrantAllocation.objects.filter(transfer__kind=TransferKind.USAGE).aggregate(s=Sum("amount"))["s"] == D("3")
    assert_books(organization)


def test_test_keys_never_count_against_budgets(organization, test_key, meter):
    from tests.conftest import key_client

    Budget.objects.create(organization=organization, period="day", amount=D("1"), mode="hard")
    client = key_client(test_key.secret)
    for n in range(3):
        assert use(client, f"t{n}").status_code == 201
    assert not BudgetSpend.objects.exists()


def test_a_tiered_price_draws_grants_on_the_guarded_statement(organization, live_client, meter):
    from metering.services import catalog

    catalog.price_create(
        service=meter,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="tiered",
        tiers=[{"up_to": 2, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )
    g = grant(organization, "10")
    Budget.objects.create(organization=organization, period="month", amount=D("2.5"), mode="hard")
    assert [use(live_client, f"p{n}").status_code for n in range(4)] == [201, 201, 201, 402]
    assert remaining(g) == [D("7.5")]
    assert BudgetSpend.objects.get().spent == D("2.5")
    assert_books(organization)


def test_a_refund_never_pays_out_granted_credit(organization, staff_user, meter):
    from billing_site.errors import InvalidRequest
    from payments import services
    from tests.payments.payment_helpers import settled_sandbox_payment

    payment = settled_sandbox_payment(organization, "50.00")

    # Spend 40 of the cash, then receive a promotional grant: 10 cash and 100 of promotion remain.
    ledger.usage_charge(organization_id=organization.pk, cost=D("40"), reference="usage:spent")
    grant(organization, "100")
    with pytest.raises(InvalidRequest) as refused:
        services.payment_refund(payment=payment, amount=D("50"), reason="customer asked", staff=staff_user)
    assert refused.value.details["amount"] == ["At most 10 is refundable now."]
    assert Wallet.objects.get(pk=organization.pk).held == D("0")

    done = services.payment_refund(payment=payment, amount=D("10"), reason="customer asked", staff=staff_user)
    assert done.status == "succeeded"
    assert Wallet.objects.get(pk=organization.pk).balance == D("100")
    assert_books(organization)


def test_a_refunds_reservation_does_not_count_against_budgets(organization, staff_user):
    from payments import services
    from tests.payments.payment_helpers import settled_sandbox_payment

    payment = settled_sandbox_payment(organization, "50.00")
    Budget.objects.create(organization=organization, period="month", amount=D("1"), mode="hard")
    done = services.payment_refund(payment=payment, amount=D("20"), reason="customer asked", staff=staff_user)
    assert done.status == "succeeded"
    assert not BudgetSpend.objects.exists()


def test_an_upgrade_gives_the_old_fees_credit_back_to_the_grants_that_paid_it(organization):
    """Else a plan bought with expiring promotional credit and upgraded at once would turn the credit of
    its unused part into money that never expires."""
    from datetime import UTC, datetime

    from metering.services import subscriptions
    from tests.metering.subscriptions_world import oracle_fraction, oracle_money, plan_make

    plan_make("basic", "30")
    plan_make("pro", "90")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    promo = grant_create(
        organization_id=organization.pk,
        spec=GrantSpec(
            amount=D("40"),
            category=GrantCategory.PROMOTIONAL,
            priority=10,
            expires_at=datetime(2027, 1, 1, tzinfo=UTC),
            reason="t",
        ),
        created_by_id=None,
    )
    from tests.factories import wallet_fund

    wallet_fund(organization, "200")
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic", now=start)
    assert remaining(promo) == [D("10")]  # the whole first fee came from the grant

    moment = datetime(2026, 12, 11, 7, 30, tzinfo=UTC)
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro", now=moment)

    credit = oracle_money("30", oracle_fraction(moment))
    fee = oracle_money("90", oracle_fraction(moment))
    # the credit went back to the grant, then the new fee drew from it again: 10 + credit − min(fee, 10 + credit)
    assert remaining(promo) == [max(D("10") + credit - fee, D("0"))]
    assert_books(organization)
    back = GrantAllocation.objects.filter(grant=promo, amount__lt=0).get()
    assert back.amount == -credit


def test_a_striped_debit_that_needs_a_rebalance_counts_against_its_budget_once(organization, live_client):
    from tests.factories import wallet_fund

    service_with_price(slug="big", unit_price="5")
    wallet_fund(organization, "10")
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)  # 2 on each row: none pays 5 alone
    Budget.objects.create(organization=organization, period="day", amount=D("9"), mode="hard")
    assert use(live_client, "a", service="big").status_code == 201
    refused = use(live_client, "b", service="big")
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert BudgetSpend.objects.get().spent == D("5")
    assert Wallet.objects.get(pk=organization.pk).balance == D("5")
    assert_books(organization)
