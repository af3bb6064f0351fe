"""factory_boy factories. Objects with money or invariants are built through the real services."""

from decimal import Decimal

import factory

from accounts import services as account_services
from accounts.models import Organization, User
from metering.models import CalcMethod, Price, Service

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @classmethod
    def _after_postgeneration(cls, instance, create, results=None):
        if create:
            instance.save()


def organization_create(*, name: str = "Acme", owner: User | None = None) -> Organization:
    """An organization (with its wallet) through the real service."""
    return account_services.organization_create(name=name, owner=owner or UserFactory())


class ServiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Service

    slug = factory.Sequence(lambda n: f"service-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    calc_method = CalcMethod.REQUEST
    active = True


def service_with_price(*, slug: str, calc_method: str = CalcMethod.REQUEST, **prices: Decimal | str) -> Service:
    service = ServiceFactory(slug=slug, calc_method=calc_method)
    Price.objects.create(service=service, effective_from="2000-01-01T00:00:00Z", **{k: Decimal(v) for k, v in prices.items()})
    return service


def price_add(*, service: Service, organization=None, effective_from=None, **prices: Decimal | str) -> Price:
    """A new price row through the real service (rates are never edited in place)."""
    from metering import services as metering_services

    return metering_services.price_create(
        service=service,
        organization_id=organization.pk if organization is not None else None,
        effective_from=effective_from,
        created_by_id=None,
        **{name: Decimal(value) for name, value in prices.items()},
    )


def wallet_fund(organization: Organization, amount: Decimal | str, *, reason: str = "test funding"):
    """Credit (or debit) a wallet through the ledger's staff adjustment."""
    from payments import ledger

    return ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(amount), reason=reason, created_by_id=None)
