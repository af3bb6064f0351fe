import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import Role
from accounts.tenancy import tenant_resolve
from metering import services as metering_services
from tests.factories import UserFactory


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def owner_web(owner, organization) -> Client:
    """The owner of `organization`, signed in to the dashboard."""
    return client_for(owner)


@pytest.fixture
def member_web(member) -> Client:
    return client_for(member)


@pytest.fixture
def admin_web(org_admin) -> Client:
    return client_for(org_admin)


@pytest.fixture
def other_web(other_owner) -> Client:
    return client_for(other_owner)


@pytest.fixture
def second_owner(organization):
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.OWNER)
    return user


def meter(api_key, service: str, key: str, **quantities):
    """Record one usage event through the real service, as the API would with `api_key`."""
    tenant = tenant_resolve(user=None, api_key=api_key, organization_slug=None)
    event = metering_services.UsageEvent(service=service, idempotency_key=key, data=quantities)
    return metering_services.usage_record(tenant=tenant, event=event).record


def new_key(organization, *, mode: str = "live", name: str = "key"):
    return account_services.api_key_create(organization=organization, name=name, mode=mode).api_key
