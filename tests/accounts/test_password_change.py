"""A new password ends what the old one opened: every refresh token the user holds (rotated ones
too) and every dashboard session but the one that changed it, whichever path set the password."""

import io
import re

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.management.commands.changepassword import Command as ChangePasswordCommand
from django.core.management import call_command
from django.test import Client

from accounts.models import User
from tests.accounts.helpers import assert_error
from tests.factories import PASSWORD, UserFactory, organization_create

TOKEN = "/api/v1/auth/token/"
REFRESH = "/api/v1/auth/token/refresh/"
NEW_PASSWORD = "a brand new passphrase"


class FastPbkdf2Hasher(PBKDF2PasswordHasher):
    """A preferred hasher the test user's password is not hashed with yet, cheap enough for tests."""

    algorithm = "fast_pbkdf2"
    iterations = 1


@pytest.fixture
def user(db):
    user = UserFactory(email="grace@example.com")
    organization_create(name="Grace Co", owner=user)
    return user


def refresh_tokens(api_client, user) -> list[str]:
    """Two sign-ins (two devices), one of them already rotated once."""
    first = api_client.post(TOKEN, {"email": user.email, "password": PASSWORD}, format="json").json()["refresh"]
    second = api_client.post(TOKEN, {"email": user.email, "password": PASSWORD}, format="json").json()["refresh"]
    rotated = api_client.post(REFRESH, {"refresh": second}, format="json")
    assert rotated.status_code == 200, rotated.content
    return [first, rotated.json()["refresh"]]


def signed_in(user) -> Client:
    client = Client()
    assert client.post("/login/", {"username": user.email, "password": PASSWORD}).status_code == 302
    return client


def dashboard_change(user, **_) -> Client:
    client = signed_in(user)
    data = {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    assert client.post("/dashboard/settings/password/", data)["Location"] == "/dashboard/settings/"
    return client


def reset_by_email(user, *, mailoutbox, **_) -> None:
    client = Client()
    client.post("/password-reset/", {"email": user.email})
    link = re.search(r"http://testserver(/reset/\S+/)", mailoutbox[-1].body).group(1)
    form_url = client.get(link)["Location"]
    data = {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    assert client.post(form_url, data)["Location"] == "/reset/done/"


def _admin_posts(user, data: dict) -> None:
    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    assert staff.post(f"/admin/accounts/user/{user.pk}/password/", data).status_code == 302


def admin_sets_a_password(user, **_) -> None:
    _admin_posts(user, {"usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})


def admin_disables_the_password(user, **_) -> None:
    _admin_posts(user, {"usable_password": "false", "unset-password": "1"})


def manage_py_changepassword(user, *, monkeypatch, **_) -> None:
    monkeypatch.setattr(ChangePasswordCommand, "_get_pass", lambda self, prompt="": NEW_PASSWORD)
    call_command("changepassword", user.email, stdout=io.StringIO())


@pytest.mark.parametrize(
    "change", [dashboard_change, reset_by_email, admin_sets_a_password, admin_disables_the_password, manage_py_changepassword]
)
def test_a_new_password_revokes_every_refresh_token(api_client, user, mailoutbox, monkeypatch, change):
    tokens = refresh_tokens(api_client, user)

    change(user, mailoutbox=mailoutbox, monkeypatch=monkeypatch)

    for refresh in tokens:
        error = assert_error(api_client.post(REFRESH, {"refresh": refresh}, format="json"), 401, "authentication_failed")
        assert error["message"] == "Token is blacklisted"


def test_tokens_from_after_the_change_keep_working(api_client, user):
    dashboard_change(user)

    fresh = api_client.post(TOKEN, {"email": user.email, "password": NEW_PASSWORD}, format="json")
    assert fresh.status_code == 200, fresh.content
    assert api_client.post(REFRESH, {"refresh": fresh.json()["refresh"]}, format="json").status_code == 200


def test_a_dashboard_change_keeps_this_session_and_ends_the_others(user):
    elsewhere = signed_in(user)
    assert elsewhere.get("/dashboard/").status_code == 200

    here = dashboard_change(user)

    assert here.get("/dashboard/").status_code == 200
    assert elsewhere.get("/dashboard/")["Location"] == "/login/?next=/dashboard/"


def test_a_reset_ends_every_session(user, mailoutbox):
    elsewhere = signed_in(user)

    reset_by_email(user, mailoutbox=mailoutbox)

    assert elsewhere.get("/dashboard/")["Location"] == "/login/?next=/dashboard/"


def test_a_sign_in_that_rehashes_the_password_revokes_nothing(api_client, user, settings):
    refresh = refresh_tokens(api_client, user)[0]
    settings.PASSWORD_HASHERS = [f"{__name__}.FastPbkdf2Hasher", *settings.PASSWORD_HASHERS]

    signed_in(user)  # Django re-hashes the password with the newly preferred hasher

    assert User.objects.get(pk=user.pk).password.startswith("fast_pbkdf2$")
    assert api_client.post(REFRESH, {"refresh": refresh}, format="json").status_code == 200
