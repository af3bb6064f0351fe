"""Staff writes for the catalogue: services and their price rows (rates are never edited in place)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing_site.errors import InvalidRequest
from metering.models import Price, Service
from metering.pricing import optional_price_fields, price_fields


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
) -> Price:
    """A new price row (rates are never edited in place). The fields must be the ones the service's
    method uses (docs/contract.md §3); InvalidRequest otherwise."""
    given = {
        "input_price": input_price,
        "output_price": output_price,
        "cached_input_price": cached_input_price,
        "unit_price": unit_price,
    }
    price_fields_check(calc_method=service.calc_method, given=given)
    price = Price(
        service=service,
        organization_id=organization_id,
        effective_from=effective_from or timezone.now(),
        created_by_id=created_by_id,
        **given,
    )
    price.full_clean()
    price.save()
    return price
