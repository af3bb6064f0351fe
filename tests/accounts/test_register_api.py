from decimal import Decimal

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher

from accounts import services
from accounts.models import Membership, Organization, Role, User
from accounts.signals import organization_created
from payments.models import Wallet
from tests.accounts.helpers import assert_error
from tests.concurrency import run_concurrently
from tests.factories import PASSWORD, UserFactory

URL = "/api/v1/auth/register/"
VALID = {"email": "ada@example.com", "password": PASSWORD, "organization": "Analytical Engines"}


def _counts() -> tuple[int, int, int, int]:
    return User.objects.count(), Organization.objects.count(), Membership.objects.count(), Wallet.objects.count()


def test_register_creates_user_owned_organization_and_empty_wallet(api_client):
    response = api_client.post(URL, VALID, format="json")

    assert response.status_code == 201, response.content
    user = User.objects.get(email="ada@example.com")
    organization = Organization.objects.get(memberships__user=user)
    # Only what the client sent: an existing address gets this very answer (no ids, no slug).
    assert response.json() == {"email": "ada@example.com", "organization": {"name": "Analytical Engines"}}
    assert user.check_password(PASSWORD)
    assert organization.slug == "analytical-engines"
    assert Membership.objects.get(user=user).role == Role.OWNER
    assert organization.wallet.balance == Decimal(0)
    assert organization.wallet.held == Decimal(0)


def test_registered_owner_sees_an_empty_wallet(api_client):
    api_client.post(URL, VALID, format="json")
    token = api_client.post("/api/v1/auth/token/", {"email": VALID["email"], "password": PASSWORD}, format="json")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")

    body = api_client.get("/api/v1/balance/").json()

    assert body["organization"] == "analytical-engines"
    assert isinstance(body["balance"], str) and Decimal(body["balance"]) == 0
    assert Decimal(body["available"]) == 0


def test_register_lowercases_email_and_signs_in_with_any_case(api_client):
    response = api_client.post(URL, {**VALID, "email": "Ada@Example.COM"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["email"] == "ada@example.com"
    for typed in ("Ada@Example.COM", "ada@example.com"):
        token = api_client.post("/api/v1/auth/token/", {"email": typed, "password": PASSWORD}, format="json")
        assert token.status_code == 200, (typed, token.content)


def test_register_gives_each_organization_a_unique_slug(api_client):
    first = api_client.post(URL, {**VALID, "email": "one@example.com", "organization": "Same Name"}, format="json")
    second = api_client.post(URL, {**VALID, "email": "two@example.com", "organization": "Same Name"}, format="json")

    assert first.status_code == second.status_code == 201
    assert Organization.objects.get(memberships__user__email="one@example.com").slug == "same-name"
    assert Organization.objects.get(memberships__user__email="two@example.com").slug == "same-name-2"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"password": PASSWORD, "organization": "X"}, "email", id="missing-email"),
        pytest.param({"email": "a@example.com", "organization": "X"}, "password", id="missing-password"),
        pytest.param({"email": "a@example.com", "password": PASSWORD}, "organization", id="missing-organization"),
        pytest.param({**VALID, "email": "not-an-email"}, "email", id="invalid-email"),
        pytest.param({**VALID, "email": 123}, "email", id="email-number"),
        pytest.param({**VALID, "email": ["ada@example.com"]}, "email", id="email-list"),
        pytest.param({**VALID, "email": None}, "email", id="email-null"),
        pytest.param({**VALID, "password": 12345678901234}, "password", id="password-number"),
        pytest.param({**VALID, "password": True}, "password", id="password-bool"),
        pytest.param({**VALID, "organization": 123}, "organization", id="organization-number"),
        pytest.param({**VALID, "organization": {"name": "X"}}, "organization", id="organization-object"),
        pytest.param({**VALID, "organization": "   "}, "organization", id="organization-blank"),
        pytest.param({**VALID, "email": "a" * 250 + "@example.com"}, "email", id="email-too-long"),
        pytest.param({**VALID, "password": "Zq9!" * 33}, "password", id="password-too-long"),
        pytest.param({**VALID, "organization": "x" * 121}, "organization", id="organization-too-long"),
        pytest.param({**VALID, "password": "pass\x00word-long-enough"}, "password", id="password-nul-byte"),
        pytest.param({**VALID, "role": "admin"}, "role", id="unknown-field"),
        pytest.param({**VALID, "is_staff": True}, "is_staff", id="privilege-escalation-field"),
    ],
)
def test_register_refuses_bad_input_and_creates_nothing(api_client, body, field):
    before = _counts()

    response = api_client.post(URL, body, format="json")

    error = assert_error(response, 400, "invalid_request")
    assert field in error["details"], error
    assert isinstance(error["details"][field], list) and error["details"][field]
    assert _counts() == before


@pytest.mark.parametrize(
    ("password", "email"),
    [
        pytest.param("short1!", VALID["email"], id="too-short"),
        pytest.param("password123", VALID["email"], id="too-common"),
        pytest.param("83920174651", VALID["email"], id="entirely-numeric"),
        pytest.param("johnsmith99", "johnsmith@example.com", id="similar-to-email"),
    ],
)
def test_register_refuses_weak_password_and_creates_nothing(api_client, password, email):
    before = _counts()

    response = api_client.post(URL, {**VALID, "email": email, "password": password}, format="json")

    error = assert_error(response, 400, "invalid_request")
    assert error["details"]["password"]
    assert _counts() == before


@pytest.mark.parametrize("email", ["ada@example.com", "ADA@EXAMPLE.COM", "Ada@example.com", "  ada@example.com "])
def test_register_answers_an_existing_email_like_a_new_one_and_emails_its_owner(
    api_client, settings, eager_celery, django_capture_on_commit_callbacks, mailoutbox, email
):
    existing = UserFactory(email="ada@example.com")
    before = _counts()

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(URL, {**VALID, "email": email}, format="json")
        fresh = api_client.post(URL, {**VALID, "email": "babbage@example.com"}, format="json")

    assert response.status_code == fresh.status_code == 201, response.content
    assert response.json() == {"email": "ada@example.com", "organization": {"name": "Analytical Engines"}}
    assert fresh.json() == {"email": "babbage@example.com", "organization": {"name": "Analytical Engines"}}
    assert response.headers.keys() == fresh.headers.keys()
    assert _counts() == tuple(n + 1 for n in before)  # babbage's user, organization, membership, wallet only
    assert existing.memberships.count() == 0
    [notice] = mailoutbox
    assert notice.to == ["ada@example.com"]
    assert "tried to sign up" in notice.subject
    assert f"{settings.SITE_URL}/login/" in notice.body and f"{settings.SITE_URL}/password-reset/" in notice.body


def test_register_of_an_existing_email_runs_the_password_hasher_like_a_new_one(api_client, settings):
    UserFactory(email="ada@example.com")
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    CountingHasher.encoded = 0

    api_client.post(URL, VALID, format="json")
    assert CountingHasher.encoded == 1
    api_client.post(URL, {**VALID, "email": "babbage@example.com"}, format="json")
    assert CountingHasher.encoded == 2


class CountingHasher(MD5PasswordHasher):
    algorithm = "counting_md5"
    encoded = 0

    def encode(self, password, salt):
        type(self).encoded += 1
        return super().encode(password, salt)


def test_register_emails_an_existing_owner_at_most_once_an_hour(
    api_client, eager_celery, django_capture_on_commit_callbacks, mailoutbox
):
    UserFactory(email="ada@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        statuses = [api_client.post(URL, VALID, format="json").status_code for _ in range(3)]

    assert statuses == [201, 201, 201]
    assert len(mailoutbox) == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"email": "ada@example.com",', id="truncated"),
        pytest.param(b"{'email': 'ada@example.com'}", id="single-quotes"),
        pytest.param(b"\xff\xfe\x00garbage", id="invalid-utf8"),
        pytest.param(b"", id="empty"),
    ],
)
def test_register_refuses_malformed_json_and_creates_nothing(api_client, raw):
    before = _counts()

    response = api_client.post(URL, data=raw, content_type="application/json")

    assert_error(response, 400)
    assert _counts() == before


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"ada@example.com"', b"42"])
def test_register_refuses_json_that_is_not_an_object(api_client, raw):
    before = _counts()

    response = api_client.post(URL, data=raw, content_type="application/json")

    error = assert_error(response, 400, "invalid_request")
    assert "non_field_errors" in error["details"]
    assert _counts() == before


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        pytest.param("email=ada%40example.com", "application/x-www-form-urlencoded", id="form"),
        pytest.param("email: ada@example.com", "text/plain", id="text"),
        pytest.param("<email>ada@example.com</email>", "application/xml", id="xml"),
    ],
)
def test_register_refuses_non_json_content_type(api_client, data, content_type):
    before = _counts()

    response = api_client.post(URL, data=data, content_type=content_type)

    assert_error(response, 415, "unsupported_media_type")
    assert _counts() == before


def test_register_refuses_multipart(api_client):
    response = api_client.post(URL, VALID, format="multipart")

    assert_error(response, 415, "unsupported_media_type")
    assert not User.objects.filter(email=VALID["email"]).exists()


def test_register_creates_nothing_when_the_wallet_cannot_open(api_client):
    def refuse(**kwargs):
        raise RuntimeError("wallet store down")

    organization_created.connect(refuse, dispatch_uid="test.refuse")
    try:
        before = _counts()
        response = api_client.post(URL, VALID, format="json")
    finally:
        organization_created.disconnect(dispatch_uid="test.refuse")

    assert_error(response, 500, "internal_error")
    assert _counts() == before


def test_register_ignores_credentials_sent_with_it(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer tg_live_not-a-real-key")

    response = api_client.post(URL, VALID, format="json")

    assert response.status_code == 201, response.content


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_of_one_email_create_one_account(eager_celery, mailoutbox):

    def register(n: int) -> str:
        registration = services.user_register(email="Race@Example.com", password=PASSWORD, organization_name=f"Racer {n}")
        return "created" if registration.user is not None else "duplicate"

    outcomes = run_concurrently(4, register, reraise=True)

    assert sorted(outcomes) == ["created", "duplicate", "duplicate", "duplicate"]
    assert User.objects.filter(email="race@example.com").count() == 1
    assert Organization.objects.count() == Wallet.objects.count() == Membership.objects.count() == 1
    assert [message.to for message in mailoutbox] == [["race@example.com"]]  # one notice, however many tried
