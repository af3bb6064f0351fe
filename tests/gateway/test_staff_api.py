"""Staff API for the gateway's configuration: admin/upstreams/ and admin/models/. Upstream keys are
encrypted at rest and never leave in any answer; every refusal changes nothing; writes are audited."""

from __future__ import annotations

import json
import logging

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry

from gateway.crypto import upstream_key_decrypt
from gateway.models import ModelRoute, RouteUpstream, Upstream
from tests.accounts.helpers import assert_error
from tests.conftest import jwt_client
from tests.factories import UserFactory
from tests.gateway.config_helpers import MODELS, PLAIN_KEY, UPSTREAMS, route_add, staff_api_client, staff_groups, upstream_add


@pytest.fixture(autouse=True)
def _groups(db):
    staff_groups()


@pytest.fixture
def billing():
    client, user = staff_api_client("Billing admins")
    client.user = user
    return client


@pytest.fixture
def support():
    return staff_api_client("Support")[0]


def _upstream_body(**changes):
    return {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": PLAIN_KEY, **changes}


def _no_key_in(response) -> None:
    text = response.content.decode()
    assert PLAIN_KEY not in text and PLAIN_KEY[-8:] not in text and "api_key_encrypted" not in text
    assert '"api_key"' not in text


# --- Who may ------------------------------------------------------------------------------------------


@pytest.fixture
def outsiders(api_client, owner_client, live_client):
    return {
        "anonymous": (api_client, 401, "not_authenticated"),
        "customer": (owner_client, 403, "permission_denied"),
        "api key": (live_client, 403, "permission_denied"),
        "staff without rights": (jwt_client(UserFactory(is_staff=True)), 403, "permission_denied"),
    }


WRITES = [
    ("post", UPSTREAMS, _upstream_body()),
    ("patch", f"{UPSTREAMS}openai/", {"active": False}),
    ("post", MODELS, {"model": "m", "service": "gpt", "upstreams": [{"upstream": "openai", "upstream_model": "m"}]}),
    ("patch", f"{MODELS}gpt-4o/", {"active": False}),
]
READS = [UPSTREAMS, f"{UPSTREAMS}openai/", MODELS, f"{MODELS}gpt-4o/"]


@pytest.mark.parametrize("who", ["anonymous", "customer", "api key", "staff without rights"])
def test_outsiders_can_neither_read_nor_change_the_configuration(catalogue, outsiders, who):
    upstream_add("openai")
    route_add("gpt-4o", "gpt", "openai")
    client, status, code = outsiders[who]
    for url in READS:
        assert_error(client.get(url), status, code)
    for method, url, body in WRITES:
        assert_error(getattr(client, method)(url, body, format="json"), status, code)
    assert list(Upstream.objects.values_list("name", "active")) == [("openai", True)]
    assert list(ModelRoute.objects.values_list("model", "active")) == [("gpt-4o", True)]


def test_support_reads_but_cannot_change(catalogue, support):
    upstream_add("openai")
    route_add("gpt-4o", "gpt", "openai")
    for url in READS:
        assert support.get(url).status_code == 200, url
    for method, url, body in WRITES:
        assert_error(getattr(support, method)(url, body, format="json"), 403, "permission_denied")
    assert Upstream.objects.get().active and ModelRoute.objects.get().active


# --- Upstreams -----------------------------------------------------------------------------------------


def test_billing_staff_add_an_upstream_whose_key_is_stored_encrypted_and_never_shown(billing):
    response = billing.post(UPSTREAMS, _upstream_body(timeout_seconds=20, max_concurrency=8, sandbox=False), format="json")

    assert response.status_code == 201, response.content
    _no_key_in(response)
    body = response.json()
    assert body["api_key_set"] is True
    assert (body["name"], body["base_url"], body["timeout_seconds"], body["max_concurrency"]) == (
        "openai",
        "https://api.openai.com/v1",
        20.0,
        8,
    )
    assert (body["connect_timeout_seconds"], body["idle_timeout_seconds"], body["active"]) == (5.0, 30.0, True)
    stored = Upstream.objects.get(name="openai")
    assert stored.api_key_encrypted and PLAIN_KEY not in stored.api_key_encrypted
    assert upstream_key_decrypt(stored.api_key_encrypted) == PLAIN_KEY
    entry = LogEntry.objects.get()
    assert (entry.user_id, entry.action_flag, entry.object_repr) == (billing.user.pk, ADDITION, "openai")


def test_reads_never_show_a_key(billing):
    upstream_add("openai")
    upstream_add("local", api_key="")
    listing = billing.get(UPSTREAMS)
    one = billing.get(f"{UPSTREAMS}openai/")

    for response in (listing, one):
        assert response.status_code == 200, response.content
        _no_key_in(response)
    assert [(row["name"], row["api_key_set"]) for row in listing.json()] == [("local", False), ("openai", True)]
    assert one.json()["api_key_set"] is True
    assert_error(billing.get(f"{UPSTREAMS}nope/"), 404, "not_found")


def test_a_trailing_slash_of_the_base_url_is_dropped(billing):
    response = billing.post(UPSTREAMS, _upstream_body(base_url=" http://vllm:8000/v1/ "), format="json")

    assert response.status_code == 201, response.content
    assert Upstream.objects.get().base_url == "http://vllm:8000/v1"  # a host name without a dot is fine


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"base_url": "ftp://files.example.com/v1"}, "base_url", id="ftp"),
        pytest.param({"base_url": "javascript:alert(1)"}, "base_url", id="javascript"),
        pytest.param({"base_url": "api.openai.com/v1"}, "base_url", id="no-scheme"),
        pytest.param({"base_url": "https:///v1"}, "base_url", id="no-host"),
        pytest.param({"base_url": "https://user:pw@api.example.com/v1"}, "base_url", id="credentials"),
        pytest.param({"base_url": "https://api.example.com/v1?key=1"}, "base_url", id="query"),
        pytest.param({"base_url": "https://api.example.com:99999/v1"}, "base_url", id="bad-port"),
        pytest.param({"base_url": "https://api.exa mple.com/v1"}, "base_url", id="space"),
        pytest.param({"base_url": ""}, "base_url", id="empty-url"),
        pytest.param({"name": "not a slug"}, "name", id="name-not-slug"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"api_key": "sk with spaces"}, "api_key", id="key-with-space"),
        pytest.param({"api_key": "sk-\r\nX-Injected: 1"}, "api_key", id="key-header-injection"),
        pytest.param({"api_key": 12345}, "api_key", id="key-not-a-string"),
        pytest.param({"timeout_seconds": 0}, "timeout_seconds", id="timeout-zero"),
        pytest.param({"timeout_seconds": 601}, "timeout_seconds", id="timeout-too-long"),
        pytest.param({"connect_timeout_seconds": "soon"}, "connect_timeout_seconds", id="timeout-not-a-number"),
        pytest.param({"idle_timeout_seconds": -1}, "idle_timeout_seconds", id="idle-negative"),
        pytest.param({"max_concurrency": 0}, "max_concurrency", id="concurrency-zero"),
        pytest.param({"max_concurrency": 1.5}, "max_concurrency", id="concurrency-fraction"),
        pytest.param({"region": "eu"}, "region", id="unknown-field"),
    ],
)
def test_a_bad_upstream_is_refused_and_nothing_is_written(billing, changes, field):
    body = _upstream_body(**changes)

    error = assert_error(billing.post(UPSTREAMS, body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert not Upstream.objects.exists() and not LogEntry.objects.exists()
    if isinstance(body["api_key"], str) and body["api_key"].strip():
        assert body["api_key"].strip() not in json.dumps(error)


def test_the_key_is_required_when_adding(billing):
    body = _upstream_body()
    del body["api_key"]

    error = assert_error(billing.post(UPSTREAMS, body, format="json"), 400, "invalid_request")

    assert "api_key" in error["details"]
    assert not Upstream.objects.exists()


def test_an_empty_key_adds_an_upstream_that_takes_none(billing):
    response = billing.post(UPSTREAMS, _upstream_body(api_key=""), format="json")

    assert response.status_code == 201, response.content
    assert response.json()["api_key_set"] is False
    assert Upstream.objects.get().api_key_encrypted == ""


def test_a_taken_name_is_refused(billing):
    upstream_add("openai")

    error = assert_error(billing.post(UPSTREAMS, _upstream_body(), format="json"), 400, "invalid_request")

    assert "name" in error["details"]
    assert Upstream.objects.count() == 1


def test_a_nan_number_is_refused(billing):
    raw = '{"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": "k", "timeout_seconds": NaN}'

    response = billing.generic("POST", UPSTREAMS, raw, content_type="application/json")

    assert response.status_code == 400, response.content
    assert not Upstream.objects.exists()


def test_patch_changes_only_the_fields_sent_and_keeps_the_key(billing):
    upstream = upstream_add("openai", timeout_seconds=20)
    ciphertext = upstream.api_key_encrypted

    response = billing.patch(f"{UPSTREAMS}openai/", {"max_concurrency": 3, "active": False}, format="json")

    assert response.status_code == 200, response.content
    _no_key_in(response)
    upstream.refresh_from_db()
    assert (upstream.max_concurrency, upstream.active, upstream.timeout_seconds) == (3, False, 20.0)
    assert upstream.base_url == "https://openai.example.com/v1"
    assert upstream.api_key_encrypted == ciphertext
    entry = LogEntry.objects.get()
    assert entry.action_flag == CHANGE and entry.get_change_message() == "Changed Max concurrency and Active."


def test_patch_replaces_or_removes_the_key(billing):
    upstream = upstream_add("openai")

    replaced = billing.patch(f"{UPSTREAMS}openai/", {"api_key": "sk-new-key-42"}, format="json")
    upstream.refresh_from_db()
    new_key = upstream_key_decrypt(upstream.api_key_encrypted)
    removed = billing.patch(f"{UPSTREAMS}openai/", {"api_key": ""}, format="json")
    upstream.refresh_from_db()

    assert replaced.status_code == 200 and "sk-new-key-42" not in replaced.content.decode()
    assert new_key == "sk-new-key-42"
    assert removed.status_code == 200 and removed.json()["api_key_set"] is False
    assert upstream.api_key_encrypted == ""
    messages = [entry.get_change_message() for entry in LogEntry.objects.order_by("pk")]
    assert messages == ["Changed API key.", "Changed API key."]
    assert all("sk-new-key-42" not in entry.change_message for entry in LogEntry.objects.all())


@pytest.mark.parametrize(
    "body",
    [
        {"base_url": "ftp://x.example.com"},
        {"timeout_seconds": 0},
        {"name": "taken"},
        {"name": "Not A Slug"},
        {"api_key": "bad key"},
        {"active": "perhaps"},
        {"nickname": "x"},
    ],
)
def test_a_refused_patch_changes_nothing(billing, body):
    upstream_add("taken")
    upstream = upstream_add("openai")
    before = Upstream.objects.filter(pk=upstream.pk).values().get()

    assert_error(billing.patch(f"{UPSTREAMS}openai/", body, format="json"), 400, "invalid_request")

    assert Upstream.objects.filter(pk=upstream.pk).values().get() == before
    assert not LogEntry.objects.exists()


def test_patch_of_an_unknown_upstream_is_404(billing):
    assert_error(billing.patch(f"{UPSTREAMS}nope/", {"active": False}, format="json"), 404, "not_found")


def test_an_upstream_can_be_renamed_and_its_routes_follow(billing, catalogue):
    upstream_add("openai")
    route_add("gpt-4o", "gpt", "openai")

    response = billing.patch(f"{UPSTREAMS}openai/", {"name": "openai-eu"}, format="json")

    assert response.status_code == 200, response.content
    assert billing.get(f"{MODELS}gpt-4o/").json()["upstreams"] == [{"upstream": "openai-eu", "upstream_model": "gpt-4o"}]


# --- Model routes --------------------------------------------------------------------------------------


def _route_body(**changes):
    return {
        "model": "gpt-4o",
        "service": "gpt",
        "upstreams": [
            {"upstream": "openai", "upstream_model": "gpt-4o-2024-08-06"},
            {"upstream": "azure", "upstream_model": "gpt4o"},
        ],
        **changes,
    }


@pytest.fixture
def two_upstreams(catalogue):
    return upstream_add("openai"), upstream_add("azure")


def test_billing_staff_add_a_route_with_its_upstreams_in_order(billing, two_upstreams):
    response = billing.post(MODELS, _route_body(on_disconnect="cancel", default_max_tokens=1024), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("model", "service", "calc_method", "on_disconnect", "default_max_tokens", "active")} == {
        "model": "gpt-4o",
        "service": "gpt",
        "calc_method": "TOKENS",
        "on_disconnect": "cancel",
        "default_max_tokens": 1024,
        "active": True,
    }
    assert body["upstreams"] == _route_body()["upstreams"]
    links = RouteUpstream.objects.order_by("position").values_list("upstream__name", "upstream_model", "position")
    assert list(links) == [("openai", "gpt-4o-2024-08-06", 0), ("azure", "gpt4o", 1)]
    entry = LogEntry.objects.get()
    assert (entry.action_flag, entry.object_repr) == (ADDITION, "gpt-4o")


def test_a_route_defaults_to_drain_and_the_models_default_maximum(billing, two_upstreams):
    body = billing.post(MODELS, _route_body(), format="json").json()

    assert (body["on_disconnect"], body["default_max_tokens"], body["active"]) == ("drain", 4096, True)


@pytest.mark.parametrize("service", ["dalle", "ping"])
def test_an_image_route_may_use_an_image_or_request_service(billing, two_upstreams, service):
    response = billing.post(MODELS, _route_body(model="dall-e-3", service=service), format="json")

    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"service": "nope"}, "service", id="unknown-service"),
        pytest.param({"service": "translate"}, "service", id="characters-service"),
        pytest.param({"service": "summarize"}, "service", id="words-service"),
        pytest.param({"upstreams": []}, "upstreams", id="no-upstream"),
        pytest.param({"upstreams": [{"upstream": "ghost", "upstream_model": "m"}]}, "upstreams", id="unknown-upstream"),
        pytest.param(
            {"upstreams": [{"upstream": "openai", "upstream_model": "a"}, {"upstream": "openai", "upstream_model": "b"}]},
            "upstreams",
            id="upstream-twice",
        ),
        pytest.param({"upstreams": [{"upstream": "openai", "upstream_model": ""}]}, "upstreams", id="blank-upstream-model"),
        pytest.param({"upstreams": [{"upstream": "openai", "upstream_model": "a b"}]}, "upstreams", id="spaced-upstream-model"),
        pytest.param({"upstreams": [{"upstream": "openai"}]}, "upstreams", id="missing-upstream-model"),
        pytest.param(
            {"upstreams": [{"upstream": "openai", "upstream_model": "m", "weight": 2}]}, "upstreams", id="unknown-item-field"
        ),
        pytest.param({"upstreams": ["openai"]}, "upstreams", id="item-not-an-object"),
        pytest.param({"upstreams": "openai"}, "upstreams", id="not-a-list"),
        pytest.param({"model": ""}, "model", id="blank-model"),
        pytest.param({"model": "gpt 4o"}, "model", id="spaced-model"),
        pytest.param({"model": "m" * 121}, "model", id="long-model"),
        pytest.param({"on_disconnect": "shrug"}, "on_disconnect", id="unknown-policy"),
        pytest.param({"default_max_tokens": 0}, "default_max_tokens", id="max-tokens-zero"),
        pytest.param({"default_max_tokens": 1_000_001}, "default_max_tokens", id="max-tokens-too-many"),
        pytest.param({"priority": 1}, "priority", id="unknown-field"),
    ],
)
def test_a_bad_route_is_refused_and_nothing_is_written(billing, two_upstreams, changes, field):
    error = assert_error(billing.post(MODELS, _route_body(**changes), format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert not ModelRoute.objects.exists() and not RouteUpstream.objects.exists()
    assert not LogEntry.objects.exists()


def test_a_model_already_routed_is_refused(billing, two_upstreams):
    route_add("gpt-4o", "gpt", "openai")

    error = assert_error(billing.post(MODELS, _route_body(), format="json"), 400, "invalid_request")

    assert "model" in error["details"]
    assert ModelRoute.objects.count() == 1 and RouteUpstream.objects.count() == 1


def test_routes_are_listed_and_read_by_model_name_even_with_a_slash(billing, two_upstreams):
    route_add("meta-llama/Llama-3-70b", "gpt", ("azure", "llama-3-70b"), ("openai", "llama"))
    route_add("gpt-4o", "gpt", "openai", active=False)

    listing = billing.get(MODELS)
    one = billing.get(f"{MODELS}meta-llama/Llama-3-70b/")

    assert [(row["model"], row["active"]) for row in listing.json()] == [("gpt-4o", False), ("meta-llama/Llama-3-70b", True)]
    assert one.status_code == 200, one.content
    assert one.json()["upstreams"] == [
        {"upstream": "azure", "upstream_model": "llama-3-70b"},
        {"upstream": "openai", "upstream_model": "llama"},
    ]
    assert_error(billing.get(f"{MODELS}gpt-5/"), 404, "not_found")


def test_patch_replaces_the_upstream_list_in_its_new_order(billing, two_upstreams):
    route_add("gpt-4o", "gpt", "openai", "azure")

    response = billing.patch(
        f"{MODELS}gpt-4o/",
        {"upstreams": [{"upstream": "azure", "upstream_model": "gpt4o-eu"}, {"upstream": "openai", "upstream_model": "gpt-4o"}]},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert [u["upstream"] for u in response.json()["upstreams"]] == ["azure", "openai"]
    links = RouteUpstream.objects.order_by("position").values_list("upstream__name", "upstream_model", "position")
    assert list(links) == [("azure", "gpt4o-eu", 0), ("openai", "gpt-4o", 1)]
    assert LogEntry.objects.get().get_change_message() == "Changed Upstreams."


def test_patch_of_other_fields_keeps_the_upstreams(billing, two_upstreams):
    route_add("gpt-4o", "gpt", "openai", "azure")

    response = billing.patch(f"{MODELS}gpt-4o/", {"service": "ping", "on_disconnect": "cancel", "active": False}, format="json")

    assert response.status_code == 200, response.content
    route = ModelRoute.objects.get()
    assert (route.service.slug, route.on_disconnect, route.active) == ("ping", "cancel", False)
    assert [u["upstream"] for u in response.json()["upstreams"]] == ["openai", "azure"]
    assert RouteUpstream.objects.count() == 2


@pytest.mark.parametrize(
    "body",
    [
        {"service": "translate"},
        {"service": "nope"},
        {"upstreams": []},
        {"upstreams": [{"upstream": "ghost", "upstream_model": "m"}]},
        {"model": "taken"},
        {"default_max_tokens": 0},
    ],
)
def test_a_refused_route_patch_changes_nothing(billing, two_upstreams, body):
    route_add("taken", "gpt", "openai")
    route_add("gpt-4o", "gpt", "openai", "azure")
    before = list(RouteUpstream.objects.order_by("pk").values())
    route_before = ModelRoute.objects.filter(model="gpt-4o").values().get()

    assert_error(billing.patch(f"{MODELS}gpt-4o/", body, format="json"), 400, "invalid_request")

    assert list(RouteUpstream.objects.order_by("pk").values()) == before
    assert ModelRoute.objects.filter(model="gpt-4o").values().get() == route_before
    assert not LogEntry.objects.exists()


def test_patch_of_an_unknown_route_is_404(billing):
    assert_error(billing.patch(f"{MODELS}gpt-5/", {"active": False}, format="json"), 404, "not_found")


def test_the_key_never_reaches_the_logs(billing, caplog):
    with caplog.at_level(logging.DEBUG):
        billing.post(UPSTREAMS, _upstream_body(), format="json")
        billing.post(UPSTREAMS, _upstream_body(base_url="ftp://nope"), format="json")  # a refusal is logged as a warning
        billing.patch(f"{UPSTREAMS}openai/", {"api_key": PLAIN_KEY + "2", "timeout_seconds": -1}, format="json")

    assert caplog.records and PLAIN_KEY not in caplog.text
