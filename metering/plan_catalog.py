"""Staff writes for the catalogue's price models and plans: a price of any model (per_unit, tiered,
volume, package) for everyone, one organization or one plan's subscribers, and plans with the
quantities they include. Every price is checked by `metering.pricing.price_validate` (one rule, one
place) and is a new row: rates are never edited in place (a database trigger refuses it).

(These are services; they live beside `metering/services/catalog.py` rather than in it only because
that package was outside this change's reach.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing_site.errors import InvalidRequest
from metering.models import Plan, PlanAllowance, Price, PriceModel, Service
from metering.pricing import PriceInvalid, price_validate


def _refused(error: PriceInvalid, *, prefix: str = "") -> InvalidRequest:
    """A PriceInvalid as the API's 400, its messages under the fields they are about."""
    return InvalidRequest(
        f"The price is invalid: {error}", details={f"{prefix}{name}": list(messages) for name, messages in error.errors.items()}
    )


@dataclass(frozen=True)
class PriceSpec:
    """A price as staff send it: the method's price fields (per_unit, package) or tiers (tiered, volume)."""

    model: str = PriceModel.PER_UNIT
    fields: dict[str, Any] = field(default_factory=dict)
    tiers: Any = None
    package_size: Any = None
    effective_from: datetime | None = None


def _price_row(
    *, service: Service, spec: PriceSpec, organization_id: int | None, plan_id: int | None, created_by_id: int | None
) -> Price:
    """The unsaved row for `spec`; PriceInvalid when it does not fit the service's method or its model."""
    prices, tiers, package_size = price_validate(
        method=service.calc_method, model=spec.model, fields=spec.fields, tiers=spec.tiers, package_size=spec.package_size
    )
    return Price(
        service=service,
        organization_id=organization_id,
        plan_id=plan_id,
        effective_from=spec.effective_from or timezone.now(),
        model=spec.model,
        tiers=tiers,
        package_size=package_size,
        created_by_id=created_by_id,
        **prices,
    )


def price_model_create(
    *,
    service: Service,
    spec: PriceSpec,
    organization_id: int | None = None,
    plan_id: int | None = None,
    created_by_id: int | None = None,
) -> Price:
    """A new price row of any model: general, for one organization, or for one plan (never both).
    InvalidRequest names each field that does not fit (docs/contract.md §3)."""
    if organization_id is not None and plan_id is not None:
        raise InvalidRequest(
            "A price is for one organization or for one plan, not both.",
            details={"plan": ["Leave it empty for an organization's price."]},
        )
    try:
        price = _price_row(
            service=service, spec=spec, organization_id=organization_id, plan_id=plan_id, created_by_id=created_by_id
        )
    except PriceInvalid as error:
        raise _refused(error) from None
    price.full_clean()
    price.save()
    return price


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
                _price_row(service=services[slug], spec=spec, organization_id=None, plan_id=None, created_by_id=created_by_id)
            )
        except PriceInvalid as error:
            errors.update(_refused(error, prefix=f"prices.{slug}.").details)
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
