from decimal import Decimal

import pytest

from accounts import services as account_services
from tests.conftest import key_client


@pytest.fixture
def test_mode_client(test_key):
    return key_client(test_key.secret)


@pytest.fixture
def capped_key(organization, owner):
    """A live key that may spend $0.002 in total (two pings)."""
    return account_services.api_key_create(organization=organization, name="capped", created_by=owner, spend_cap=Decimal("0.002"))
