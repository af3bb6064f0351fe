"""Sign-up, sign-in with throttling, sign-out, password reset, CSRF, security headers."""

import re

import pytest
from django.test import Client

from accounts.models import Membership, Organization, Role, User
from billing_site import throttle
from dashboard.context import SESSION_KEY
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def login(client: Client, email: str, password: str = PASSWORD, ip: str = "203.0.113.7"):
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip)


SIGNED_UP = "If this address is new, your account is ready"


def test_signup_creates_the_organization_and_asks_to_log_in(client):
    response = client.post("/signup/", {"email": "Ada@Example.com", "password": "a long passphrase", "organization": "Engines"})
    assert response.status_code == 302 and response["Location"] == "/login/"
    user = User.objects.get(email="ada@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER and membership.organization.name == "Engines"
    assert "_auth_user_id" not in client.session  # the same answer an existing address gets: log in
    assert SIGNED_UP in client.get("/login/").content.decode()
    assert login(client, "ada@example.com", "a long passphrase")["Location"] == "/dashboard/"
    assert "Engines" in client.get("/dashboard/").content.decode()
    assert client.session[SESSION_KEY] == membership.organization.slug


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "a@example.com", "password": "password", "organization": "X"}, "too common"),
        ({"email": "a@example.com", "password": "12345678901", "organization": "X"}, "entirely numeric"),
        ({"email": "not-an-email", "password": "a long passphrase", "organization": "X"}, "valid email"),
        ({"email": "a@example.com", "password": "a long passphrase", "organization": ""}, "required"),
    ],
)
def test_signup_refuses_bad_input_and_creates_nothing(client, data, message):
    response = client.post("/signup/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists() and not Organization.objects.exists()


def test_signup_answers_an_existing_email_like_a_new_one_and_emails_its_owner(
    owner, eager_celery, django_capture_on_commit_callbacks, mailoutbox
):
    answers = []
    for email in (owner.email.upper(), "new@example.com"):
        client = Client()
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/signup/", {"email": email, "password": "a long passphrase", "organization": "Dup"})
        page = client.get(response["Location"]).content.decode()
        answers.append((response.status_code, response["Location"], response.cookies.keys(), SIGNED_UP in page))
        assert "_auth_user_id" not in client.session
    assert answers[0] == answers[1] == (302, "/login/", answers[0][2], True)
    assert Organization.objects.filter(name="Dup").count() == 1  # the new address's only
    assert not owner.memberships.filter(organization__name="Dup").exists()
    [notice] = mailoutbox
    assert notice.to == [owner.email] and "tried to sign up" in notice.subject


def test_login_lands_on_the_overview(client, owner, organization):
    response = login(client, owner.email.upper())
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_login_follows_a_safe_next_only(client, owner, organization):
    assert (
        client.post("/login/?next=/dashboard/usage/", {"username": owner.email, "password": PASSWORD})["Location"]
        == "/dashboard/usage/"
    )
    client.logout()
    response = client.post("/login/?next=https://evil.example/", {"username": owner.email, "password": PASSWORD})
    assert response["Location"] == "/dashboard/"


def test_login_is_refused_for_a_while_after_repeated_failures(client, owner, organization, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert "do not match" in login(client, owner.email, "wrong").content.decode()
    # Even the right password is refused now, from this address, for this email.
    response = login(client, owner.email)
    assert response.status_code == 200 and "Too many failed attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another address, or another account from the same address, is not locked out.
    assert login(Client(), owner.email, ip="198.51.100.1").status_code == 302
    other = UserFactory()
    assert login(Client(), other.email).status_code == 302


def test_a_successful_login_clears_the_failures(client, owner, organization, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        login(client, owner.email, "wrong")
    assert login(client, owner.email).status_code == 302
    client.logout()
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        login(client, owner.email, "wrong")
    assert login(client, owner.email).status_code == 302


def test_the_lockout_expires(client, owner, organization, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        login(client, owner.email, "wrong")
    assert throttle.signin_retry_after(email=owner.email, ip="203.0.113.7") > 0
    throttle.failures_clear("login", owner.email, "203.0.113.7")  # what the expiry of the key does
    assert login(client, owner.email).status_code == 302


def test_logout_needs_a_post(owner_web):
    assert owner_web.get("/logout/").status_code == 405
    assert owner_web.post("/logout/")["Location"] == "/login/"
    assert owner_web.get("/dashboard/")["Location"] == "/login/?next=/dashboard/"


def test_password_reset_by_email(client, owner, organization, mailoutbox):
    response = client.post("/password-reset/", {"email": owner.email})
    assert response["Location"] == "/password-reset/sent/"
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [owner.email]
    link = re.search(r"http://testserver(/reset/\S+/)", mailoutbox[0].body).group(1)
    form_url = client.get(link)["Location"]  # Django swaps the token for a session marker
    response = client.post(form_url, {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"})
    assert response["Location"] == "/reset/done/"
    assert login(Client(), owner.email, "a brand new passphrase").status_code == 302


def test_password_reset_is_silent_about_unknown_addresses(client, mailoutbox):
    assert client.post("/password-reset/", {"email": "nobody@example.com"})["Location"] == "/password-reset/sent/"
    assert mailoutbox == []


def test_password_reset_requests_are_rate_limited(client, owner, organization, mailoutbox, monkeypatch):
    monkeypatch.setattr("dashboard.forms.RESETS_PER_IP_PER_HOUR", 2)
    for _ in range(2):
        client.post("/password-reset/", {"email": owner.email})
    assert "Too many reset requests" in client.post("/password-reset/", {"email": owner.email}).content.decode()
    assert len(mailoutbox) == 2


@pytest.mark.parametrize(
    ("url", "data"),
    [
        ("/login/", {"username": "a@example.com", "password": "x"}),
        ("/signup/", {"email": "b@example.com", "password": "a long passphrase", "organization": "Y"}),
        ("/dashboard/keys/", {"name": "k", "mode": "live"}),
        ("/dashboard/settings/", {"low_balance_threshold": "5"}),
        ("/logout/", {}),
    ],
)
def test_every_form_needs_the_csrf_token(owner, organization, url, data):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(url, data).status_code == 403
    assert not Organization.objects.filter(name="Y").exists()
    assert not organization.api_keys.exists()


def test_forms_carry_the_csrf_token(owner_web):
    assert 'name="csrfmiddlewaretoken"' in owner_web.get("/dashboard/keys/").content.decode()


@pytest.mark.parametrize("url", ["/login/", "/dashboard/", "/dashboard/usage/", "/dashboard/keys/"])
def test_pages_allow_only_the_sites_own_assets(owner, organization, url):
    client = Client()
    if url != "/login/":
        client.force_login(owner)
    csp = client.get(url)["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_pages_load_no_asset_from_elsewhere(owner_web):
    html = owner_web.get("/dashboard/").content.decode()
    assert re.findall(r'(?:src|href)="(https?:)?//', html) == []
    assert "/static/dashboard/app.css" in html and "/static/dashboard/app.js" in html


def test_the_dashboard_needs_a_signed_in_person(client):
    assert client.get("/dashboard/usage/")["Location"] == "/login/?next=/dashboard/usage/"
    assert client.get("/")["Location"] == "/login/"
