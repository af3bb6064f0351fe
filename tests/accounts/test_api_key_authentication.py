"""Keys authenticate as `Authorization: Bearer <key>` or `X-API-Key: <key>`. GET balance/ shows who a
key is; GET api-keys/ costs nothing but authentication: a good key is refused for managing (403),
a bad one for itself (401)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey
from tests.accounts.helpers import assert_error

PROBE = "/api/v1/api-keys/"
BALANCE = "/api/v1/balance/"


def _client(secret: str, how: str) -> APIClient:
    client = APIClient()
    if how == "bearer":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    else:
        client.credentials(HTTP_X_API_KEY=secret)
    return client


presented = pytest.mark.parametrize("how", ["bearer", "x-api-key"])


@presented
@pytest.mark.parametrize("mode", ["live", "test"])
def test_key_authenticates_for_its_organization(organization, other_organization, how, mode):
    created = services.api_key_create(organization=organization, name="k", mode=mode)

    response = _client(created.secret, how).get(BALANCE, HTTP_X_ORGANIZATION=other_organization.slug)

    assert response.status_code == 200, response.content
    assert response.json()["organization"] == organization.slug
    created.api_key.refresh_from_db()
    assert created.api_key.last_used_at is not None


@presented
def test_revoked_key_is_refused(live_key, how):
    services.api_key_revoke(api_key=live_key.api_key)

    assert_error(_client(live_key.secret, how).get(BALANCE), 401, "invalid_api_key")


@presented
def test_expired_key_is_refused(organization, how):
    created = services.api_key_create(organization=organization, name="old", expires_at=timezone.now() + timedelta(seconds=60))
    ApiKey.objects.filter(pk=created.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))  # time passes

    assert_error(_client(created.secret, how).get(BALANCE), 401, "invalid_api_key")
    created.api_key.refresh_from_db()
    assert created.api_key.last_used_at is None


@presented
def test_key_before_its_expiry_is_accepted(organization, how):
    created = services.api_key_create(organization=organization, name="new", expires_at=timezone.now() + timedelta(hours=1))

    assert _client(created.secret, how).get(BALANCE).status_code == 200


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("tg_live_" + "A" * 43, id="unknown-live"),
        pytest.param("tg_test_" + "A" * 43, id="unknown-test"),
        pytest.param("tg_live_", id="prefix-only"),
        pytest.param("tg_live_\u00e9\u00e8-not-ascii", id="non-ascii"),
    ],
)
@presented
def test_unknown_key_is_refused(db, secret, how):
    response = _client(secret, how).get(PROBE)

    error = assert_error(response, 401, "invalid_api_key")
    assert secret not in error["message"]


@pytest.mark.parametrize("secret", ["garbage", "sk-1234", "' OR 1=1 --", "x" * 5000])
def test_garbage_in_x_api_key_is_refused(db, secret):
    assert_error(_client(secret, "x-api-key").get(PROBE), 401, "invalid_api_key")


def test_key_with_a_changed_character_is_refused(live_key):
    last = live_key.secret[-1]
    tampered = live_key.secret[:-1] + ("B" if last != "B" else "C")

    assert_error(_client(tampered, "bearer").get(PROBE), 401, "invalid_api_key")


def test_x_api_key_wins_over_a_bearer_jwt(client_for, owner, organization):
    client = client_for(owner)
    client.credentials(HTTP_AUTHORIZATION=client._credentials["HTTP_AUTHORIZATION"], HTTP_X_API_KEY="tg_live_bogus")

    assert_error(client.get(PROBE), 401, "invalid_api_key")


@presented
def test_key_lookup_costs_one_query_then_none_and_writes_last_used_once(live_key, how):
    client = _client(live_key.secret, how)

    with CaptureQueriesContext(connection) as first:
        assert client.get(PROBE).status_code == 403
    with CaptureQueriesContext(connection) as second:
        assert client.get(PROBE).status_code == 403

    first_sql = [q["sql"] for q in first.captured_queries]
    assert len(first_sql) == 2, first_sql  # the lookup, then the first last_used_at
    assert first_sql[0].startswith("SELECT")
    assert first_sql[1].startswith("UPDATE")
    second_sql = [q["sql"] for q in second.captured_queries]
    assert second_sql == []  # the row comes from this process's cache, last_used_at too


def test_last_used_at_is_written_again_once_the_resolution_has_passed(live_key):
    long_ago = timezone.now() - settings.API_KEY_LAST_USED_RESOLUTION - timedelta(seconds=1)
    ApiKey.objects.filter(pk=live_key.api_key.pk).update(last_used_at=long_ago)

    with CaptureQueriesContext(connection) as queries:
        _client(live_key.secret, "bearer").get(PROBE)

    assert sum(q["sql"].startswith("UPDATE") for q in queries.captured_queries) == 1
    live_key.api_key.refresh_from_db()
    assert live_key.api_key.last_used_at > long_ago


def test_last_used_at_is_not_rewritten_within_the_resolution(live_key):
    recent = timezone.now() - settings.API_KEY_LAST_USED_RESOLUTION / 2
    ApiKey.objects.filter(pk=live_key.api_key.pk).update(last_used_at=recent)

    _client(live_key.secret, "bearer").get(PROBE)

    live_key.api_key.refresh_from_db()
    assert live_key.api_key.last_used_at == recent


def test_api_key_touch_skips_the_write_when_recent(live_key, django_assert_num_queries):
    api_key = live_key.api_key
    with django_assert_num_queries(1):
        services.api_key_touch(api_key=api_key)
    with django_assert_num_queries(0):
        services.api_key_touch(api_key=api_key)


def test_bearer_jwt_shaped_garbage_is_a_jwt_error_not_a_key_error(db):
    error = assert_error(_client("not-a-token", "bearer").get(PROBE), 401, "authentication_failed")

    assert error["message"] == "Given token not valid for any token type"
