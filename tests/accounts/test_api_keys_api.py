import base64
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey
from billing_site.errors import InvalidRequest
from tests.accounts.helpers import assert_error
from tests.conftest import key_client

URL = "/api/v1/api-keys/"


def _url(api_key_id: int) -> str:
    return f"{URL}{api_key_id}/"


@pytest.fixture
def manager(request, owner, admin):
    return {"owner": owner, "admin": admin}[request.param]


both_managers = pytest.mark.parametrize("manager", ["owner", "admin"], indirect=True)


@both_managers
@pytest.mark.parametrize(("mode", "prefix"), [("live", "tg_live_"), ("test", "tg_test_")])
def test_manager_creates_key_and_sees_secret_once(client_for, manager, organization, mode, prefix):
    response = client_for(manager).post(URL, {"name": "ci", "mode": mode}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert secret.startswith(prefix)
    random_part = secret.removeprefix(prefix)
    assert len(base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))) >= 32
    api_key = ApiKey.objects.get(pk=body["id"])
    assert api_key.organization == organization
    assert api_key.created_by == manager
    assert api_key.mode == mode
    assert body["prefix"] == api_key.prefix and secret.startswith(api_key.prefix)
    assert api_key.digest == services.api_key_digest(secret)
    assert secret not in {api_key.prefix, api_key.digest, api_key.name}  # only its digest is stored
    assert "digest" not in body


def test_create_defaults_to_live_and_keeps_expiry_and_spend_cap(client_for, owner, organization):
    expires_at = timezone.now() + timedelta(days=30)

    response = client_for(owner).post(
        URL, {"name": "capped", "expires_at": expires_at.isoformat(), "spend_cap": "12.50"}, format="json"
    )

    assert response.status_code == 201, response.content
    api_key = ApiKey.objects.get(pk=response.json()["id"])
    assert api_key.mode == "live"
    assert api_key.expires_at == expires_at
    assert api_key.spend_cap == Decimal("12.50")
    assert response.json()["spend_cap"] == "12.500000000000"


def test_created_secrets_are_all_different(client_for, owner, organization):
    client = client_for(owner)

    secrets = {client.post(URL, {"name": f"k{i}"}, format="json").json()["secret"] for i in range(5)}

    assert len(secrets) == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "name", id="missing-name"),
        pytest.param({"name": ""}, "name", id="blank-name"),
        pytest.param({"name": "x" * 101}, "name", id="name-too-long"),
        pytest.param({"name": 7}, "name", id="name-number"),
        pytest.param({"name": "k", "mode": "prod"}, "mode", id="unknown-mode"),
        pytest.param({"name": "k", "spend_cap": "-1"}, "spend_cap", id="negative-spend-cap"),
        pytest.param({"name": "k", "spend_cap": "lots"}, "spend_cap", id="spend-cap-not-decimal"),
        pytest.param({"name": "k", "expires_at": "tomorrow"}, "expires_at", id="expires-at-not-a-time"),
        pytest.param({"name": "k", "organization": "globex"}, "organization", id="unknown-field"),
    ],
)
def test_create_refuses_bad_input_and_creates_nothing(client_for, owner, organization, body, field):
    response = client_for(owner).post(URL, body, format="json")

    error = assert_error(response, 400, "invalid_request")
    assert field in error["details"]
    assert not ApiKey.objects.exists()


def test_create_refuses_non_json(client_for, owner, organization):
    assert_error(client_for(owner).post(URL, {"name": "k"}, format="multipart"), 415, "unsupported_media_type")
    assert not ApiKey.objects.exists()


@both_managers
def test_list_shows_own_keys_newest_first_and_never_a_secret_or_digest(
    client_for, manager, organization, live_key, test_key, other_key
):
    response = client_for(manager).get(URL)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 2
    assert [row["id"] for row in body["results"]] == [test_key.api_key.pk, live_key.api_key.pk]
    assert set(body["results"][0]) == {
        "id",
        "name",
        "mode",
        "prefix",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "spend_cap",
        "spent",
        "allowed_models",
        "rpm_limit",
        "tpm_limit",
        "max_concurrent_streams",
    }
    text = response.content.decode()
    for created in (live_key, test_key):
        assert created.secret not in text
        assert created.api_key.digest not in text
    assert str(other_key.api_key.prefix) not in text


def test_list_is_paginated(client_for, owner, organization):
    for i in range(3):
        services.api_key_create(organization=organization, name=f"k{i}")

    body = client_for(owner).get(URL, {"page_size": 2}).json()

    assert body["count"] == 3
    assert len(body["results"]) == 2
    assert body["next"] is not None


@both_managers
def test_manager_revokes_key_and_it_stops_working(client_for, manager, live_key):
    response = client_for(manager).delete(_url(live_key.api_key.pk))

    assert response.status_code == 200, response.content
    assert response.json()["revoked_at"] is not None
    live_key.api_key.refresh_from_db()
    assert live_key.api_key.revoked_at is not None
    assert_error(key_client(live_key.secret).get("/api/v1/balance/"), 401, "invalid_api_key")


def test_revoking_twice_keeps_the_first_revocation_time(client_for, owner, live_key):
    client = client_for(owner)
    first = client.delete(_url(live_key.api_key.pk)).json()["revoked_at"]

    second = client.delete(_url(live_key.api_key.pk))

    assert second.status_code == 200
    assert second.json()["revoked_at"] == first


def test_revoking_an_unknown_key_is_not_found(client_for, owner, organization):
    assert_error(client_for(owner).delete(_url(999_999)), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("get", URL, None, id="list"),
        pytest.param("post", URL, {"name": "k"}, id="create"),
        pytest.param("delete", "live-key", None, id="revoke"),
        pytest.param("patch", "live-key", {"rpm_limit": 1}, id="limit"),
    ],
)
def test_member_may_not_manage_keys(client_for, member, live_key, method, path, body):
    path = _url(live_key.api_key.pk) if path == "live-key" else path

    response = getattr(client_for(member), method)(path, body, format="json")

    assert_error(response, 403, "permission_denied")
    assert ApiKey.objects.count() == 1
    live_key.api_key.refresh_from_db()
    assert live_key.api_key.revoked_at is None
    assert live_key.api_key.rpm_limit is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("get", URL, None, id="list"),
        pytest.param("post", URL, {"name": "k"}, id="create"),
        pytest.param("delete", "live-key", None, id="revoke"),
        pytest.param("patch", "live-key", {"rpm_limit": 1}, id="limit"),
    ],
)
def test_api_key_may_not_manage_keys(live_key, test_key, method, path, body):
    path = _url(test_key.api_key.pk) if path == "live-key" else path

    response = getattr(key_client(live_key.secret), method)(path, body, format="json")

    assert_error(response, 403, "permission_denied")
    assert ApiKey.objects.count() == 2
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()
    assert not ApiKey.objects.filter(rpm_limit__isnull=False).exists()


def test_revoking_another_tenants_key_is_not_found_and_leaves_it_working(client_for, owner, organization, other_key):
    response = client_for(owner).delete(_url(other_key.api_key.pk))

    assert_error(response, 404, "not_found")
    other_key.api_key.refresh_from_db()
    assert other_key.api_key.revoked_at is None
    response = key_client(other_key.secret).get("/api/v1/balance/")
    assert response.status_code == 200, response.content
    assert response.json()["organization"] == "globex"


def test_api_keys_refuse_other_methods(client_for, owner, live_key):
    client = client_for(owner)
    for method in ("put", "patch"):
        assert_error(getattr(client, method)(URL, {"name": "x"}, format="json"), 405, "method_not_allowed")
    assert_error(client.put(_url(live_key.api_key.pk), {}, format="json"), 405, "method_not_allowed")


def test_key_expiring_in_the_past_is_refused(owner_client):
    response = owner_client.post("/api/v1/api-keys/", {"name": "dead", "expires_at": "2001-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"expires_at": ["Must be in the future."]}


# --- The AI gateway's limits -----------------------------------------------------------------------------


@pytest.fixture
def routed(catalogue):
    """Two model routes the gateway answers to (one paused), so keys may name them."""
    from tests.gateway.config_helpers import route_add, upstream_add

    upstream_add("openai")
    route_add("gpt-4o-mini", "gpt", "openai")
    route_add("dall-e-3", "dalle", "openai", active=False)


def test_create_keeps_the_gateway_limits_and_shows_them(client_for, owner, organization, routed):
    body = {"name": "chat", "allowed_models": ["gpt-4o-mini", "dall-e-3", "gpt-4o-mini"], "rpm_limit": 600, "tpm_limit": 200_000}

    response = client_for(owner).post(URL, {**body, "max_concurrent_streams": 4}, format="json")

    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["allowed_models"], created["rpm_limit"], created["tpm_limit"], created["max_concurrent_streams"]) == (
        ["gpt-4o-mini", "dall-e-3"],  # once each, in the order given; a paused route may be named
        600,
        200_000,
        4,
    )
    api_key = ApiKey.objects.get(pk=created["id"])
    assert (api_key.allowed_models, api_key.rpm_limit, api_key.tpm_limit, api_key.max_concurrent_streams) == (
        ["gpt-4o-mini", "dall-e-3"],
        600,
        200_000,
        4,
    )
    listed = client_for(owner).get(URL).json()["results"][0]
    assert {k: listed[k] for k in ("allowed_models", "rpm_limit", "tpm_limit", "max_concurrent_streams")} == {
        "allowed_models": ["gpt-4o-mini", "dall-e-3"],
        "rpm_limit": 600,
        "tpm_limit": 200_000,
        "max_concurrent_streams": 4,
    }


def test_a_key_without_limits_may_use_every_model_without_limit(client_for, owner, organization):
    created = client_for(owner).post(URL, {"name": "plain"}, format="json").json()

    assert (created["allowed_models"], created["rpm_limit"], created["tpm_limit"], created["max_concurrent_streams"]) == (
        [],
        None,
        None,
        None,
    )


LIMIT_REFUSALS = [
    pytest.param({"rpm_limit": 0}, "rpm_limit", id="rpm-zero"),
    pytest.param({"rpm_limit": -5}, "rpm_limit", id="rpm-negative"),
    pytest.param({"rpm_limit": 2**31}, "rpm_limit", id="rpm-too-big"),
    pytest.param({"tpm_limit": 1.5}, "tpm_limit", id="tpm-fraction"),
    pytest.param({"tpm_limit": "lots"}, "tpm_limit", id="tpm-text"),
    pytest.param({"max_concurrent_streams": 0}, "max_concurrent_streams", id="streams-zero"),
    pytest.param({"allowed_models": ["gpt-5"]}, "allowed_models", id="unknown-model"),
    pytest.param({"allowed_models": ["gpt-4o-mini", "gpt-5"]}, "allowed_models", id="one-unknown-model"),
    pytest.param({"allowed_models": "gpt-4o-mini"}, "allowed_models", id="models-not-a-list"),
    pytest.param({"allowed_models": [""]}, "allowed_models", id="blank-model"),
    pytest.param({"allowed_models": ["m" * 121]}, "allowed_models", id="long-model"),
    pytest.param({"allowed_models": [{"model": "gpt-4o-mini"}]}, "allowed_models", id="model-not-a-string"),
]


@pytest.mark.parametrize(("limits", "field"), LIMIT_REFUSALS)
def test_create_refuses_bad_limits_and_creates_nothing(client_for, owner, organization, routed, limits, field):
    error = assert_error(client_for(owner).post(URL, {"name": "k", **limits}, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert not ApiKey.objects.exists()


@both_managers
def test_manager_changes_only_the_limits_sent(client_for, manager, live_key, routed):
    services.api_key_limits_update(api_key=live_key.api_key, rpm_limit=100, tpm_limit=5000)

    response = client_for(manager).patch(
        _url(live_key.api_key.pk), {"allowed_models": ["gpt-4o-mini"], "tpm_limit": None}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["allowed_models"], body["rpm_limit"], body["tpm_limit"], body["max_concurrent_streams"]) == (
        ["gpt-4o-mini"],
        100,
        None,
        None,
    )
    live_key.api_key.refresh_from_db()
    assert (live_key.api_key.allowed_models, live_key.api_key.rpm_limit, live_key.api_key.tpm_limit) == (
        ["gpt-4o-mini"],
        100,
        None,
    )
    assert live_key.secret not in response.content.decode()


def test_an_empty_model_list_allows_every_model_again(client_for, owner, live_key, routed):
    services.api_key_limits_update(api_key=live_key.api_key, allowed_models=["gpt-4o-mini"])

    response = client_for(owner).patch(_url(live_key.api_key.pk), {"allowed_models": []}, format="json")

    assert response.status_code == 200, response.content
    live_key.api_key.refresh_from_db()
    assert live_key.api_key.allowed_models == []


@pytest.mark.parametrize(("limits", "field"), [*LIMIT_REFUSALS, pytest.param({"name": "renamed"}, "name", id="not-a-limit")])
def test_a_refused_patch_changes_nothing(client_for, owner, live_key, routed, limits, field):
    services.api_key_limits_update(api_key=live_key.api_key, rpm_limit=100, allowed_models=["dall-e-3"])

    error = assert_error(client_for(owner).patch(_url(live_key.api_key.pk), limits, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    live_key.api_key.refresh_from_db()
    assert (live_key.api_key.name, live_key.api_key.rpm_limit, live_key.api_key.allowed_models) == ("live", 100, ["dall-e-3"])


def test_a_revoked_key_cannot_be_changed(client_for, owner, live_key):
    services.api_key_revoke(api_key=live_key.api_key)

    assert_error(client_for(owner).patch(_url(live_key.api_key.pk), {"rpm_limit": 5}, format="json"), 400, "invalid_request")

    live_key.api_key.refresh_from_db()
    assert live_key.api_key.rpm_limit is None


def test_changing_another_tenants_key_is_not_found(client_for, owner, organization, other_key):
    assert_error(client_for(owner).patch(_url(other_key.api_key.pk), {"rpm_limit": 1}, format="json"), 404, "not_found")

    other_key.api_key.refresh_from_db()
    assert other_key.api_key.rpm_limit is None


def test_a_changed_limit_reaches_the_cached_key_at_the_next_request(client_for, owner, live_key, routed):
    from accounts.selectors import api_key_by_digest

    digest = services.api_key_digest(live_key.secret)
    assert api_key_by_digest(digest=digest).rpm_limit is None  # now cached in this process
    assert key_client(live_key.secret).get("/api/v1/balance/").status_code == 200

    client_for(owner).patch(_url(live_key.api_key.pk), {"rpm_limit": 30, "allowed_models": ["gpt-4o-mini"]}, format="json")

    cached = api_key_by_digest(digest=digest)
    assert (cached.rpm_limit, cached.allowed_models) == (30, ["gpt-4o-mini"])


@pytest.mark.parametrize("models", [[{"model": "gpt-4o-mini"}], "gpt-4o-mini", [None], [""]])
def test_the_service_refuses_malformed_model_lists_itself(organization, routed, models):
    with pytest.raises(InvalidRequest) as refused:
        services.api_key_create(organization=organization, name="k", allowed_models=models)

    assert "allowed_models" in refused.value.details
    assert not ApiKey.objects.exists()
