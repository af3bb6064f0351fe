import pytest

from accounts import services as account_services
from accounts.models import Role
from tests.conftest import jwt_client
from tests.factories import UserFactory, organization_create


@pytest.fixture
def other_organization(db):
    """A second tenant with its own owner and a live key."""
    return organization_create(name="Globex")


@pytest.fixture
def other_key(other_organization):
    return account_services.api_key_create(organization=other_organization, name="globex")


@pytest.fixture
def admin(organization):
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def client_for():
    """A JWT client for any user: `client_for(user)`."""
    return jwt_client
