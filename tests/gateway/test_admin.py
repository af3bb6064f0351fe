"""The gateway's back office: upstreams with a write-only API key, model routes with their upstreams
in order, the staff API's checks, and the staff groups' rights."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry

from gateway.crypto import upstream_key_decrypt
from gateway.models import ModelRoute, RouteUpstream, Upstream
from tests.gateway.config_helpers import PLAIN_KEY, route_add, staff_admin_client, staff_groups, upstream_add

UPSTREAM_ADD = "/admin/gateway/upstream/add/"
ROUTE_ADD = "/admin/gateway/modelroute/add/"


@pytest.fixture(autouse=True)
def _groups(db):
    staff_groups()


@pytest.fixture
def billing():
    return staff_admin_client("Billing admins")


def _upstream_form(**changes) -> dict[str, str]:
    return {
        "name": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key": PLAIN_KEY,
        "connect_timeout_seconds": "5",
        "timeout_seconds": "60",
        "idle_timeout_seconds": "30",
        "max_concurrency": "100",
        "active": "on",
        **changes,
    }


def _route_form(*links: tuple[int, str], **changes) -> dict[str, str]:
    form = {
        "model": "gpt-4o",
        "on_disconnect": "drain",
        "default_max_tokens": "4096",
        "active": "on",
        "upstreams-TOTAL_FORMS": str(len(links)),
        "upstreams-INITIAL_FORMS": "0",
        "upstreams-MIN_NUM_FORMS": "1",
        "upstreams-MAX_NUM_FORMS": "1000",
        **changes,
    }
    for index, (upstream_id, upstream_model) in enumerate(links):
        form.update(
            {
                f"upstreams-{index}-position": str(index),
                f"upstreams-{index}-upstream": str(upstream_id),
                f"upstreams-{index}-upstream_model": upstream_model,
            }
        )
    return form


def test_billing_staff_add_an_upstream_and_its_key_is_stored_encrypted(billing):
    client, user = billing

    response = client.post(UPSTREAM_ADD, _upstream_form())

    assert response.status_code == 302, response.content[:3000]
    upstream = Upstream.objects.get()
    assert PLAIN_KEY not in upstream.api_key_encrypted
    assert upstream_key_decrypt(upstream.api_key_encrypted) == PLAIN_KEY
    assert LogEntry.objects.get().user == user


def test_the_change_page_never_shows_the_key(billing):
    client, _ = billing
    upstream = upstream_add("openai")

    page = client.get(f"/admin/gateway/upstream/{upstream.pk}/change/").content.decode()
    listing = client.get("/admin/gateway/upstream/").content.decode()

    for html in (page, listing):
        assert PLAIN_KEY not in html and upstream.api_key_encrypted not in html and PLAIN_KEY[-6:] not in html
    assert 'type="password"' in page and 'autocomplete="new-password"' in page
    assert "Leave empty to keep the current key" in page


def test_saving_with_the_key_left_empty_keeps_it_and_a_new_one_replaces_it(billing):
    client, _ = billing
    upstream = upstream_add("openai")
    url = f"/admin/gateway/upstream/{upstream.pk}/change/"
    ciphertext = upstream.api_key_encrypted

    same = {"base_url": upstream.base_url, "timeout_seconds": "20"}

    kept = client.post(url, _upstream_form(api_key="", **same))
    upstream.refresh_from_db()
    assert kept.status_code == 302 and upstream.api_key_encrypted == ciphertext and upstream.timeout_seconds == 20

    replaced = client.post(url, _upstream_form(api_key="sk-second", **same))
    upstream.refresh_from_db()
    assert replaced.status_code == 302 and upstream_key_decrypt(upstream.api_key_encrypted) == "sk-second"
    history = [entry.get_change_message() for entry in LogEntry.objects.order_by("pk")]
    assert history == ["Changed Timeout seconds.", "Changed API key."]
    assert all("sk-second" not in entry.change_message for entry in LogEntry.objects.all())

    removed = client.post(url, _upstream_form(api_key="", remove_api_key="on", **same))
    upstream.refresh_from_db()
    assert removed.status_code == 302 and upstream.api_key_encrypted == ""


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"base_url": "ftp://files.example.com/v1"}, "Only http:// and https://"),
        ({"base_url": "https://me:pw@api.example.com/v1"}, "No credentials in the URL"),
        ({"api_key": "sk with space"}, "printable ASCII"),
        ({"timeout_seconds": "0"}, "greater than or equal to 0.1"),
    ],
)
def test_the_form_applies_the_staff_apis_checks(billing, changes, error):
    client, _ = billing

    response = client.post(UPSTREAM_ADD, _upstream_form(**changes))

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Upstream.objects.exists()
    assert "sk-new" not in response.content.decode() and "sk with space" not in response.content.decode()


def test_a_new_key_and_its_removal_at_once_are_refused(billing):
    client, _ = billing
    upstream = upstream_add("openai")

    response = client.post(
        f"/admin/gateway/upstream/{upstream.pk}/change/",
        _upstream_form(base_url=upstream.base_url, api_key="sk-new", remove_api_key="on"),
    )

    assert response.status_code == 200 and "not both" in response.content.decode()
    upstream.refresh_from_db()
    assert upstream_key_decrypt(upstream.api_key_encrypted) == PLAIN_KEY


def test_the_add_page_offers_no_stored_key_to_remove(billing):
    client, _ = billing

    page = client.get(UPSTREAM_ADD).content.decode()

    assert 'name="api_key"' in page and 'name="remove_api_key"' not in page


def test_billing_staff_add_a_route_with_its_upstreams_in_order(billing, catalogue):
    client, _ = billing
    openai, azure = upstream_add("openai"), upstream_add("azure")

    response = client.post(
        ROUTE_ADD, _route_form((openai.pk, "gpt-4o-2024-08-06"), (azure.pk, "gpt4o"), service=str(catalogue["gpt"].pk))
    )

    assert response.status_code == 302, response.content[:3000]
    route = ModelRoute.objects.get()
    links = route.upstreams.order_by("position").values_list("upstream__name", "upstream_model")
    assert list(links) == [("openai", "gpt-4o-2024-08-06"), ("azure", "gpt4o")]
    listing = client.get("/admin/gateway/modelroute/").content.decode()
    assert "openai (gpt-4o-2024-08-06) → azure (gpt4o)" in listing


@pytest.mark.parametrize(
    ("service", "links", "error"),
    [
        ("translate", "one", "cannot price gateway calls"),
        ("gpt", "none", "Please submit at least 1 form"),
        ("gpt", "twice", "Please correct the duplicate data for upstream"),
    ],
)
def test_a_route_the_staff_api_would_refuse_is_refused(billing, catalogue, service, links, error):
    client, _ = billing
    openai = upstream_add("openai")
    rows = {"one": [(openai.pk, "m")], "none": [], "twice": [(openai.pk, "a"), (openai.pk, "b")]}[links]

    response = client.post(ROUTE_ADD, _route_form(*rows, service=str(catalogue[service].pk)))

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not ModelRoute.objects.exists() and not RouteUpstream.objects.exists()


def test_support_may_look_but_not_change(catalogue):
    client, _ = staff_admin_client("Support")
    upstream = upstream_add("openai")
    route = route_add("gpt-4o", "gpt", "openai")

    for url in ("/admin/gateway/upstream/", f"/admin/gateway/upstream/{upstream.pk}/change/", "/admin/gateway/modelroute/"):
        assert client.get(url).status_code == 200, url
    page = client.get(f"/admin/gateway/upstream/{upstream.pk}/change/").content.decode()
    assert PLAIN_KEY not in page and 'type="password"' not in page  # read-only: no key box at all
    assert client.get(UPSTREAM_ADD).status_code == 403
    assert client.get(ROUTE_ADD).status_code == 403
    client.post(f"/admin/gateway/modelroute/{route.pk}/change/", _route_form((upstream.pk, "x"), model="renamed"))
    assert ModelRoute.objects.get().model == "gpt-4o"


def test_an_upstream_in_use_is_not_deleted(billing, catalogue):
    client, _ = billing
    upstream = upstream_add("openai")
    route_add("gpt-4o", "gpt", "openai")

    page = client.get(f"/admin/gateway/upstream/{upstream.pk}/delete/").content.decode()
    client.post(f"/admin/gateway/upstream/{upstream.pk}/delete/", {"post": "yes"})

    assert "gpt-4o" in page and Upstream.objects.exists()
