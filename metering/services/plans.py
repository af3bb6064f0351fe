"""Staff writes for plans: a plan, the quantities it includes each month, and its own prices (new
price rows, checked by the one price rule and never edited; docs/pricing.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import IntegrityError, transaction

from billing_site.errors import InvalidRequest
from metering.models import Plan, PlanAllowance, Price, Service
from metering.pricing import PriceInvalid
from metering.services.catalog import PriceSpec, price_refusal, price_row_build


@dataclass(frozen=True)
class PlanChange:
    """What a staff POST of a plan says: every field but the slug optional for an existing plan."""

    slug: str
    name: str | None = None
    monthly_fee: Decimal | None = None
    description: str | None = None
    public: bool | None = None
    included: dict[str, int] = field(default_factory=dict)
    prices: dict[str, PriceSpec] = field(default_factory=dict)


def plan_save(*, change: PlanChange, created_by_id: int | None) -> tuple[Plan, bool]:
    """Create the plan `change.slug`, or change an existing one's name, fee, description, visibility and
    included quantities (each service given is set; 0 includes none of it; services not given keep
    theirs), and add a new plan price row for each service in `change.prices` (earlier rows are never
    edited). All or nothing: every service and price is checked before anything is written.
    Answers the plan and whether it was created. InvalidRequest names each faulty entry."""
    slugs = set(change.included) | set(change.prices)
    services = {service.slug: service for service in Service.objects.filter(slug__in=slugs)}
    errors: dict[str, list[str]] = {}
    for where, names in (("included", change.included), ("prices", change.prices)):
        for slug in sorted(set(names) - set(services)):
            errors[f"{where}.{slug}"] = ["No such service."]
    rows: list[Price] = []
    for slug, spec in sorted(change.prices.items()):
        if slug not in services:
            continue
        try:
            rows.append(
                price_row_build(
                    service=services[slug], spec=spec, organization_id=None, plan_id=None, created_by_id=created_by_id
                )
            )
        except PriceInvalid as error:
            errors.update(price_refusal(error, prefix=f"prices.{slug}.").details)
    if errors:
        raise InvalidRequest(
            "The plan is invalid: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), details=errors
        )
    with transaction.atomic():
        plan = Plan.objects.filter(slug=change.slug).first()
        created = plan is None
        if plan is None:
            if not change.name:
                raise InvalidRequest("A new plan needs a name.", details={"name": ["This field is required."]})
            plan = Plan(slug=change.slug, name=change.name)
        for name in ("name", "monthly_fee", "description", "public"):
            value = getattr(change, name)
            if value is not None:
                setattr(plan, name, value)
        plan.full_clean(validate_unique=False)
        try:
            with transaction.atomic():
                plan.save()
        except IntegrityError:  # another request created this slug between our read and our insert
            raise InvalidRequest(
                "A plan with this slug was created meanwhile: send again to change it.", details={"slug": ["Already exists."]}
            ) from None
        for slug, quantity in sorted(change.included.items()):
            allowance = PlanAllowance.objects.filter(plan=plan, service=services[slug]).first()
            if quantity == 0:
                if allowance is not None:
                    allowance.delete()  # a model delete: the price cache hears of it
                continue
            allowance = allowance or PlanAllowance(plan=plan, service=services[slug])
            allowance.quantity = quantity
            allowance.save()
        for row in rows:
            row.plan = plan
            row.full_clean()
            row.save()
    return plan, created
