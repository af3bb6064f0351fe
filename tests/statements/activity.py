"""A month of real activity for the statement tests, and its expected figures kept by hand (exact
fractions): what each movement added to the wallet, as the tests posted it, never read back from the
code under test. Usage is priced by request at rates chosen here, so its cost is known exactly too."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.utils import timezone

from accounts import services as account_services
from accounts.models import Organization, Role
from metering.models import CalcMethod
from metering.services.subscriptions import subscription_choose
from payments import credits, services
from payments.credit_models import GrantCategory
from statements.models import Statement
from statements.services import month_after, month_start, statement_issue_next
from tests.conftest import key_client
from tests.factories import service_with_price, wallet_fund
from tests.metering.plan_helpers import plan_create
from tests.payments.payment_helpers import post_sandbox, sandbox_body, sandbox_payment

D = Decimal
# Request-priced services with every one of the 12 stored places used.
RATES = {"vision": D("0.013579246801"), "speech": D("0.000000000007")}
# Chosen at the month's first instant, a plan's fee is charged whole (no proration to recompute).
PLAN_FEE = D("19.99")


@dataclass
class Month:
    """What the tests posted this month, by summary category (usage by service slug), exactly."""

    organization: Organization
    expected: dict[str, Fraction] = field(default_factory=lambda: defaultdict(Fraction))
    usage: dict[str, Fraction] = field(default_factory=lambda: defaultdict(Fraction))
    usage_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> Fraction:
        return sum(self.expected.values(), Fraction(0)) + sum(self.usage.values(), Fraction(0))


def services_priced() -> dict[str, object]:
    return {
        slug: service_with_price(slug=slug, calc_method=CalcMethod.REQUEST, unit_price=str(rate)) for slug, rate in RATES.items()
    }


def amount(rng: random.Random, low: int = 1, high: int = 40) -> Decimal:
    """A random amount with 12 decimals, never round."""
    return D(rng.randint(low, high)) + D(rng.randint(1, 10**12 - 1)).scaleb(-12)


def month_live(organization: Organization) -> None:
    """The statement month is the current one: the organization was created at its start."""
    Organization.objects.filter(pk=organization.pk).update(created_at=month_start(timezone.now()))


def after_month(moment: datetime | None = None) -> datetime:
    """A moment the current month's statement is due at: the next month's start + 2 h."""
    return month_after(month_start(moment or timezone.now())) + timedelta(hours=2)


def month_activity(organization: Organization, *, rng: random.Random, capture, staff, api_client) -> Month:
    """Real activity through the services and the API: staff adjustments (both signs), a credit grant,
    a redeemed code, an expired grant, sandbox recharges (one refunded in part), usage of two services
    through the API, a plan. Needs eager Celery and `capture` (django_capture_on_commit_callbacks)."""
    month_live(organization)
    month = Month(organization=organization)
    owner = organization.memberships.filter(role=Role.OWNER).first().user

    for _ in range(rng.randint(1, 3)):
        value = amount(rng, 20, 60)
        wallet_fund(organization, value)
        month.expected["adjustments"] += Fraction(value)

    value = amount(rng)
    credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(amount=value, category=GrantCategory.PROMOTIONAL, reason="welcome"),
        created_by_id=None,
    )
    month.expected["grants"] += Fraction(value)

    value = amount(rng, 1, 5)
    (code,) = services.redemption_codes_generate(
        batch=f"b{rng.randint(0, 10**9)}", amount=value, count=1, expires_at=None, created_by=None
    )
    services.code_redeem(organization=organization, user=owner, code=code)
    month.expected["redemptions"] += Fraction(value)

    payments = []
    for _ in range(rng.randint(1, 2)):
        payment = sandbox_payment(organization, f"{rng.randint(5, 50)}.{rng.randint(0, 99):02d}")
        with capture(execute=True):
            assert post_sandbox(api_client, sandbox_body(payment)).status_code == 200
        payment.refresh_from_db()
        assert payment.status == "succeeded"
        month.expected["recharges"] += Fraction(payment.amount)
        payments.append(payment)
    refund = D(rng.randint(1, 400)).scaleb(-2)
    with capture(execute=True):
        services.payment_refund(payment=payments[0], amount=refund, reason="customer asked", staff=staff)
    month.expected["refunds"] -= Fraction(refund)

    key = account_services.api_key_create(organization=organization, name="live", created_by=owner)
    client = key_client(key.secret)
    for slug, rate in RATES.items():
        for n in range(rng.randint(1, 4)):
            response = client.post("/api/v1/usage/", {"service": slug, "idempotency_key": f"{slug}-{n}"}, format="json")
            assert response.status_code == 201, response.content
            month.usage[slug] -= Fraction(rate)
            month.usage_counts[slug] += 1

    plan_create("starter", fee=str(PLAN_FEE))
    subscription_choose(organization_id=organization.pk, plan_slug="starter", now=month_start(timezone.now()))
    month.expected["subscription"] -= Fraction(PLAN_FEE)

    # A grant written off at its expiry: nothing used it in between, so all of it expires.
    value = amount(rng, 1, 3)
    credits.grant_create(
        organization_id=organization.pk,
        spec=credits.GrantSpec(
            amount=value, category=GrantCategory.PROMOTIONAL, reason="trial", expires_at=timezone.now() + timedelta(minutes=5)
        ),
        created_by_id=None,
    )
    month.expected["grants"] += Fraction(value)
    assert credits.grants_expire(now=timezone.now() + timedelta(minutes=6)) >= 1
    month.expected["expiry"] -= Fraction(value)
    return month


def month_issue(organization: Organization) -> Statement:
    statement = statement_issue_next(organization_id=organization.pk, now=after_month())
    assert statement is not None
    return Statement.objects.select_related("organization").prefetch_related("lines__service").get(pk=statement.pk)
