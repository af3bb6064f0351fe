"""Plans, subscriptions and an exact oracle for their money, shared by the subscription tests.

The oracle counts a month's seconds with the calendar and rounds with Fraction's own half-even
`round`: it never calls the code's proration."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction

from metering.models import Plan, PlanAllowance, Price, Service, SubscriptionCharge
from payments.models import Transfer, TransferKind, Wallet


def plan_make(
    slug: str,
    fee: str,
    *,
    included: dict[Service, int] | None = None,
    prices: dict[Service, str] | None = None,
    public: bool = True,
) -> Plan:
    """A plan with its monthly fee, included quantities and per-request unit prices."""
    plan = Plan.objects.create(slug=slug, name=slug.title(), monthly_fee=Decimal(fee), public=public)
    for service, quantity in (included or {}).items():
        PlanAllowance.objects.create(plan=plan, service=service, quantity=quantity)
    for service, unit_price in (prices or {}).items():
        Price.objects.create(service=service, plan=plan, effective_from="2000-01-01T00:00:00Z", unit_price=Decimal(unit_price))
    return plan


def oracle_fraction(moment: datetime) -> Fraction:
    """Seconds left in the moment's month (from the start of its second) over the month's seconds."""
    moment = moment.astimezone(UTC)
    total = calendar.monthrange(moment.year, moment.month)[1] * 86_400
    elapsed = (moment.day - 1) * 86_400 + moment.hour * 3_600 + moment.minute * 60 + moment.second
    return Fraction(total - elapsed, total)


def oracle_money(amount: str | Decimal, fraction: Fraction) -> Decimal:
    exact = round(Fraction(Decimal(amount)) * fraction, 12)  # half-even, once
    with localcontext() as context:
        context.prec = 80
        return Decimal(exact.numerator) / Decimal(exact.denominator)


def oracle_units(quantity: int, fraction: Fraction) -> int:
    return round(Fraction(quantity) * fraction)


def balance(organization) -> Decimal:
    return Wallet.objects.get(organization=organization).balance


def subscription_transfers(organization) -> list[Transfer]:
    return list(Transfer.objects.filter(organization=organization, kind=TransferKind.SUBSCRIPTION).order_by("id"))


def charges(organization, **filters) -> list[SubscriptionCharge]:
    return list(SubscriptionCharge.objects.filter(organization=organization, **filters).order_by("id"))
