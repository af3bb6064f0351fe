"""Property-based (docs/contract.md §2.11): random usage events, batches, holds and their captures,
price changes, plan grants and recharges on one organization whose service has a tiered price and a
plan allowance, against a plain-Python model that prices with the Fraction oracle
(tests/metering/pricing_oracle.py). After every step: the wallet equals the model and its ledger, the
records' positions are unique and contiguous, and each record's cost re-derives from the record."""

from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from accounts.models import Role
from accounts.tenancy import Tenant
from metering import services
from metering.models import CalcMethod, Hold, Plan, PlanAllowance, Service, Subscription, UsageRecord
from metering.services.positions import period_of, position_grant
from payments import ledger
from payments.models import Wallet
from tests.factories import ServiceFactory, UserFactory, organization_create
from tests.metering import pricing_oracle as oracle
from tests.metering.positional_world import oracle_price, price_add
from tests.payments.helpers import assert_money_invariants

pytestmark = pytest.mark.slow

D = Decimal
SLUG = "model-chars"
rates = st.decimals(min_value=0, max_value=9, places=6, allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f"))
characters = st.integers(min_value=0, max_value=500)
amounts = st.decimals(min_value=0, max_value=4, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def tiered_prices(draw):
    edges = sorted(draw(st.sets(st.integers(1, 3000), min_size=0, max_size=3)))
    tiers = []
    for up_to in [*edges, None]:
        tier = {"up_to": up_to, "unit_price": draw(rates)}
        if draw(st.booleans()):
            tier["flat_fee"] = draw(st.sampled_from(["0.01", "0.5", "0.000000000001"]))
        tiers.append(tier)
    return {"model": draw(st.sampled_from(["tiered", "volume"])), "tiers": tiers}


@dataclass
class ModelHold:
    id: int
    amount: Decimal
    active: bool = True


class PositionalMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.balance = D(0)
        self.held = D(0)
        self.position = 0
        self.free_until = 0
        self.holds: list[ModelHold] = []
        self.step = 0

    @initialize(price=tiered_prices(), included=st.integers(0, 1500), funding=amounts)
    def open(self, price, included, funding):
        self.organization = organization_create(name="Positional model", owner=UserFactory())
        self.tenant = Tenant(organization=self.organization, user=None, api_key=None, role=Role.OWNER)
        self.service = Service.objects.get(slug=SLUG)
        self.change_price(price)
        plan = Plan.objects.create(slug=f"p{self.organization.pk}", name="Plan", monthly_fee=D(0))
        PlanAllowance.objects.create(plan=plan, service=self.service, quantity=max(1, included))
        Subscription.objects.create(organization=self.organization, plan=plan, period=period_of(timezone.now()))
        self.grant(included)
        if funding:
            self.recharge(funding)

    def key(self) -> str:
        self.step += 1
        return f"k{self.step}"

    def fits(self, amount: Decimal) -> bool:
        available = self.balance - self.held
        return available > 0 and available - amount >= 0

    def price_next(self, count: int) -> Decimal:
        return oracle.cost(
            CalcMethod.CHAR_COUNT, {"quantity": count}, self.price, start=self.position, free_until=self.free_until
        )

    def event(self, count: int) -> services.UsageEvent:
        return services.UsageEvent(service=SLUG, idempotency_key=self.key(), data={"characters": count})

    # --- operations -------------------------------------------------------------------------------------

    @rule(count=characters)
    def usage(self, count):
        cost = self.price_next(count)
        if self.fits(cost):
            record = services.usage_record(tenant=self.tenant, event=self.event(count)).record
            assert (record.cost, record.position) == (cost, self.position if count else None)
            self.balance -= cost
            self.position += count
        else:
            with pytest.raises(ledger.InsufficientBalance):
                services.usage_record(tenant=self.tenant, event=self.event(count))

    @rule(counts=st.lists(characters, min_size=1, max_size=5))
    def batch(self, counts):
        results = services.usage_record_batch(tenant=self.tenant, events=[self.event(count) for count in counts])
        for count, result in zip(counts, results, strict=True):
            cost = self.price_next(count)
            if self.fits(cost):
                assert (result.status, result.record.cost) == (201, cost)
                self.balance -= cost
                self.position += count
            else:
                assert result.status == 402

    @rule(amount=amounts.filter(bool))
    def hold(self, amount):
        call = {"tenant": self.tenant, "service": SLUG, "idempotency_key": self.key(), "amount": amount, "maxima": {}}
        if self.fits(amount):
            outcome = services.hold_create(**call, expires_in=3600)
            self.held += amount
            self.holds.append(ModelHold(outcome.hold.pk, amount))
        else:
            with pytest.raises(ledger.InsufficientBalance):
                services.hold_create(**call, expires_in=3600)

    @precondition(lambda self: any(h.active for h in self.holds))
    @rule(pick=st.integers(min_value=0), count=characters)
    def capture(self, pick, count):
        active = [h for h in self.holds if h.active]
        model = active[pick % len(active)]
        cost = self.price_next(count)
        hold = Hold.objects.select_related("service").get(pk=model.id)
        record = services.hold_capture(tenant=self.tenant, hold=hold, data={"characters": count}).record
        assert (record.cost, record.position) == (cost, self.position if count else None)
        self.balance -= cost  # in full, even past the limit
        self.held -= model.amount
        self.position += count
        model.active = False

    @rule(price=tiered_prices())
    def change_price(self, price):
        price_add(self.service, price)
        self.price = oracle_price(price)

    @rule(units=st.integers(0, 800))
    def grant(self, units):
        with transaction.atomic():
            position_grant(
                organization_id=self.organization.pk, service_id=self.service.pk, period=period_of(timezone.now()), units=units
            )
        self.free_until = max(self.free_until, self.position) + units

    @rule(amount=amounts.filter(bool))
    def recharge(self, amount):
        ledger.wallet_adjust(organization_id=self.organization.pk, amount=amount, reason="top-up", created_by_id=None)
        self.balance += amount

    # --- after every step ---------------------------------------------------------------------------------

    @invariant()
    def wallet_and_records_follow_the_model(self):
        if not hasattr(self, "organization"):
            return
        wallet = Wallet.objects.get(organization_id=self.organization.pk)
        assert (wallet.balance, wallet.held) == (self.balance, self.held)
        assert_money_invariants([self.organization.pk])
        records = list(UsageRecord.objects.filter(organization_id=self.organization.pk).order_by("position"))
        taken = [r.position for r in records if r.position is not None]
        runs = [(r.position, r.quantity) for r in records if r.position is not None]
        assert all(a + n == b for (a, n), (b, _) in pairwise(runs)), runs  # contiguous, unique
        assert not taken or taken[0] == 0
        assert sum(r.quantity for r in records) == self.position
        for record in records:
            assert oracle.rederive(CalcMethod.CHAR_COUNT, record) == record.cost, (record.position, record.pricing)


def test_positional_usage_follows_its_model_under_random_operations(db):
    ServiceFactory(slug=SLUG, calc_method=CalcMethod.CHAR_COUNT)
    # No shrink phase (each step hits PostgreSQL); the failing steps are printed as they ran.
    run_state_machine_as_test(
        PositionalMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
