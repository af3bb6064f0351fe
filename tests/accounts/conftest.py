import pytest

from tests.conftest import jwt_client


@pytest.fixture
def admin(org_admin):
    """This folder's name for the shared `org_admin` (a manager of `organization`)."""
    return org_admin


@pytest.fixture
def client_for():
    """A JWT client for any user: `client_for(user)`."""
    return jwt_client
