import pytest

from accounts.models import User
from tests.factories import PASSWORD


@pytest.mark.parametrize("typed", ["Mixed.Case@Example.COM", "mixed.case@EXAMPLE.com"])
def test_user_clean_stores_email_lowercased_so_it_can_sign_in(api_client, typed):
    user = User(email=typed)
    user.set_password(PASSWORD)
    user.full_clean()
    user.save()

    response = api_client.post("/api/v1/auth/token/", {"email": "MIXED.case@example.com", "password": PASSWORD}, format="json")

    assert User.objects.get().email == "mixed.case@example.com"
    assert response.status_code == 200, response.content


def test_manager_lowercases_email(db):
    assert User.objects.create_user(email="Shout@EXAMPLE.com", password=PASSWORD).email == "shout@example.com"
