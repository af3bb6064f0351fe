"""Property-based: random debits, batches, holds, captures, releases, expiries, credits, credit-limit
changes and striping turned on, resized and off (docs/contract.md §2.9) against a plain-Python model of
one wallet — which knows nothing of stripes: striping must not change what the wallet does. After every
step the wallet equals the model and docs/contract.md §2 holds."""

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from accounts.models import Role
from accounts.tenancy import Tenant
from billing_site.errors import InvalidRequest
from metering import services
from metering.models import CalcMethod, Hold, HoldStatus
from payments import ledger
from payments.models import Wallet
from payments.services import wallet_settings_update
from tests.factories import UserFactory, organization_create, service_with_price
from tests.payments.helpers import assert_money_invariants

pytestmark = pytest.mark.slow

D = Decimal
PER_MILLION = D(1_000_000)
INPUT_PRICE, OUTPUT_PRICE = D("1"), D("3")  # per 1M tokens: costs are exact multiples of 0.000001
tokens = st.integers(min_value=0, max_value=600_000)
amounts = st.decimals(min_value=0, max_value=3, places=6, allow_nan=False, allow_infinity=False)


def token_cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * INPUT_PRICE + output_tokens * OUTPUT_PRICE) / PER_MILLION


@dataclass
class ModelHold:
    id: int
    amount: Decimal
    status: str = HoldStatus.ACTIVE
    captured_with: dict = field(default_factory=dict)


class WalletMachine(RuleBasedStateMachine):
    """The model: balance, held, credit limit, and each hold's amount and status."""

    def __init__(self):
        super().__init__()
        self.balance = D(0)
        self.held = D(0)
        self.limit = D(0)
        self.holds: list[ModelHold] = []
        self.keys: list[tuple[str, int, int]] = []
        self.step = 0

    @initialize(credit_limit=st.sampled_from([D("0"), D("0.75")]), funding=amounts, stripes=st.sampled_from([0, 0, 2, 5]))
    def open_wallet(self, credit_limit, funding, stripes):
        # A fresh organization per example: the test's transaction spans every example.
        self.organization = organization_create(name="Model", owner=UserFactory())
        self.tenant = Tenant(organization=self.organization, user=None, api_key=None, role=Role.OWNER)
        Wallet.objects.filter(organization_id=self.organization.pk).update(credit_limit=credit_limit)
        self.limit = credit_limit
        if funding:
            self.credit(funding)
        if stripes:
            self.restripe(stripes, reload=True)

    def fits(self, amount: Decimal) -> bool:
        """Nothing new starts at or below the limit (not even a free debit), and nothing ends below it."""
        available = self.balance - self.held
        return available > -self.limit and available - amount >= -self.limit

    def next_key(self) -> str:
        self.step += 1
        return f"k{self.step}"

    # --- operations -------------------------------------------------------------------------------------

    @rule(input_tokens=tokens, output_tokens=tokens)
    def debit(self, input_tokens, output_tokens):
        cost = token_cost(input_tokens, output_tokens)
        key = self.next_key()
        event = services.UsageEvent(
            service="model-gpt", idempotency_key=key, data={"input_tokens": input_tokens, "output_tokens": output_tokens}
        )
        if self.fits(cost):
            outcome = services.usage_record(tenant=self.tenant, event=event)
            assert not outcome.replayed
            assert outcome.record.cost == cost
            self.balance -= cost
            self.keys.append((key, input_tokens, output_tokens))
        else:
            with pytest.raises(ledger.InsufficientBalance):
                services.usage_record(tenant=self.tenant, event=event)

    @rule(events=st.lists(st.tuples(tokens, tokens), min_size=1, max_size=4))
    def batch(self, events):
        usage_events = [
            services.UsageEvent(
                service="model-gpt", idempotency_key=self.next_key(), data={"input_tokens": i, "output_tokens": o}
            )
            for i, o in events
        ]
        results = services.usage_record_batch(tenant=self.tenant, events=usage_events)
        for (input_tokens, output_tokens), event, result in zip(events, usage_events, results, strict=True):
            cost = token_cost(input_tokens, output_tokens)
            if self.fits(cost):
                assert (result.status, result.record.cost) == (201, cost)
                self.balance -= cost
                self.keys.append((event.idempotency_key, input_tokens, output_tokens))
            else:
                assert result.status == 402

    @rule(stripes=st.sampled_from([0, 2, 3, 8]), reload=st.booleans())
    def restripe(self, stripes, reload):
        wallet_settings_update(organization_id=self.organization.pk, stripes=stripes)
        if reload:  # otherwise the hot path keeps the old stripe count, as another process would
            self.organization.refresh_from_db()

    @rule(credit_limit=st.sampled_from([D("0"), D("0.3"), D("0.75")]))
    def change_credit_limit(self, credit_limit):
        wallet_settings_update(organization_id=self.organization.pk, credit_limit=credit_limit)
        self.limit = credit_limit

    @precondition(lambda self: self.keys)
    @rule(pick=st.integers(min_value=0))
    def replay(self, pick):
        key, input_tokens, output_tokens = self.keys[pick % len(self.keys)]
        event = services.UsageEvent(
            service="model-gpt", idempotency_key=key, data={"input_tokens": input_tokens, "output_tokens": output_tokens}
        )
        assert services.usage_record(tenant=self.tenant, event=event).replayed

    @rule(amount=amounts)
    def hold(self, amount):
        call = {
            "tenant": self.tenant,
            "service": "model-gpt",
            "idempotency_key": self.next_key(),
            "amount": amount,
            "maxima": {},
            "expires_in": 3600,
        }
        if amount == 0:  # a hold bounds an over-capture: it is never zero
            with pytest.raises(InvalidRequest):
                services.hold_create(**call)
        elif self.fits(amount):
            outcome = services.hold_create(**call)
            self.held += amount
            self.holds.append(ModelHold(id=outcome.hold.pk, amount=amount))
        else:
            with pytest.raises(ledger.InsufficientBalance):
                services.hold_create(**call)

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(min_value=0), input_tokens=tokens, output_tokens=tokens)
    def capture(self, pick, input_tokens, output_tokens):
        model = self.holds[pick % len(self.holds)]
        hold = Hold.objects.select_related("service").get(pk=model.id)
        quantities = model.captured_with or {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if model.status == HoldStatus.ACTIVE:
            outcome = services.hold_capture(tenant=self.tenant, hold=hold, data=quantities)
            cost = token_cost(**quantities)
            assert (outcome.replayed, outcome.record.cost) == (False, cost)
            self.balance -= cost  # in full, even past the limit (docs/contract.md §2.4)
            self.held -= model.amount
            model.status, model.captured_with = HoldStatus.CAPTURED, quantities
        elif model.status == HoldStatus.CAPTURED:
            assert services.hold_capture(tenant=self.tenant, hold=hold, data=quantities).replayed
        else:
            with pytest.raises(services.HoldNotActive):
                services.hold_capture(tenant=self.tenant, hold=hold, data=quantities)

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(min_value=0))
    def release(self, pick):
        model = self.holds[pick % len(self.holds)]
        hold = Hold.objects.select_related("service").get(pk=model.id)
        if model.status == HoldStatus.ACTIVE:
            assert not services.hold_release(hold=hold).replayed
            self.held -= model.amount
            model.status = HoldStatus.RELEASED
        elif model.status == HoldStatus.RELEASED:
            assert services.hold_release(hold=hold).replayed
        else:
            with pytest.raises(services.HoldNotActive):
                services.hold_release(hold=hold)

    @precondition(lambda self: any(h.status == HoldStatus.ACTIVE for h in self.holds))
    @rule()
    def expire(self):
        services.holds_expire(now=timezone.now() + timedelta(hours=2))
        for model in self.holds:
            if model.status == HoldStatus.ACTIVE:
                self.held -= model.amount
                model.status = HoldStatus.EXPIRED

    @rule(amount=amounts.filter(bool))
    def credit(self, amount):
        ledger.wallet_adjust(organization_id=self.organization.pk, amount=amount, reason="top-up", created_by_id=None)
        self.balance += amount

    @rule(amount=amounts.filter(bool))
    def adjust_down(self, amount):
        if self.fits(amount):
            ledger.wallet_adjust(organization_id=self.organization.pk, amount=-amount, reason="correction", created_by_id=None)
            self.balance -= amount
        else:
            with pytest.raises(ledger.InsufficientBalance):
                ledger.wallet_adjust(
                    organization_id=self.organization.pk, amount=-amount, reason="correction", created_by_id=None
                )

    # --- after every step ---------------------------------------------------------------------------------

    @invariant()
    def wallet_matches_the_model(self):
        if not hasattr(self, "organization"):
            return
        wallet = Wallet.objects.get(organization_id=self.organization.pk)
        assert (wallet.balance, wallet.held) == (self.balance, self.held)
        for model in self.holds:
            assert Hold.objects.get(pk=model.id).status == model.status
        assert_money_invariants([self.organization.pk])


def test_wallet_follows_its_model_under_random_operations(db):
    service_with_price(
        slug="model-gpt", calc_method=CalcMethod.TOKENS, input_price=str(INPUT_PRICE), output_price=str(OUTPUT_PRICE)
    )

    # No shrink phase: each step hits PostgreSQL, so shrinking a failure would take minutes; the
    # failing example's steps are printed as they ran, which is the reproduction.
    run_state_machine_as_test(
        WalletMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
