"""Staff writes for the catalogue: services and their price rows (rates are never edited in place)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing_site.errors import InvalidRequest
from metering.models import Price, PriceModel, Service
from metering.pricing import PriceInvalid, optional_price_fields, price_fields, price_validate


def service_create(*, slug: str, name: str, calc_method: str, active: bool = True) -> Service:
    """A new billable service. InvalidRequest when the slug is taken."""
    if Service.objects.filter(slug=slug).exists():
        raise InvalidRequest("A service with this slug exists.", details={"slug": ["Already exists."]})
    service = Service(slug=slug, name=name, calc_method=calc_method, active=active)
    service.full_clean()
    service.save()
    return service


def price_fields_check(*, calc_method: str, given: dict[str, Decimal | None]) -> None:
    """A price row gives every field its service's method needs, and only fields the method uses (a
    TOKENS row may add `cached_input_price`) (docs/contract.md §3): the staff API and the back office
    both apply this. InvalidRequest names each missing or foreign field."""
    needed = set(price_fields(calc_method))
    allowed = needed | set(optional_price_fields(calc_method))
    missing = sorted(name for name in needed if given.get(name) is None)
    foreign = sorted(name for name, value in given.items() if value is not None and name not in allowed)
    if missing or foreign:
        optional = optional_price_fields(calc_method)
        raise InvalidRequest(
            f"A {calc_method} price takes {', '.join(sorted(needed))}"
            + (f" (optionally {', '.join(optional)})." if optional else "."),
            details={
                **{n: ["This field is required."] for n in missing},
                **{n: ["Does not apply to this method."] for n in foreign},
            },
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
    """A new price row (rates are never edited in place), for everyone, one organization or one plan's
    subscribers. Checked by the one price rule (`pricing.price_validate`, docs/pricing.md); InvalidRequest
    names each fault."""
    given = {
        "input_price": input_price,
        "output_price": output_price,
        "cached_input_price": cached_input_price,
        "unit_price": unit_price,
    }
    if organization_id is not None and plan_id is not None:
        raise InvalidRequest("A price is for one organization or for one plan, not both.", details={"plan": ["Not both."]})
    if model == PriceModel.PER_UNIT and tiers is None and package_size is None:
        price_fields_check(calc_method=service.calc_method, given=given)
    try:
        fields, stored_tiers, size = price_validate(
            method=service.calc_method, model=model, fields=given, tiers=tiers, package_size=package_size
        )
    except PriceInvalid as error:
        raise InvalidRequest(f"This price is not valid: {error}", details=error.errors) from None
    price = Price(
        service=service,
        organization_id=organization_id,
        plan_id=plan_id,
        effective_from=effective_from or timezone.now(),
        created_by_id=created_by_id,
        model=model,
        tiers=stored_tiers,
        package_size=size,
        **fields,
    )
    price.full_clean()
    price.save()
    return price
