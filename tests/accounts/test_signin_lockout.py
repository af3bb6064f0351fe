"""One sign-in lockout for the API token, the dashboard and the back office, per (account, client
address); the client address is the one our trusted proxies saw, never what the client claims."""

import pytest
from django.test import Client, RequestFactory

from billing_site import throttle
from tests.accounts.helpers import assert_error
from tests.factories import PASSWORD, UserFactory

TOKEN = "/api/v1/auth/token/"
ATTACKER, VICTIM, PROXY = "203.0.113.66", "198.51.100.7", "10.0.0.2"


@pytest.fixture
def user(db):
    return UserFactory(email="grace@example.com")


def token(api_client, email: str, password: str, **headers):
    return api_client.post(TOKEN, {"email": email, "password": password}, format="json", **headers)


def dashboard_login(email: str, password: str, url: str = "/login/", **headers):
    return Client().post(url, {"username": email, "password": password}, **headers)


def test_token_is_refused_with_429_after_repeated_failures_from_one_address(api_client, user, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert_error(token(api_client, user.email, "wrong", REMOTE_ADDR=ATTACKER), 401, "authentication_failed")

    refused = token(api_client, user.email, PASSWORD, REMOTE_ADDR=ATTACKER)  # even the right password

    error = assert_error(refused, 429, "throttled")
    assert "sign-in" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS + 1
    assert "access" not in refused.json()


def test_token_lockout_spares_the_account_from_another_address(api_client, user, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        token(api_client, user.email, "wrong", REMOTE_ADDR=ATTACKER)

    assert token(api_client, user.email, PASSWORD, REMOTE_ADDR=VICTIM).status_code == 200
    assert dashboard_login(user.email, PASSWORD, REMOTE_ADDR=VICTIM).status_code == 302


def test_token_success_clears_the_failures(api_client, user, settings):
    for _ in range(2):
        for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
            token(api_client, user.email, "wrong", REMOTE_ADDR=ATTACKER)
        assert token(api_client, user.email, PASSWORD, REMOTE_ADDR=ATTACKER).status_code == 200


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_failures_anywhere_count_against_one_lockout(api_client, settings, url):
    staff = UserFactory(is_staff=True)
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        if n % 2:
            token(api_client, staff.email.upper(), "wrong", REMOTE_ADDR=ATTACKER)
        else:
            dashboard_login(staff.email, "wrong", url, REMOTE_ADDR=ATTACKER)

    assert_error(token(api_client, staff.email, PASSWORD, REMOTE_ADDR=ATTACKER), 429, "throttled")
    assert b"Too many failed attempts" in dashboard_login(staff.email, PASSWORD, url, REMOTE_ADDR=ATTACKER).content


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_behind_a_trusted_proxy_one_client_cannot_lock_out_another(api_client, settings, url):
    settings.TRUSTED_PROXY_COUNT = 1
    staff = UserFactory(is_staff=True)
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        # Whatever the attacker puts in X-Forwarded-For, the proxy appends the address it saw.
        forwarded = f"192.0.2.{n}, {ATTACKER}"
        dashboard_login(staff.email, "wrong", url, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded)

    attacker = dashboard_login(staff.email, PASSWORD, url, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.99, {ATTACKER}")
    assert b"Too many failed attempts" in attacker.content
    assert dashboard_login(staff.email, PASSWORD, url, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=VICTIM).status_code == 302
    assert token(api_client, staff.email, PASSWORD, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=VICTIM).status_code == 200


def test_forwarded_for_is_ignored_without_trusted_proxies(api_client, user, settings):
    assert settings.TRUSTED_PROXY_COUNT == 0
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        token(api_client, user.email, "wrong", REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")

    assert_error(token(api_client, user.email, PASSWORD, REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=VICTIM), 429)


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        pytest.param(0, "192.0.2.1", PROXY, id="no-proxy-ignores-the-header"),
        pytest.param(1, None, PROXY, id="no-header"),
        pytest.param(1, "192.0.2.1", "192.0.2.1", id="one-proxy"),
        pytest.param(1, "6.6.6.6, 1.2.3.4 ,192.0.2.1", "192.0.2.1", id="one-proxy-spoofed-left-entries"),
        pytest.param(2, "6.6.6.6, 192.0.2.1, 10.9.9.9", "192.0.2.1", id="two-proxies"),
        pytest.param(2, "192.0.2.1", PROXY, id="header-shorter-than-the-proxy-chain"),
        pytest.param(1, "2001:db8::1", "2001:db8::1", id="ipv6"),
        pytest.param(1, "not-an-address", PROXY, id="garbage"),
        pytest.param(1, "", PROXY, id="empty"),
    ],
)
def test_client_ip_reads_the_address_the_outermost_trusted_proxy_saw(settings, proxies, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    request = RequestFactory().get("/", REMOTE_ADDR=PROXY, **headers)

    assert throttle.client_ip(request) == expected


def test_anonymous_api_limit_is_per_client_behind_the_proxy(api_client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.THROTTLE_ANONYMOUS_PER_MINUTE = 2
    body = {"email": "x@example.com", "password": "nope"}
    for _ in range(2):
        api_client.post(TOKEN, body, format="json", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER)
    assert api_client.post(TOKEN, body, format="json", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER).status_code == 429

    assert api_client.post(TOKEN, body, format="json", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=VICTIM).status_code == 401


def test_signup_limit_is_per_client_behind_the_proxy(db, settings, monkeypatch):
    settings.TRUSTED_PROXY_COUNT = 1
    monkeypatch.setattr("dashboard.forms.SIGNUPS_PER_IP_PER_HOUR", 1)

    def signup(email: str, client_address: str):
        data = {"email": email, "password": "a long passphrase", "organization": "Org"}
        return Client().post("/signup/", data, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=client_address)

    assert signup("one@example.com", ATTACKER).status_code == 302
    assert b"Too many sign-ups" in signup("two@example.com", ATTACKER).content
    assert signup("three@example.com", VICTIM).status_code == 302
