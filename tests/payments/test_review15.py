"""Hostile review of issue 15's money path (credit grants drawn and budgets counted inside the ledger's
statements, docs/credits.md): each test is one finding, written to fail on the code it was found in."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db import connection, transaction
from django.db.models import Sum

from accounts.tenancy import Tenant
from billing_site.errors import DomainError
from payments import services
from payments.credits import GrantSpec, grant_create
from payments.models import Account, Budget, BudgetSpend, CreditGrant, GrantAllocation, GrantCategory, LedgerEntry, Wallet
from tests.conftest import key_client
from tests.factories import service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants
from tests.payments.payment_helpers import settled_sandbox_payment

D = Decimal
USAGE = "/api/v1/usage/"
HOLDS = "/api/v1/holds/"
JOIN_SECONDS = 30


@pytest.fixture
def meter(db):
    """A REQUEST service at exactly 1.00 per request."""
    return service_with_price(slug="meter", unit_price="1.00")


def grant(organization, amount, *, expires_in=None, category=GrantCategory.PROMOTIONAL):
    from django.utils import timezone

    expires_at = timezone.now() + expires_in if expires_in else None
    return grant_create(
        organization_id=organization.pk,
        spec=GrantSpec(amount=D(amount), category=category, expires_at=expires_at, reason="review"),
        created_by_id=None,
    )


def use(client, key, service="meter"):
    return client.post(USAGE, {"service": service, "idempotency_key": key}, format="json")


def assert_books(organization):
    """balance == Σ wallet entries (an exact Fraction sum), and every grant's remaining == amount − Σ allocations."""
    wallet = Wallet.objects.get(pk=organization.pk)
    entries = LedgerEntry.objects.filter(organization=organization, account=Account.WALLET).values_list("amount", flat=True)
    assert Fraction(wallet.balance) == sum((Fraction(a) for a in entries), Fraction(0))  # the organization's total
    for g in CreditGrant.objects.filter(organization=organization):
        taken = GrantAllocation.objects.filter(grant=g).aggregate(s=Sum("amount"))["s"] or 0
        assert 0 <= g.remaining <= g.amount
        assert g.remaining == g.amount - taken


def lock_waiters() -> int:
    """How many other backends of this database wait on a heavyweight lock (a row lock's wait)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def wait_for_waiters(count: int, *, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while lock_waiters() < count:
        assert time.monotonic() < deadline, f"expected {count} backends waiting on a lock"
        time.sleep(0.02)


class Worker(threading.Thread):
    """A thread with its own connection that keeps what its work answered or raised."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None

    def run(self):
        try:
            self.result = self.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            connection.close()

    def outcome(self):
        self.join(timeout=JOIN_SECONDS)
        assert not self.is_alive(), "a thread hung"
        if self.error is not None:
            raise self.error
        return self.result


# --- 1. Deadlock: a stripe debit (budget spend → stripe) against a rebalance retry (wallet → stripes → budget spend)


@pytest.mark.django_db(transaction=True)
def test_a_stripe_debit_and_a_rebalancing_hold_under_a_budget_do_not_deadlock(organization, live_key, meter):
    """The lock order puts budget spends before the wallet and the stripes. A hot-path debit on a stripe
    upserts its budget spend and then waits for its stripe; a hold the wallet row alone cannot pay
    rebalances (wallet, then every stripe) and then re-runs its statement, which upserts the same budget
    spend: each waits for the other, and PostgreSQL kills one of them (a 500)."""
    wallet_fund(organization, "100")
    from payments import ledger

    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=2)  # 33.33 on each stripe, 33.34 on the row
    Budget.objects.create(organization=organization, period="day", amount=D("1000"), mode="hard")
    assert use(key_client(live_key.secret), "warm").status_code == 201  # the day's spend row exists

    holding, release = threading.Event(), threading.Event()

    def block_stripe_two():
        # Stands for any transaction holding stripe 2 a moment (another rebalance, a stripe debit).
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM payments_walletstripe WHERE organization_id = %s AND stripe = 2 FOR UPDATE",
                    [organization.pk],
                )
            holding.set()
            assert release.wait(JOIN_SECONDS)

    def hold_more_than_the_row_has():
        client = key_client(live_key.secret)
        client.raise_request_exception = False
        return client.post(HOLDS, {"service": "meter", "amount": "50", "idempotency_key": "big"}, format="json")

    def stripe_debit():
        client = key_client(live_key.secret)
        client.raise_request_exception = False
        return use(client, "hot")

    blocker = Worker(block_stripe_two)
    blocker.start()
    assert holding.wait(JOIN_SECONDS)
    holder = Worker(hold_more_than_the_row_has)
    holder.start()
    wait_for_waiters(1)  # the hold's rebalance holds the wallet and stripe 1, and waits for stripe 2
    debit = Worker(stripe_debit)
    debit.start()
    wait_for_waiters(2)  # the debit holds the budget spend and waits for its stripe
    release.set()
    blocker.outcome()
    hold_response, debit_response = holder.outcome(), debit.outcome()

    assert (hold_response.status_code, debit_response.status_code) == (201, 201), (
        hold_response.content,
        debit_response.content,
    )
    assert BudgetSpend.objects.get().spent == D("52")  # warm 1 + hold 50 + hot 1
    assert_money_invariants([organization.pk])
    assert_books(organization)


# --- 2. The gateway answers a hard budget's refusal with a 500


@pytest.mark.django_db(transaction=True)  # the gateway's billing closes stale connections, as its worker threads do
def test_the_gateway_answers_a_hard_budget_refusal_with_402_budget_exceeded(organization, live_key):
    from gateway import errors
    from gateway.billing import call_hold
    from metering.models import CalcMethod

    service_with_price(slug="chat", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00")
    wallet_fund(organization, "100")
    Budget.objects.create(organization=organization, period="day", amount=D("0.000001"), mode="hard")
    tenant = Tenant(organization=organization, user=None, api_key=live_key.api_key, role=None)

    with pytest.raises(errors.GatewayError) as refused:
        call_hold(
            tenant=tenant, service="chat", request_id="r1", maxima={"input_tokens": 1000, "output_tokens": 1000}, param=None
        )

    assert (refused.value.status, refused.value.code) == (402, "budget_exceeded")
    assert Wallet.objects.get(pk=organization.pk).held == 0


# --- 3. A soft budget turns an unaffordable hold into a 500 (numeric overflow of its spend)


def test_a_huge_hold_under_a_soft_budget_is_refused_not_a_500(organization, live_client, meter):
    wallet_fund(organization, "10")
    Budget.objects.create(organization=organization, period="month", amount=D("5"), mode="soft")
    assert use(live_client, "one").status_code == 201  # the month's spend is 1
    live_client.raise_request_exception = False

    response = live_client.post(
        HOLDS, {"service": "meter", "amount": "9999999999999999", "idempotency_key": "huge"}, format="json"
    )

    assert response.status_code in (400, 402), response.content  # a clear refusal, never a 500
    assert response.json()["error"]["code"] in ("invalid_request", "insufficient_balance")
    assert BudgetSpend.objects.get().spent == D("1")
    assert Wallet.objects.get(pk=organization.pk).held == 0


# --- 4. A hold opened in one period and captured in the next escapes the next period's hard budget


def test_a_capture_after_the_period_rolled_over_counts_in_the_new_period(organization, live_client, meter):
    """A key holder under a hard daily budget of 5 holds 5 today and captures it tomorrow, then spends
    tomorrow's 5 too: 10 delivered and posted in one day. The capture's debit is posted (and the service
    delivered) in the new period, so it counts there."""
    wallet_fund(organization, "100")
    Budget.objects.create(organization=organization, period="day", amount=D("5"), mode="hard")
    held = live_client.post(HOLDS, {"service": "meter", "amount": "5", "idempotency_key": "eve"}, format="json")
    assert held.status_code == 201, held.content
    # Midnight passes: the row the hold counted against becomes yesterday's (the day's spend starts afresh).
    yesterday = BudgetSpend.objects.get()
    BudgetSpend.objects.filter(pk=yesterday.pk).update(period_start=yesterday.period_start - timedelta(days=1))

    captured = live_client.post(f"{HOLDS}{held.json()['id']}/capture/", {}, format="json")
    assert captured.status_code in (200, 201), captured.content
    statuses = [use(live_client, f"day2-{n}").status_code for n in range(5)]

    # The capture cost 1 (one request): today's budget has 4 left, not 5.
    assert statuses == [201, 201, 201, 201, 402], statuses
    today = BudgetSpend.objects.exclude(pk=yesterday.pk).get()
    assert today.spent == D("5")
    assert_books(organization)


# --- 5. Refunds: promotional credit leaves as cash; a refund's hold counts against the usage budgets


def test_a_refund_never_pays_out_promotional_credit(organization, staff_user, live_client):
    """100 paid, 60 used, then a 100 promotional grant: only 40 of the wallet's money was paid and is
    unspent. Refunding the whole payment would hand out 60 of the promotion as cash (and leave the
    grant claiming money the wallet no longer has)."""
    service_with_price(slug="big", unit_price="60")
    payment = settled_sandbox_payment(organization, "100.00")
    assert use(live_client, "sixty", service="big").status_code == 201
    promo = grant(organization, "100")

    with pytest.raises(DomainError):
        services.payment_refund(payment=payment, amount=D("100"), reason="customer asked", staff=staff_user)

    wallet = Wallet.objects.get(pk=organization.pk)
    assert (wallet.balance, wallet.held) == (D("140"), D("0"))
    assert CreditGrant.objects.get(pk=promo.pk).remaining == D("100")
    done = services.payment_refund(payment=payment, amount=D("40"), reason="customer asked", staff=staff_user)
    assert done.status == "succeeded"
    assert Wallet.objects.get(pk=organization.pk).balance == CreditGrant.objects.get(pk=promo.pk).remaining == D("100")
    assert_books(organization)


def test_a_refund_is_not_usage_and_never_counts_against_a_budget(organization, staff_user, live_client, meter):
    payment = settled_sandbox_payment(organization, "100.00")
    Budget.objects.create(organization=organization, period="month", amount=D("10"), mode="hard")

    services.payment_refund(payment=payment, amount=D("5"), reason="first part", staff=staff_user)
    services.payment_refund(payment=payment, amount=D("50"), reason="past the budget", staff=staff_user)

    assert not BudgetSpend.objects.filter(spent__gt=0).exists()
    statuses = [use(live_client, f"u{n}").status_code for n in range(10)]
    assert statuses == [201] * 10  # the month's usage budget of 10 is all there
    assert_books(organization)


# --- 6. A credit back of a debit that drew promotional credit lands as ungranted (non-expiring) money


def test_an_upgrade_credit_goes_back_to_the_grants_its_fee_drew_from(organization):
    """Only promotional credit ever entered this wallet, so once it expires nothing may be left. The
    start fee of a plan drew from a grant; an upgrade credits its unused part back as ungranted money,
    the new fee draws from the grants first, and after the grants expire the credit is still there:
    promotional credit turned into money that never expires (and that a refund check counts as cash)."""
    from django.utils import timezone

    from metering.models import SubscriptionCharge, SubscriptionChargeKind
    from metering.services import subscriptions
    from payments.credits import grants_expire
    from tests.metering.subscriptions_world import plan_make

    plan_make("basic", "100")
    plan_make("pro", "150")
    first = grant(organization, "100", expires_in=timedelta(days=1))
    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="basic")
    start_fee = SubscriptionCharge.objects.get(kind=SubscriptionChargeKind.START_FEE).amount
    assert CreditGrant.objects.get(pk=first.pk).remaining == D("100") - start_fee
    grant(organization, "1000", expires_in=timedelta(days=1))

    subscriptions.subscription_choose(organization_id=organization.pk, plan_slug="pro")
    assert SubscriptionCharge.objects.get(kind=SubscriptionChargeKind.UPGRADE_CREDIT).amount < 0  # the unused part

    CreditGrant.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    grants_expire()
    assert Wallet.objects.get(pk=organization.pk).balance == 0
    assert_books(organization)


# --- 7. A budget deleted while a debit counts against it


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["single", "batch"])
def test_a_debit_racing_the_deletion_of_its_budget_is_not_a_500(organization, live_key, meter, path):
    """The debit's statement read the budget before the deletion committed, and writes its spend row
    after: the row's budget is gone by then. The debit should go through (or be refused cleanly), never
    fail with a foreign-key violation."""
    wallet_fund(organization, "10")
    budget = Budget.objects.create(organization=organization, period="day", amount=D("100"), mode="hard")
    assert use(key_client(live_key.secret), "first").status_code == 201
    deleted, release = threading.Event(), threading.Event()

    def delete_the_budget():
        with transaction.atomic():
            # As a deletion must: the budget's row first, then its spend rows and itself.
            Budget.objects.select_for_update().get(pk=budget.pk).delete()
            deleted.set()
            assert release.wait(JOIN_SECONDS)

    def debit():
        client = key_client(live_key.secret)
        client.raise_request_exception = False
        if path == "single":
            return use(client, "second")
        return client.post(f"{USAGE}batch/", {"events": [{"service": "meter", "idempotency_key": "second"}]}, format="json")

    deleter = Worker(delete_the_budget)
    deleter.start()
    assert deleted.wait(JOIN_SECONDS)
    debiter = Worker(debit)
    debiter.start()
    wait_for_waiters(1)  # the debit waits for the deletion
    release.set()
    deleter.outcome()
    response = debiter.outcome()

    if path == "single":
        assert response.status_code == 201, response.content
    else:
        assert response.status_code == 200, response.content
        assert [r["status"] for r in response.json()["results"]] == [201]
    assert Wallet.objects.get(pk=organization.pk).balance == D("8")
    assert not BudgetSpend.objects.exists()
    assert_money_invariants([organization.pk])


# --- 8. A striped wallet refuses a debit it can pay while expired credit waits to be written off


def test_a_striped_wallet_pays_from_unexpired_money_while_expired_credit_waits(organization, live_client):
    """50 of cash and 50 of credit that expired a moment ago (the beat task writes it off within the
    minute). A debit of 40 fits the 50 that is spendable; the rebalance before its retry spreads the
    expired credit over the stripes as if it were spendable, leaves too little on the wallet row (whose
    rule counts all of the expired credit as unavailable), and the debit is refused."""
    from django.utils import timezone

    from payments import ledger

    service_with_price(slug="forty", unit_price="40")
    wallet_fund(organization, "50")
    expiring = grant(organization, "50", expires_in=timedelta(days=1))
    CreditGrant.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=2)

    response = use(live_client, "forty", service="forty")

    assert response.status_code == 201, response.content
    assert Wallet.objects.get(pk=organization.pk).balance == D("60")
    assert CreditGrant.objects.get(pk=expiring.pk).remaining == D("50")  # expired credit is never drawn
    assert_money_invariants([organization.pk])
    assert_books(organization)


# --- 9. Budget alerts: a batch (or a capture) that passes an alert level announces nothing


@pytest.mark.parametrize("path", ["single", "batch"])
def test_spend_that_passes_a_budget_alert_level_is_announced_on_every_path(
    organization, live_client, meter, django_capture_on_commit_callbacks, path
):
    from payments import ledger

    wallet_fund(organization, "100")
    Budget.objects.create(organization=organization, period="month", amount=D("2"), mode="soft")
    announced = []

    def receiver(sender, organization_id, spend_ids, **kwargs):
        announced.append((organization_id, list(spend_ids)))

    ledger.budget_alert_signal.connect(receiver, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            if path == "single":
                statuses = [use(live_client, f"s{n}").status_code for n in range(3)]
            else:
                response = live_client.post(
                    f"{USAGE}batch/",
                    {"events": [{"service": "meter", "idempotency_key": f"b{n}"} for n in range(3)]},
                    format="json",
                )
                statuses = [r["status"] for r in response.json()["results"]]
    finally:
        ledger.budget_alert_signal.disconnect(receiver)

    assert statuses == [201, 201, 201]
    assert BudgetSpend.objects.get().spent == D("3")  # 150 % of the month's budget
    spend_id = BudgetSpend.objects.get().pk
    assert announced and all(entry == (organization.pk, [spend_id]) for entry in announced), announced
