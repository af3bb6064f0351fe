"""Every refusal answers docs/contract.md §3's body, `{"error": {"code", "message", "details"}}`, whatever raised it."""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.accounts.helpers import assert_error
from tests.conftest import key_client


def test_test_database_is_postgresql(db):
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert cursor.fetchone()[0].startswith("PostgreSQL")


@pytest.mark.parametrize(
    ("status", "code", "call"),
    [
        pytest.param(
            400,
            "malformed_json",
            lambda c: c.post("/api/v1/api-keys/", b"{", content_type="application/json"),
            id="400-malformed",
        ),
        pytest.param(
            400, "invalid_request", lambda c: c.post("/api/v1/api-keys/", {"nam": "x"}, format="json"), id="400-invalid"
        ),
        pytest.param(401, "not_authenticated", lambda c: APIClient().get("/api/v1/me/"), id="401-anonymous"),
        pytest.param(
            401, "invalid_api_key", lambda c: APIClient().get("/api/v1/me/", HTTP_X_API_KEY="tg_live_nope"), id="401-key"
        ),
        pytest.param(
            401,
            "authentication_failed",
            lambda c: APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION="Bearer x.y.z"),
            id="401-jwt",
        ),
        pytest.param(404, "not_found", lambda c: c.delete("/api/v1/api-keys/424242/"), id="404-drf"),
        pytest.param(404, "not_found", lambda c: c.get("/api/v1/no-such-endpoint/"), id="404-unknown-url"),
        pytest.param(404, "not_found", lambda c: c.get("/api/v1/api-keys/not-an-id/"), id="404-bad-id"),
        pytest.param(404, "not_found", lambda c: c.get("/api/v1/api-keys/", {"page": 99}), id="404-page"),
        pytest.param(405, "method_not_allowed", lambda c: c.put("/api/v1/api-keys/", {}, format="json"), id="405"),
        pytest.param(405, "method_not_allowed", lambda c: c.get("/api/v1/auth/register/"), id="405-register"),
        pytest.param(
            415,
            "unsupported_media_type",
            lambda c: c.post("/api/v1/api-keys/", "name=x", content_type="application/x-www-form-urlencoded"),
            id="415",
        ),
    ],
)
def test_refusals_answer_the_error_body(owner_client, status, code, call):
    assert_error(call(owner_client), status, code)


def test_forbidden_answers_the_error_body(client_for, member):
    assert_error(client_for(member).get("/api/v1/api-keys/"), 403, "permission_denied")


def test_forbidden_for_a_key_answers_the_error_body(live_key):
    assert_error(key_client(live_key.secret).post("/api/v1/api-keys/", {"name": "x"}, format="json"), 403, "permission_denied")


def test_organization_required_answers_the_error_body(client_for, owner, organization, other_organization):
    other_organization.memberships.create(user=owner)

    assert_error(client_for(owner).get("/api/v1/api-keys/"), 400, "organization_required")


def test_validation_details_name_each_field(owner_client):
    error = assert_error(owner_client.post("/api/v1/api-keys/", {"mode": "x", "spend_cap": "-1"}, format="json"), 400)

    assert set(error["details"]) == {"name", "mode", "spend_cap"}
    assert all(isinstance(messages, list) and messages for messages in error["details"].values())


def test_unauthenticated_refusal_names_the_scheme(api_client):
    response = api_client.get("/api/v1/api-keys/")

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
