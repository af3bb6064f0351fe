from decimal import Decimal

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from metering.models import CalcMethod
from tests.factories import PASSWORD, ServiceFactory, UserFactory, organization_create, service_with_price, wallet_fund


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


@pytest.fixture
def catalogue(db) -> dict:
    """One priced service per calculation method, plus an inactive one."""
    retired = ServiceFactory(slug="retired", active=False)
    retired.prices.create(effective_from="2000-01-01T00:00:00Z", unit_price=Decimal("0.001"))
    return {
        "gpt": service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="0.15", output_price="0.60"),
        "translate": service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02"),
        "summarize": service_with_price(slug="summarize", calc_method=CalcMethod.WORD_COUNT, unit_price="0.5"),
        "dalle": service_with_price(slug="dalle", calc_method=CalcMethod.IMAGE_RESOLUTION, unit_price="0.01"),
        "ping": service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price="0.001"),
        "retired": retired,
    }


@pytest.fixture
def funded(organization, catalogue):
    """The organization's wallet holds $10 and the catalogue exists."""
    wallet_fund(organization, "10")
    return organization


# --- Payments (fixtures shared by tests/payments) -----------------------------------------------


@pytest.fixture
def org_admin(organization):
    """A person with the `admin` role in `organization` (a manager, like the owner)."""
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def org_admin_client(org_admin) -> APIClient:
    return jwt_client(org_admin)


@pytest.fixture
def member_client(member) -> APIClient:
    return jwt_client(member)


@pytest.fixture
def other_owner_client(other_owner) -> APIClient:
    return jwt_client(other_owner)


@pytest.fixture
def eager_celery(settings):
    """Celery tasks run in-process when queued (pair with django_capture_on_commit_callbacks(execute=True))."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return settings
