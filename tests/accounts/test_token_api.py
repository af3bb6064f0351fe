import pytest
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken

from tests.accounts.helpers import assert_error
from tests.factories import PASSWORD, UserFactory

TOKEN = "/api/v1/auth/token/"
REFRESH = "/api/v1/auth/token/refresh/"
BLACKLIST = "/api/v1/auth/token/blacklist/"


@pytest.fixture
def user(db):
    return UserFactory(email="grace@example.com")


@pytest.fixture
def pair(api_client, user) -> dict:
    response = api_client.post(TOKEN, {"email": user.email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_token_answers_access_and_refresh_for_right_password(api_client, user):
    response = api_client.post(TOKEN, {"email": "grace@example.com", "password": PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    assert set(response.json()) == {"access", "refresh"}


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"email": "grace@example.com", "password": "wrong password entirely"}, id="wrong-password"),
        pytest.param({"email": "nobody@example.com", "password": PASSWORD}, id="unknown-email"),
    ],
)
def test_token_refuses_wrong_credentials(api_client, user, credentials):
    response = api_client.post(TOKEN, credentials, format="json")

    assert_error(response, 401, "authentication_failed")


def test_token_refuses_inactive_user(api_client, user):
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = api_client.post(TOKEN, {"email": user.email, "password": PASSWORD}, format="json")

    assert_error(response, 401, "authentication_failed")


@pytest.mark.parametrize("body", [{}, {"email": "grace@example.com"}, {"password": PASSWORD}])
def test_token_refuses_missing_fields(api_client, user, body):
    error = assert_error(api_client.post(TOKEN, body, format="json"), 400, "invalid_request")

    assert set(error["details"]) == {"email", "password"} - set(body)


def test_refresh_rotates_and_refuses_the_old_refresh_token(api_client, pair):
    rotated = api_client.post(REFRESH, {"refresh": pair["refresh"]}, format="json")

    assert rotated.status_code == 200, rotated.content
    assert set(rotated.json()) == {"access", "refresh"}
    assert rotated.json()["refresh"] != pair["refresh"]
    assert_error(api_client.post(REFRESH, {"refresh": pair["refresh"]}, format="json"), 401, "authentication_failed")
    again = api_client.post(REFRESH, {"refresh": rotated.json()["refresh"]}, format="json")
    assert again.status_code == 200, again.content


def test_refreshed_access_token_authenticates(api_client, pair):
    access = api_client.post(REFRESH, {"refresh": pair["refresh"]}, format="json").json()["access"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")

    response = api_client.get("/api/v1/me/")

    assert response.status_code == 200, response.content
    assert response.json()["email"] == "grace@example.com"


def test_blacklisted_refresh_token_is_refused(api_client, pair):
    response = api_client.post(BLACKLIST, {"refresh": pair["refresh"]}, format="json")

    assert response.status_code == 200, response.content
    assert BlacklistedToken.objects.count() == 1
    assert_error(api_client.post(REFRESH, {"refresh": pair["refresh"]}, format="json"), 401, "authentication_failed")


@pytest.mark.parametrize("url", [REFRESH, BLACKLIST])
@pytest.mark.parametrize("refresh", ["not-a-jwt", "a.b.c"])
def test_garbage_refresh_token_is_refused_with_readable_message(api_client, url, refresh):
    error = assert_error(api_client.post(url, {"refresh": refresh}, format="json"), 401, "authentication_failed")

    assert error["message"] == "Token is invalid"


def test_access_token_is_not_accepted_as_refresh_token(api_client, pair):
    assert_error(api_client.post(REFRESH, {"refresh": pair["access"]}, format="json"), 401, "authentication_failed")


def test_refresh_token_is_not_accepted_as_access_token(api_client, pair):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {pair['refresh']}")

    error = assert_error(api_client.get("/api/v1/me/"), 401, "authentication_failed")

    assert error["message"] == "Given token not valid for any token type"
