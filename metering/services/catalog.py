"""Staff writes for the catalogue: services and their price rows (rates are never edited in place)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing_site.errors import InvalidRequest
from metering.models import Price, PriceModel, Service
from metering.pricing import PriceInvalid, price_validate


def service_create(*, slug: str, name: str, calc_method: str, active: bool = True) -> Service:
    """A new billable service. InvalidRequest when the slug is taken."""
    if Service.objects.filter(slug=slug).exists():
        raise InvalidRequest("A service with this slug exists.", details={"slug": ["Already exists."]})
    service = Service(slug=slug, name=name, calc_method=calc_method, active=active)
    service.full_clean()
    service.save()
    return service


@dataclass(frozen=True)
class PriceSpec:
    """A price as staff send it: the method's price fields (per_unit, package) or tiers (tiered, volume)."""

    model: str = PriceModel.PER_UNIT
    fields: dict[str, Any] = field(default_factory=dict)
    tiers: Any = None
    package_size: Any = None
    effective_from: datetime | None = None


def price_refusal(error: PriceInvalid, *, prefix: str = "") -> InvalidRequest:
    """A PriceInvalid as the API's 400, its messages under the fields they are about."""
    return InvalidRequest(
        f"The price is invalid: {error}", details={f"{prefix}{name}": list(messages) for name, messages in error.errors.items()}
    )


def price_row_build(
    *, service: Service, spec: PriceSpec, organization_id: int | None, plan_id: int | None, created_by_id: int | None
) -> Price:
    """The unsaved row for `spec`, checked by the one price rule (`pricing.price_validate`, docs/pricing.md);
    PriceInvalid when it does not fit the service's method or its model."""
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


def price_create(
    *,
    service: Service,
    organization_id: int | None,
    effective_from: datetime | None,
    created_by_id: int | None,
    input_price: Decimal | None = None,
    output_price: Decimal | None = None,
    unit_price: Decimal | None = None,
    cached_input_price: Decimal | None = None,
    model: str = PriceModel.PER_UNIT,
    tiers: Any = None,
    package_size: Any = None,
    plan_id: int | None = None,
) -> Price:
    """A new price row of any model (rates are never edited in place): for everyone, one organization,
    or one plan's subscribers (never both). InvalidRequest names each field that does not fit."""
    if organization_id is not None and plan_id is not None:
        raise InvalidRequest(
            "A price is for one organization or for one plan, not both.",
            details={"plan": ["Leave it empty for an organization's price."]},
        )
    given = {
        "input_price": input_price,
        "output_price": output_price,
        "cached_input_price": cached_input_price,
        "unit_price": unit_price,
    }
    spec = PriceSpec(
        model=model,
        fields={name: value for name, value in given.items() if value is not None},
        tiers=tiers,
        package_size=package_size,
        effective_from=effective_from,
    )
    try:
        price = price_row_build(
            service=service, spec=spec, organization_id=organization_id, plan_id=plan_id, created_by_id=created_by_id
        )
    except PriceInvalid as error:
        raise price_refusal(error) from None
    price.full_clean()
    price.save()
    return price
