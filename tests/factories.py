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
