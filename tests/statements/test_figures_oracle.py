"""Statements against the test's own books (docs/statements.md): for several organizations and random months of
activity taken through the real services and API — recharges settled from the sandbox webhook, usage
of several services (one by one, in batches mixing services, through a captured hold), test-key
usage that must not count, staff adjustments both ways, refunds, credit grants and their write-off,
redemption codes, a subscription fee, a high-volume (striped) wallet — every statement line equals
the books' figure for it exactly, opening + Σ lines = closing, each opening is the previous closing,
and each closing is the ledger's own sum before the month's end."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.conf import settings
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Organization
from metering.models import CalcMethod, UsageRecord
from metering.services import catalog, subscriptions
from metering.services.true_up import volume_true_ups_run
from payments import credits, ledger
from payments import services as payment_services
from payments.credit_models import GRANT_PRIORITY_DEFAULT
from payments.models import CreditGrant, LedgerEntry, TransferKind
from statements.models import Statement
from statements.services import statements_issue_for_organization
from tests.conftest import jwt_client, key_client
from tests.factories import ServiceFactory, UserFactory, organization_create, service_with_price, wallet_fund
from tests.metering.subscriptions_world import oracle_fraction, oracle_money, plan_make
from tests.payments.credit_world import clock_at, grant
from tests.payments.payment_helpers import post_sandbox, sandbox_body, sandbox_notify, sandbox_payment
from tests.statements.statement_world import Book, assert_statements_match, frac, month_of, next_month

pytestmark = pytest.mark.django_db

D = Decimal
F = Fraction
PRICES = {"alpha": "0.37", "beta": "0.0125", "gamma": "0.000000000007"}
USAGE = "/api/v1/usage/"
BATCH = "/api/v1/usage/batch/"
HOLDS = "/api/v1/holds/"


@pytest.fixture
def services(db) -> dict[str, int]:
    return {
        slug: service_with_price(slug=slug, calc_method=CalcMethod.REQUEST, unit_price=price).pk for slug, price in PRICES.items()
    }


class World:
    """One organization, its keys and its books; every act at `when` (the application's clock)."""

    def __init__(self, name: str, services: dict[str, int], rng: random.Random) -> None:
        self.owner = UserFactory()
        self.organization = organization_create(name=name, owner=self.owner)
        self.book = Book(organization_id=self.organization.pk)
        self.services = services
        self.rng = rng
        live = account_services.api_key_create(organization=self.organization, name="live", created_by=self.owner)
        test = account_services.api_key_create(organization=self.organization, name="test", mode="test", created_by=self.owner)
        self.live, self.test = key_client(live.secret), key_client(test.secret)
        self.staff = UserFactory(is_staff=True, is_superuser=True)
        self.payments: list = []
        self.keys = 0
        self.subscribed = False

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def recharge(self, when: datetime, amount: str) -> None:
        with clock_at(when):
            payment = sandbox_notify(sandbox_payment(self.organization, amount))
        assert payment.status == "succeeded"
        self.payments.append(payment)
        self.book.moved(when, TransferKind.RECHARGE, amount)

    def use(self, when: datetime, slug: str) -> None:
        with clock_at(when):
            response = self.live.post(USAGE, {"service": slug, "idempotency_key": self.key()}, format="json")
        assert response.status_code == 201, response.content
        self.book.debit(when, TransferKind.USAGE, PRICES[slug], self.services[slug])

    def batch(self, when: datetime, slugs: list[str]) -> None:
        events = [{"service": slug, "idempotency_key": self.key()} for slug in slugs]
        with clock_at(when):
            response = self.live.post(BATCH, {"events": events}, format="json")
        assert response.status_code == 200, response.content
        assert [r["status"] for r in response.json()["results"]] == [201] * len(slugs), response.content
        costs: dict[int, Fraction] = {}
        for slug in slugs:
            costs[self.services[slug]] = costs.get(self.services[slug], F(0)) + frac(PRICES[slug])
        self.book.usage(when, costs)

    def test_usage(self, when: datetime) -> None:
        with clock_at(when):
            response = self.test.post(USAGE, {"service": "alpha", "idempotency_key": self.key()}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["test"] is True

    def test_batch_and_hold(self, when: datetime) -> None:
        """The test key's batch and captured hold: recorded, and no money moves."""
        events = [{"service": slug, "idempotency_key": self.key()} for slug in ("alpha", "beta")]
        with clock_at(when):
            response = self.test.post(BATCH, {"events": events}, format="json")
            assert [r["status"] for r in response.json()["results"]] == [201, 201], response.content
            held = self.test.post(HOLDS, {"service": "alpha", "amount": "2", "idempotency_key": self.key()}, format="json")
            assert held.status_code == 201, held.content
            captured = self.test.post(f"{HOLDS}{held.json()['id']}/capture/", {}, format="json")
        assert captured.status_code in (200, 201), captured.content

    def hold_captured(self, when: datetime, slug: str) -> None:
        with clock_at(when):
            held = self.live.post(HOLDS, {"service": slug, "amount": "2", "idempotency_key": self.key()}, format="json")
            assert held.status_code == 201, held.content
            captured = self.live.post(f"{HOLDS}{held.json()['id']}/capture/", {}, format="json")
        assert captured.status_code in (200, 201), captured.content
        self.book.debit(when, TransferKind.USAGE, PRICES[slug], self.services[slug])

    def hold_released(self, when: datetime) -> None:
        with clock_at(when):
            held = self.live.post(HOLDS, {"service": "beta", "amount": "1", "idempotency_key": self.key()}, format="json")
            assert held.status_code == 201, held.content
            assert self.live.post(f"{HOLDS}{held.json()['id']}/release/", format="json").status_code == 200

    def adjust(self, when: datetime, amount: str) -> None:
        with clock_at(when):
            wallet_fund(self.organization, amount, reason="goodwill" if D(amount) > 0 else "correction")
        self.book.moved(when, TransferKind.ADJUSTMENT, amount)

    def refund(self, when: datetime, amount: str) -> None:
        with clock_at(when):
            done = payment_services.payment_refund(payment=self.payments[-1], amount=D(amount), reason="asked", staff=self.staff)
        assert done.status == "succeeded", done
        self.book.moved(when, TransferKind.REFUND, -frac(amount))

    def grant(self, when: datetime, amount: str, *, expires_in: timedelta | None) -> None:
        expires_at = when + expires_in if expires_in else None
        with clock_at(when):
            made = grant(self.organization, amount, priority=10, expires_at=expires_at)
        self.book.granted(made.pk, when, amount, priority=10, expires_at=expires_at, kind=TransferKind.GRANT)

    def redeem(self, when: datetime, amount: str, *, days: int | None) -> None:
        with clock_at(when):
            (code,) = payment_services.redemption_codes_generate(
                batch=f"b{self.organization.pk}-{self.key()}",
                amount=D(amount),
                count=1,
                expires_at=None,
                created_by=None,
                grant_expires_days=days,
            )
            posting = payment_services.code_redeem(organization=self.organization, user=self.owner, code=code)
        made = CreditGrant.objects.get(transfer_id=posting.transfer_id)
        self.book.granted(
            made.pk,
            when,
            amount,
            priority=GRANT_PRIORITY_DEFAULT,
            expires_at=when + timedelta(days=days) if days else None,
            kind=TransferKind.REDEMPTION,
        )

    def expire(self, when: datetime) -> None:
        """The write-off of the grants expired by `when` (credits.grant_expire, as the expiry task runs it)."""
        for grant_id, left in self.book.expired(when):
            with clock_at(when):
                assert frac(credits.grant_expire(grant_id=grant_id, now=when)) == left

    def subscribe(self, when: datetime) -> None:
        with clock_at(when):
            subscriptions.subscription_choose(organization_id=self.organization.pk, plan_slug="basic", now=when)
        self.book.debit(when, TransferKind.SUBSCRIPTION, oracle_money("30", oracle_fraction(when)))
        self.subscribed = True

    def stripe(self, when: datetime) -> None:
        with clock_at(when):
            payment_services.wallet_settings_update(organization_id=self.organization.pk, stripes=4)

    def rebalance(self, when: datetime) -> None:
        with clock_at(when):
            ledger.wallet_stripes_rebalance(organization_id=self.organization.pk)


def month_acts(world: World, start: datetime, rng: random.Random, *, edges: bool, striped: bool = False) -> None:
    """A month of random activity, in time order; with `edges`, acts on its first and last microsecond.
    A `striped` wallet gets no grants (a stripe never draws from grants: debits would all go to the
    wallet row) and its money is spread over its stripes after the recharge."""
    end = next_month(start)
    span = int((end - start).total_seconds()) - 7200
    times = sorted(start + timedelta(seconds=3600 + rng.randrange(span), microseconds=rng.randrange(10**6)) for _ in range(14))
    if edges:
        times[0] = start
        times[-1] = end - timedelta(microseconds=1)
    acts = [
        lambda t: world.use(t, rng.choice(list(PRICES))),
        lambda t: world.batch(t, rng.sample(["alpha", "beta", "gamma", "alpha", "gamma"], k=4)),
        world.test_usage,
        world.test_batch_and_hold,
        lambda t: world.hold_captured(t, rng.choice(list(PRICES))),
        world.hold_released,
        lambda t: world.adjust(t, rng.choice(["3.5", "-1.25", "0.000000000001", "-0.000000000003"])),
        lambda t: world.refund(t, rng.choice(["1", "0.99", "2.01"])),
        lambda t: world.grant(t, rng.choice(["1", "4.5"]), expires_in=rng.choice([timedelta(hours=5), timedelta(days=20), None])),
        lambda t: world.redeem(t, "2", days=rng.choice([None, 1, 40])),
        world.expire,
        world.rebalance,
    ]
    if striped:
        acts = acts[:8] + acts[10:]
    world.recharge(times[0], rng.choice(["500", "250.01"]))
    if striped:
        world.rebalance(times[0])
    for t in times[1:-1]:
        rng.choice(acts)(t)
    if not world.subscribed and rng.random() < 0.4:
        world.subscribe(times[-2] + (times[-1] - times[-2]) / 2)
    world.use(times[-1], "alpha")  # the month's last microsecond
    world.expire(times[-1])


@pytest.mark.parametrize("seed", [11, 2026, 90210])
def test_random_months_equal_the_books_and_the_ledger(services, seed):
    rng = random.Random(seed)
    plan_make("basic", "30")
    first = datetime(2025, rng.randrange(1, 13), 1, tzinfo=UTC)
    worlds = []
    for n in range(3):
        world = World(f"org-{n}", services, rng)
        # the first organization is created on its month's first instant, the others later in it
        created = first if n == 0 else first + timedelta(days=rng.randrange(1, 27), seconds=rng.randrange(86400))
        Organization.objects.filter(pk=world.organization.pk).update(created_at=created)
        if n == 1:
            world.stripe(created)
        months, start = [], first
        for index in range(7):
            # the third month is always idle; the others most of the time active
            if index != 2 and rng.random() < 0.8:
                months.append(start)
            start = next_month(start)
        for index, start in enumerate(months):
            month_acts(world, start, rng, edges=index % 2 == 0, striped=n == 1)
        worlds.append(world)

    for world in worlds:
        issued = statements_issue_for_organization(organization_id=world.organization.pk, now=timezone.now())
        assert issued and issued[0].period_start == first
        assert [s.number for s in issued] == list(range(1, len(issued) + 1))
        assert issued[-1].period_end == month_of(timezone.now() - timedelta(hours=1))
        assert_statements_match(
            world.book, list(Statement.objects.filter(organization=world.organization).order_by("period_start"))
        )
    # the striped wallet's usage went to its stripes, and the statements counted it
    striped = worlds[1].organization.pk
    assert LedgerEntry.objects.filter(organization_id=striped, stripe__isnull=False, transfer__kind=TransferKind.USAGE).exists()


def test_the_current_month_through_the_real_api(
    services, eager_celery, django_capture_on_commit_callbacks, api_client, staff_client, monkeypatch
):
    """This month (the real clock), through the HTTP API where one exists: the sandbox webhook, usage/
    and usage/batch/, a hold captured, test-key usage, staff adjustments, a refund, a grant written
    off by grants_expire, a redemption, a subscription fee, and last month's volume true-up; issued
    with now = next month's start + 2 h."""
    plan_make("basic", "30")
    world = World("acme", services, random.Random(1))
    organization = world.organization
    # a volume-priced service used last month (the application's clock then), trued up this month
    tiered = ServiceFactory(slug="tiered", calc_method=CalcMethod.REQUEST)
    catalog.price_create(
        service=tiered,
        organization_id=None,
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        created_by_id=None,
        model="volume",
        tiers=[{"up_to": 3, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )
    this_month = month_of(timezone.now())
    last_month = month_of(this_month - timedelta(days=1))
    Organization.objects.filter(pk=organization.pk).update(created_at=last_month + timedelta(days=2))
    book = world.book
    with clock_at(last_month + timedelta(days=3)):
        wallet_fund(organization, "20", reason="start")
        for n in range(5):  # 1 + 1 + 1 + 0.5 + 0.5: each event at the tier its running total reached
            assert world.live.post(USAGE, {"service": "tiered", "idempotency_key": f"v{n}"}, format="json").status_code == 201
    start_at = last_month + timedelta(days=3)
    book.moved(start_at, TransferKind.ADJUSTMENT, "20")
    book.moved(start_at, TransferKind.USAGE, "-4", tiered.pk, transfers=5)

    now = timezone.now
    payment = sandbox_payment(organization, "100.05")
    with django_capture_on_commit_callbacks(execute=True):
        assert post_sandbox(api_client, sandbox_body(payment)).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    world.payments.append(payment)
    book.moved(now(), TransferKind.RECHARGE, "100.05")
    assert volume_true_ups_run() == 1  # credits back 4 − 5 × 0.5 = 1.5, to `tiered`, this month
    book.moved(now(), TransferKind.USAGE, "1.5", tiered.pk)

    world.use(now(), "alpha")
    world.use(now(), "gamma")
    world.batch(now(), ["alpha", "beta", "gamma", "beta"])
    world.hold_captured(now(), "beta")
    world.hold_released(now())
    world.test_usage(now())
    world.test_batch_and_hold(now())
    for amount in ("7.25", "-0.000000000001"):
        response = staff_client.post(
            f"/api/v1/admin/organizations/{organization.slug}/adjust/", {"amount": amount, "reason": "staff"}, format="json"
        )
        assert response.status_code == 201, response.content
        book.moved(now(), TransferKind.ADJUSTMENT, amount)
    done = payment_services.payment_refund(payment=payment, amount=D("10.01"), reason="asked", staff=world.staff)
    assert done.status == "succeeded"
    book.moved(now(), TransferKind.REFUND, "-10.01")
    (code,) = payment_services.redemption_codes_generate(batch="spring", amount=D("3"), count=1, expires_at=None, created_by=None)
    redeemed = jwt_client(world.owner).post("/api/v1/redeem/", {"code": code}, format="json")
    assert redeemed.status_code in (200, 201), redeemed.content
    voucher = CreditGrant.objects.get(organization=organization, source="redemption")
    book.granted(voucher.pk, now(), "3", priority=GRANT_PRIORITY_DEFAULT, expires_at=None, kind=TransferKind.REDEMPTION)
    response = staff_client.post(
        f"/api/v1/admin/organizations/{organization.slug}/grants/",
        {
            "amount": "2",
            "category": "promotional",
            "priority": 1,
            "expires_at": (now() + timedelta(seconds=1)).isoformat(),
            "reason": "launch",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    short = CreditGrant.objects.get(organization=organization, reason="launch")
    book.granted(short.pk, now(), "2", priority=1, expires_at=short.expires_at, kind=TransferKind.GRANT)
    world.use(now(), "beta")  # drawn from the short grant first (priority 1)
    time.sleep(1.1)
    assert credits.grants_expire() == 1
    book.expired(now())
    world.subscribe(now())
    world.use(now(), "alpha")

    issued = statements_issue_for_organization(organization_id=organization.pk, now=next_month(this_month) + timedelta(hours=2))
    assert [(s.number, s.period_start) for s in issued] == [(1, last_month), (2, this_month)]
    assert_statements_match(book, issued)
    # test usage was recorded, and is nowhere on the statement
    assert UsageRecord.objects.filter(organization_id=organization.pk, test=True).exists()
    assert settings.STATEMENT_ISSUE_DELAY_SECONDS >= 0
