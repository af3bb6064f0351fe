import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from tests.factories import PASSWORD, UserFactory, organization_create


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield


@pytest.fixture
def api_client(db) -> APIClient:
    return APIClient()


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def organization(owner):
    return organization_create(name="Acme", owner=owner)


def jwt_client(user) -> APIClient:
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"email": user.email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


@pytest.fixture
def owner_client(owner, organization) -> APIClient:
    return jwt_client(owner)


@pytest.fixture
def member(organization):
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def live_key(organization, owner):
    return account_services.api_key_create(organization=organization, name="live", created_by=owner)


@pytest.fixture
def test_key(organization, owner):
    return account_services.api_key_create(organization=organization, name="test", mode="test", created_by=owner)


def key_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def live_client(live_key) -> APIClient:
    return key_client(live_key.secret)


@pytest.fixture
def other_organization(db):
    """A second tenant, with its own owner, for isolation tests."""
    return organization_create(name="Globex")


@pytest.fixture
def other_owner(other_organization):
    return other_organization.memberships.get(role=Role.OWNER).user


@pytest.fixture
def other_key(other_organization):
    return account_services.api_key_create(organization=other_organization, name="globex")


@pytest.fixture
def other_client(other_key) -> APIClient:
    return key_client(other_key.secret)


@pytest.fixture
def staff_user(db):
    """Back-office user with every permission (billing rights)."""
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return jwt_client(staff_user)
