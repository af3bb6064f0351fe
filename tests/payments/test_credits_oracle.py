"""Property-based (docs/credits.md): random grants (priorities, expiries), recharges, debits through the
real API (usage/, usage/batch/, holds and their captures and releases), the passing of time and the
expiry task, on one organization with random hard budgets (its own, its key's) and a soft one, against
a Fraction model of every grant's remaining, the ungranted money, the holds, the write-offs, the
allocation of every transfer and every budget's spend.

Time: neither freezegun nor time_machine is installed, and the overdraft rule's expired credit is read
with the application's clock by some statements and the database's by others (`locks.wallet_lock`).
So the test keeps the real clock and moves the grants instead: "an hour passes" moves every grant's
`expires_at` an hour earlier, which is the same thing to every query that compares it with now."""

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db.models import F as DbF
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from accounts import services as account_services
from metering.models import Hold
from payments import ledger
from payments.credits import grants_expire
from payments.models import Budget, BudgetSpend, CreditGrant, Transfer, TransferKind, Wallet
from tests.conftest import key_client
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.credit_world import (
    ModelGrant,
    allocations_by_transfer,
    assert_grant_books,
    batch,
    burn,
    capture,
    code_of,
    expired_credits_total,
    frac,
    grant,
    hold,
    release,
    use,
)

pytestmark = pytest.mark.slow

D = Decimal
PRICE = "0.37"
COST = frac(PRICE)
budget_amounts = st.decimals(min_value=D("0.5"), max_value=D("8"), places=2, allow_nan=False, allow_infinity=False)
money = st.decimals(min_value=D("0.01"), max_value=D("3"), places=2, allow_nan=False, allow_infinity=False)


@dataclass
class ModelBudget:
    id: int
    amount: Fraction
    hard: bool
    spent: Fraction = Fraction(0)


@dataclass
class ModelHold:
    id: int
    amount: Fraction
    active: bool = True


class CreditsMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.grants: list[ModelGrant] = []
        self.holds: list[ModelHold] = []
        self.ungranted = Fraction(0)  # may go negative: a capture past the hold, over the limit
        self.held = Fraction(0)
        self.written_off = Fraction(0)
        self.allocations: dict[tuple[int, int], Fraction] = {}
        self.budgets: list[ModelBudget] = []
        self.step = 0
        # The application's clock stands still for the example (budgets count in its period; grants
        # are moved instead of the clock), so the budgets' period never rolls over midway.
        self.clock = pytest.MonkeyPatch()
        frozen = timezone.now()
        self.clock.setattr(timezone, "now", lambda: frozen)

    def teardown(self):
        self.clock.undo()

    @initialize(
        funding=st.one_of(st.just(D(0)), money),
        org_hard=st.one_of(st.none(), budget_amounts),
        key_hard=st.one_of(st.none(), budget_amounts),
        stripes=st.sampled_from([0, 0, 4]),
    )
    def open(self, funding, org_hard, key_hard, stripes):
        owner = UserFactory()
        self.organization = organization_create(name="Credits model", owner=owner)
        key = account_services.api_key_create(organization=self.organization, name="model", created_by=owner)
        self.client = key_client(key.secret)
        for api_key, period, amount, mode in [
            (None, "day", org_hard, "hard"),
            (key.api_key, "week", key_hard, "hard"),
            (None, "month", D("4"), "soft"),
        ]:
            if amount is not None:
                made = Budget.objects.create(
                    organization=self.organization, api_key=api_key, period=period, amount=amount, mode=mode
                )
                self.budgets.append(ModelBudget(made.pk, frac(amount), mode == "hard"))
        if funding:
            self.recharge(funding)
        if stripes:  # a high-volume wallet: debits on its stripes while it holds no live grant
            ledger.wallet_stripes_set(organization_id=self.organization.pk, stripes=stripes)

    def headroom(self) -> Fraction | None:
        hard = [b.amount - b.spent for b in self.budgets if b.hard]
        return min(hard) if hard else None

    def within_budgets(self, cost: Fraction, charged: Fraction = Fraction(0)) -> bool:
        headroom = self.headroom()
        return headroom is None or cost <= headroom - charged

    def count(self, amount: Fraction) -> None:
        for b in self.budgets:
            b.spent += amount

    # --- the model ---------------------------------------------------------------------------------

    def key(self) -> str:
        self.step += 1
        return f"k{self.step}"

    def balance(self) -> Fraction:
        return self.ungranted + sum((g.remaining for g in self.grants), Fraction(0))

    def available(self) -> Fraction:
        now = timezone.now()
        expired = sum((g.remaining for g in self.grants if g.remaining > 0 and not g.live(now)), Fraction(0))
        return self.balance() - self.held - expired

    def fits(self, amount: Fraction) -> bool:
        available = self.available()
        return available > 0 and available - amount >= 0

    def debit(self, cost: Fraction, transfer_id: int) -> None:
        taken = burn(self.grants, cost, timezone.now())
        for grant_id, amount in taken.items():
            self.allocations[(transfer_id, grant_id)] = amount
        self.ungranted -= cost - sum(taken.values(), Fraction(0))

    def last_transfer(self, kind: TransferKind) -> int:
        return Transfer.objects.filter(organization_id=self.organization.pk, kind=kind).latest("id").pk

    # --- operations ------------------------------------------------------------------------------------

    @rule(amount=money)
    def recharge(self, amount):
        wallet_fund(self.organization, amount)
        self.ungranted += frac(amount)

    @rule(
        amount=money,
        priority=st.sampled_from([1, 10, 50, 50, 100]),
        expires_in_hours=st.one_of(st.none(), st.integers(1, 6)),
    )
    def give(self, amount, priority, expires_in_hours):
        expires_at = None if expires_in_hours is None else timezone.now() + timedelta(hours=expires_in_hours)
        created = grant(self.organization, amount, priority=priority, expires_at=expires_at)
        self.grants.append(ModelGrant(created.pk, frac(amount), frac(amount), priority, expires_at, len(self.grants)))

    @rule()
    def usage(self):
        within, fits = self.within_budgets(COST), self.fits(COST)
        response = use(self.client, self.key())
        if not within:  # a hard budget refuses first
            assert (response.status_code, code_of(response)) == (402, "budget_exceeded"), response.content
        elif fits:
            assert response.status_code == 201, response.content
            assert D(response.json()["cost"]) == D(PRICE)
            self.debit(COST, self.last_transfer(TransferKind.USAGE))
            self.count(COST)
        else:
            assert (response.status_code, code_of(response)) == (402, "insufficient_balance"), response.content

    @rule(count=st.integers(1, 6))
    def usage_batch(self, count):
        response = batch(self.client, [self.key() for _ in range(count)])
        assert response.status_code == 200, response.content
        statuses = [r["status"] for r in response.json()["results"]]
        charged = Fraction(0)
        for status in statuses:
            # each event as if sent alone: the model's available and headroom shrink with each charged one
            if not self.within_budgets(COST, charged):
                assert status == 402, statuses
            elif self.available() - charged > 0 and self.available() - charged - COST >= 0:
                assert status == 201, statuses
                charged += COST
            else:
                assert status == 402, statuses
        if charged:
            self.debit(charged, self.last_transfer(TransferKind.USAGE))
            self.count(charged)

    @rule(amount=money)
    def reserve(self, amount):
        within, fits = self.within_budgets(frac(amount)), self.fits(frac(amount))
        response = hold(self.client, self.key(), amount)
        if not within:
            assert (response.status_code, code_of(response)) == (402, "budget_exceeded"), response.content
        elif fits:
            assert response.status_code == 201, response.content
            self.held += frac(amount)
            self.count(frac(amount))
            self.holds.append(ModelHold(response.json()["id"], frac(amount)))
        else:
            assert (response.status_code, code_of(response)) == (402, "insufficient_balance"), response.content

    @precondition(lambda self: any(h.active for h in self.holds))
    @rule(pick=st.integers(min_value=0))
    def capture_one(self, pick):
        active = [h for h in self.holds if h.active]
        model = active[pick % len(active)]
        response = capture(self.client, model.id)
        assert response.status_code in (200, 201), response.content
        model.active = False
        self.held -= model.amount
        self.debit(COST, self.last_transfer(TransferKind.USAGE))  # drawn at capture time, in full
        self.count(COST - model.amount)  # may pass a hard budget: the service was delivered

    @precondition(lambda self: any(h.active for h in self.holds))
    @rule(pick=st.integers(min_value=0))
    def release_one(self, pick):
        active = [h for h in self.holds if h.active]
        model = active[pick % len(active)]
        response = release(self.client, model.id)
        assert response.status_code == 200, response.content
        model.active = False
        self.held -= model.amount  # gives nothing back: the hold took nothing
        self.count(-model.amount)

    @precondition(lambda self: any(g.expires_at is not None for g in self.grants))
    @rule(hours=st.integers(1, 4))
    def time_passes(self, hours):
        shift = timedelta(hours=hours)
        CreditGrant.objects.filter(organization_id=self.organization.pk, expires_at__isnull=False).update(
            expires_at=DbF("expires_at") - shift
        )
        for g in self.grants:
            if g.expires_at is not None:
                g.expires_at -= shift

    @rule()
    def expiry_task(self):
        now = timezone.now()
        due = [g for g in self.grants if g.remaining > 0 and not g.live(now)]
        grants_expire()
        for g in due:
            transfer = Transfer.objects.get(
                organization_id=self.organization.pk, kind=TransferKind.EXPIRY, reference=f"grant:{g.id}"
            )
            self.allocations[(transfer.pk, g.id)] = g.remaining
            self.written_off += g.remaining
            g.remaining = Fraction(0)
            g.written_off = True

    # --- after every step ----------------------------------------------------------------------------

    @invariant()
    def the_books_follow_the_model(self):
        if not hasattr(self, "organization"):
            return
        org = self.organization.pk
        wallet = Wallet.objects.get(organization_id=org)
        assert (frac(wallet.balance), frac(wallet.held)) == (self.balance(), self.held)
        stored = {g.pk: frac(g.remaining) for g in CreditGrant.objects.filter(organization_id=org)}
        assert stored == {g.id: g.remaining for g in self.grants}
        assert {k: frac(v) for k, v in allocations_by_transfer(org).items()} == self.allocations
        assert frac(expired_credits_total(org)) == self.written_off
        assert Transfer.objects.filter(organization_id=org, kind=TransferKind.EXPIRY).count() == sum(
            1 for g in self.grants if g.written_off
        )
        assert Hold.objects.filter(organization_id=org, status="active").count() == sum(1 for h in self.holds if h.active)
        spent = dict(BudgetSpend.objects.filter(organization_id=org).values_list("budget_id", "spent"))
        assert {b.id: b.spent for b in self.budgets} == {b.id: frac(spent.get(b.id, 0)) for b in self.budgets}
        assert BudgetSpend.objects.filter(organization_id=org).count() <= len(self.budgets)  # one period each
        assert_grant_books(org)


def test_grants_follow_their_exact_model_under_random_operations(db):
    service_with_price(slug="meter", unit_price=PRICE)
    # No shrink phase (each step hits PostgreSQL); the failing steps are printed as they ran.
    run_state_machine_as_test(
        CreditsMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
