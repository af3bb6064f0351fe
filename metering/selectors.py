"""Reads for services, prices and usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from billing_site.cache import TwoLevelCache
from billing_site.errors import DomainError, ErrorCode, NotFound
from billing_site.money import ZERO
from metering.models import (
    Hold,
    HoldStatus,
    Plan,
    PlanAllowance,
    Price,
    Service,
    Subscription,
    SubscriptionStatus,
    UsagePosition,
    UsageRecord,
    UsageRollup,
)
from metering.pricing import UnitPrices, positional, unit_prices_from_row


class ServiceNotFound(DomainError):
    code = ErrorCode.SERVICE_NOT_FOUND
    message = "No active service with this slug."


class PriceNotSet(DomainError):
    code = ErrorCode.PRICE_NOT_SET
    message = "This service has no price in force for your organization."


# The price in force for service `s`: the latest effective override for the organization, else the
# latest effective price of the plan of its active subscription, else the latest effective general
# price; and whether that plan includes some of the service each month. The charge and every page that
# shows prices read it through this one fragment (LATERAL joins on metering_service s), so they cannot
# disagree. A plan's prices and allowances apply only while its subscription is active (paid).
_PRICE_IN_FORCE = """
  LEFT JOIN LATERAL (
        SELECT plan_id FROM metering_subscription WHERE organization_id = %(org)s AND status = 'active'
       ) sub ON true
  LEFT JOIN LATERAL (
        SELECT id, input_price, output_price, unit_price, cached_input_price, model, tiers, package_size
          FROM metering_price
         WHERE service_id = s.id
           AND (organization_id = %(org)s OR plan_id = sub.plan_id OR (organization_id IS NULL AND plan_id IS NULL))
           AND effective_from <= %(at)s
         ORDER BY organization_id IS NULL, plan_id IS NULL, effective_from DESC, id DESC
         LIMIT 1
       ) p ON true"""
_ALLOWANCE = (
    "EXISTS (SELECT 1 FROM metering_planallowance a WHERE a.plan_id = sub.plan_id AND a.service_id = s.id AND a.quantity > 0)"
)
_PRICED_SERVICE_SQL = f"""
SELECT s.id, s.slug, s.calc_method, s.active, p.id, p.input_price, p.output_price, p.unit_price, p.cached_input_price,
       p.model, p.tiers, p.package_size, {_ALLOWANCE},
       (SELECT min(effective_from) FROM metering_price
         WHERE service_id = s.id AND (organization_id = %(org)s OR organization_id IS NULL OR plan_id = sub.plan_id)
           AND effective_from > %(at)s)
  FROM metering_service s {_PRICE_IN_FORCE}
 WHERE s.slug = %(slug)s
"""
_PRICES_IN_FORCE_SQL = f"SELECT s.id, p.id FROM metering_service s {_PRICE_IN_FORCE} WHERE s.active AND p.id IS NOT NULL"

# The service and its price in force per (organization, slug), until the next price row of any
# scope takes effect (`effective_from` may lie in the future). Invalidated by every change of a
# service, a price, a subscription or a plan's allowance (metering/apps.py): staff's new price is
# charged from the next request on.
PRICED_SERVICES: TwoLevelCache[tuple[Any, ...]] = TwoLevelCache("prices")


@dataclass(frozen=True, slots=True)
class PricedService:
    service_id: int
    slug: str
    calc_method: str
    prices: UnitPrices
    allowance: bool = False  # the organization's active plan includes some of it each month

    @property
    def positional(self) -> bool:
        """Its cost depends on the organization's usage this period (docs/pricing.md)."""
        return positional(self.prices, allowance=self.allowance)


def _priced_service_row(slug: str, organization_id: int, at: datetime) -> tuple[tuple[Any, ...], datetime | None] | None:
    with connection.cursor() as cursor:
        cursor.execute(_PRICED_SERVICE_SQL, {"org": organization_id, "at": at, "slug": slug})
        row = cursor.fetchone()
    return None if row is None else (tuple(row[:-1]), row[-1])


def priced_service_get(
    *, slug: str, organization_id: int, at: datetime | None = None, include_inactive: bool = False
) -> PricedService:
    """The active service `slug` with its prices in force; ServiceNotFound / PriceNotSet otherwise.
    `include_inactive` prices usage already delivered (a hold's capture) after a service was retired.
    The price in force now comes from this process's cache while it is still the one in force
    (billing_site/cache.py); a price at another moment `at` is read from the database."""
    if not isinstance(slug, str) or not slug or "\x00" in slug:
        raise ServiceNotFound()
    if at is None:
        row = PRICED_SERVICES.get((organization_id, slug), partial(_priced_service_row, slug, organization_id, timezone.now()))
    else:
        found = _priced_service_row(slug, organization_id, at)
        row = None if found is None else found[0]
    if row is None:
        raise ServiceNotFound()
    (service_id, slug, calc_method, active, price_id, input_price, output_price, unit_price, cached_input_price) = row[:9]
    model, tiers, package_size, allowance = row[9:]
    if not (active or include_inactive):
        raise ServiceNotFound()
    if price_id is None:
        raise PriceNotSet()
    prices = unit_prices_from_row(
        PriceRow(price_id, input_price, output_price, unit_price, cached_input_price, model, tiers, package_size), calc_method
    )
    if not prices.complete(calc_method):
        raise PriceNotSet()
    return PricedService(service_id=service_id, slug=slug, calc_method=calc_method, prices=prices, allowance=bool(allowance))


@dataclass(frozen=True, slots=True)
class PriceRow:
    price_id: int
    input_price: Decimal | None
    output_price: Decimal | None
    unit_price: Decimal | None
    cached_input_price: Decimal | None
    model: str
    tiers: Any
    package_size: int | None


def prices_in_force(*, organization_id: int, at: datetime | None = None) -> dict[int, Price]:
    """service id → the Price row in force for this organization (override first), for active services."""
    with connection.cursor() as cursor:
        cursor.execute(_PRICES_IN_FORCE_SQL, {"org": organization_id, "at": at or timezone.now()})
        price_of_service = dict(cursor.fetchall())
    rows = Price.objects.in_bulk(list(price_of_service.values()))
    return {service_id: rows[price_id] for service_id, price_id in price_of_service.items()}


def service_list_with_prices(*, organization_id: int) -> list[tuple[Service, Price | None]]:
    prices = prices_in_force(organization_id=organization_id)
    return [(service, prices.get(service.id)) for service in Service.objects.filter(active=True).order_by("slug")]


class Included(NamedTuple):
    """A plan's included quantity of one service this period: how much the plan gives, how much of it
    is used, how much is left."""

    quantity: int
    used: int
    left: int


def plan_usage_left(*, organization_id: int, at: datetime | None = None) -> dict[int, Included]:
    """service id → (quantity, used, left) of what the organization's plan includes this period
    (calendar month, UTC), for every service its open subscription's plan includes; empty without one.
    `quantity` is the plan's allowance; `left` is what the live usage position still has free
    (`free_until − used`, never below 0) while the subscription is active, and 0 while it is past due
    (its included quantities stop); `used = quantity − left`, never below 0. A period's grant may be
    smaller than `quantity` (a subscription that started mid-month gets it pro rata), so `used` counts
    the units not granted too. The customer's plan page, the pricing page and `GET services/` all read
    this one function."""
    from metering.services.positions import period_of  # metering.services imports this module

    subscription = (
        Subscription.objects.filter(organization_id=organization_id)
        .exclude(status=SubscriptionStatus.CANCELED)
        .values("plan_id", "status")
        .first()
    )
    if subscription is None:
        return {}
    quantities = dict(
        PlanAllowance.objects.filter(plan_id=subscription["plan_id"]).values_list("service_id", "quantity").order_by("service_id")
    )
    if not quantities:
        return {}
    free: dict[int, int] = {}
    if subscription["status"] == SubscriptionStatus.ACTIVE:
        positions = UsagePosition.objects.filter(
            organization_id=organization_id,
            service_id__in=list(quantities),
            period=period_of(at or timezone.now()),
            test=False,
        ).values_list("service_id", "used", "free_until")
        free = {service_id: max(0, free_until - used) for service_id, used, free_until in positions}
    included = {}
    for service_id, quantity in quantities.items():
        left = free.get(service_id, 0)
        included[service_id] = Included(quantity=quantity, used=max(0, quantity - left), left=left)
    return included


def plan_list() -> list[Plan]:
    """Every plan, public or not, by slug, with its allowances and their services (staff tools)."""
    return list(Plan.objects.prefetch_related("allowances__service").order_by("slug"))


def plan_get(*, slug: str) -> Plan:
    """The plan with this slug, with its allowances; NotFound (404) otherwise."""
    plan = Plan.objects.prefetch_related("allowances__service").filter(slug=slug).first()
    if plan is None:
        raise NotFound("No such plan.")
    return plan


def plan_prices(*, plan_ids: list[int], at: datetime | None = None) -> dict[int, dict[str, Price]]:
    """plan id → service slug → the plan's price row in force at `at` (now), or, for a service whose
    plan prices all lie ahead, the next one to take effect (its `effective_from` says when)."""
    at = at or timezone.now()
    rows = Price.objects.filter(plan_id__in=plan_ids).select_related("service").order_by("effective_from", "id")
    chosen: dict[int, dict[str, Price]] = {plan_id: {} for plan_id in plan_ids}
    for row in rows:
        assert row.plan_id is not None  # the filter above
        # Oldest first: the last row in force wins; a row ahead counts only while nothing is kept.
        if row.effective_from <= at or row.service.slug not in chosen[row.plan_id]:
            chosen[row.plan_id][row.service.slug] = row
    return chosen


def usage_list(
    *,
    organization_id: int,
    service: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    api_key_id: int | None = None,
    test: bool | None = None,
) -> QuerySet[UsageRecord]:
    """Newest first; every filter optional; always scoped to one organization."""
    records = UsageRecord.objects.filter(organization_id=organization_id).select_related("service")
    if service:
        records = records.filter(service__slug=service)
    if created_from:
        records = records.filter(created_at__gte=created_from)
    if created_to:
        records = records.filter(created_at__lt=created_to)
    if api_key_id is not None:
        records = records.filter(api_key_id=api_key_id)
    if test is not None:
        records = records.filter(test=test)
    return records.order_by("-created_at", "-id")


def usage_summary(
    *, organization_id: int, group_by: str, day_from: date, day_to: date, test: bool = False
) -> list[dict[str, Any]]:
    """Totals by `day` or `service` over [day_from, day_to], read from the daily rollups."""
    rollups = UsageRollup.objects.filter(organization_id=organization_id, test=test, day__gte=day_from, day__lte=day_to)
    key = "day" if group_by == "day" else "service__slug"
    rows = (
        rollups.values(key)
        .annotate(
            events=Sum("events"),
            quantity=Sum("quantity"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost"),
            services=Count("service", distinct=True),
        )
        .order_by(key)
    )
    return [
        {
            group_by: row[key],
            "events": row["events"],
            "quantity": int(row["quantity"]),
            "input_tokens": int(row["input_tokens"]),
            "output_tokens": int(row["output_tokens"]),
            "cost": row["cost"],
        }
        for row in rows
    ]


def hold_get(*, organization_id: int, hold_id: int, test: bool) -> Hold:
    """Raises Hold.DoesNotExist for another organization's hold, or one of the other mode (answers
    404): a test key never captures or releases a live hold, nor a live principal a test one."""
    return Hold.objects.select_related("service").get(organization_id=organization_id, test=test, pk=hold_id)


def service_get(*, slug: str) -> Service:
    """The service with this slug, active or retired (staff tools); NotFound otherwise."""
    service = Service.objects.filter(slug=slug).first()
    if service is None:
        raise NotFound("No such service.")
    return service


def usage_of_hold(*, hold_id: int) -> UsageRecord | None:
    """The usage record a hold was captured into, if any."""
    return UsageRecord.objects.filter(hold_id=hold_id).only("pk", "cost").first()


def holds_active_count() -> int:
    """Holds currently reserving money, for the `tollgate_holds_active` gauge."""
    return Hold.objects.filter(status=HoldStatus.ACTIVE).count()


def usage_recent(*, organization_id: int, limit: int) -> list[UsageRecord]:
    """The organization's newest usage records (live and test), with service and key, for the back office."""
    return list(usage_list(organization_id=organization_id).select_related("api_key")[:limit])


def holds_active(*, organization_id: int, limit: int) -> list[Hold]:
    """The organization's holds still reserving money, newest first."""
    holds = Hold.objects.filter(organization_id=organization_id, status=HoldStatus.ACTIVE).select_related("service")
    return list(holds.order_by("-id")[:limit])


@dataclass(frozen=True)
class UsageFigures:
    revenue_today: Decimal
    revenue_month: Decimal
    active_organizations: int


USAGE_FIGURES_CACHE_SECONDS = 60
ACTIVE_ORGANIZATION_DAYS = 30


def usage_figures(*, today: date | None = None) -> UsageFigures:
    """Live usage revenue today and this month (UTC), and the organizations with live usage in the
    last 30 days, from the daily rollups (a live record's cost is exactly its revenue leg; the rollups
    are far smaller than the ledger). Cached for a minute: the back office's front page reads it."""
    cached: UsageFigures | None = cache.get("backoffice:usage-figures")
    if cached is not None:
        return cached
    today = today or timezone.now().date()
    live = UsageRollup.objects.filter(test=False)
    month = live.filter(day__gte=today.replace(day=1)).aggregate(total=Sum("cost"), today=Sum("cost", filter=Q(day=today)))
    active = live.filter(day__gt=today - timedelta(days=ACTIVE_ORGANIZATION_DAYS)).values("organization_id").distinct().count()
    figures = UsageFigures(
        revenue_today=month["today"] or ZERO, revenue_month=month["total"] or ZERO, active_organizations=active
    )
    cache.set("backoffice:usage-figures", figures, timeout=USAGE_FIGURES_CACHE_SECONDS)
    return figures
