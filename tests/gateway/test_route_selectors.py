"""What the gateway's request path reads: `route_get` and `route_list_for_key`, from the per-process
cache (`gateway_routes`), changed for every process by any write of a route, an upstream or a service."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet

from gateway import selectors, services
from gateway.models import ModelRoute, RouteUpstream, Upstream
from metering.models import Service
from tests.gateway.config_helpers import PLAIN_KEY, route_add, staff_admin_client, staff_groups, upstream_add


@pytest.fixture
def routes(catalogue):
    upstream_add("openai", timeout_seconds=20, connect_timeout_seconds=2, idle_timeout_seconds=9, max_concurrency=7)
    upstream_add("azure", api_key="az-key")
    upstream_add("sandbox", api_key="", sandbox=True)
    route_add("gpt-4o", "gpt", ("openai", "gpt-4o-2024-08-06"), ("azure", "gpt4o"), ("sandbox", "fake"), default_max_tokens=512)
    route_add("dall-e-3", "dalle", "openai", on_disconnect="cancel")


def test_route_get_answers_the_route_with_its_upstreams_in_order(routes):
    route = selectors.route_get(model="gpt-4o")

    assert route is not None
    assert (route.model, route.service_slug, route.calc_method, route.on_disconnect, route.default_max_tokens) == (
        "gpt-4o",
        "gpt",
        "TOKENS",
        "drain",
        512,
    )
    assert [(u.name, u.upstream_model, u.api_key, u.sandbox) for u in route.upstreams] == [
        ("openai", "gpt-4o-2024-08-06", PLAIN_KEY, False),
        ("azure", "gpt4o", "az-key", False),
        ("sandbox", "fake", "", True),
    ]
    openai = route.upstreams[0]
    assert (openai.base_url, openai.connect_timeout, openai.timeout, openai.idle_timeout, openai.max_concurrency) == (
        "https://openai.example.com/v1",
        2.0,
        20.0,
        9.0,
        7,
    )


def test_the_plain_key_never_shows_in_a_repr(routes, caplog):
    route = selectors.route_get(model="gpt-4o")
    with caplog.at_level(logging.INFO):
        logging.getLogger("tests").info("route %s / %r", route, route)

    assert PLAIN_KEY not in repr(route) and PLAIN_KEY not in str(route.upstreams[0])
    assert "az-key" not in repr(route) and PLAIN_KEY not in caplog.text
    assert "openai" in repr(route)  # the rest is still there to read


@pytest.mark.parametrize("model", ["gpt-5", "", "GPT-4O", None, 42])
def test_an_unknown_model_answers_none(routes, model):
    assert selectors.route_get(model=model) is None


def test_inactive_routes_retired_services_and_inactive_upstreams_are_left_out(routes):
    ModelRoute.objects.filter(model="dall-e-3").update(active=False)
    Upstream.objects.filter(name="azure").update(active=False)
    selectors.GATEWAY_ROUTES.clear_local()

    assert selectors.route_get(model="dall-e-3") is None
    assert [u.name for u in selectors.route_get(model="gpt-4o").upstreams] == ["openai", "sandbox"]

    Service.objects.filter(slug="gpt").update(active=False)
    selectors.GATEWAY_ROUTES.clear_local()
    assert selectors.route_get(model="gpt-4o") is None


def test_a_route_whose_upstreams_are_all_inactive_is_still_answered_with_none_to_try(routes):
    Upstream.objects.update(active=False)
    selectors.GATEWAY_ROUTES.clear_local()

    route = selectors.route_get(model="dall-e-3")

    assert route is not None and route.upstreams == ()  # the gateway answers 503, not 404


def test_the_list_for_a_key_is_every_route_or_the_allowed_ones_by_name(routes):
    assert [r.model for r in selectors.route_list_for_key(allowed_models=[])] == ["dall-e-3", "gpt-4o"]
    assert [r.model for r in selectors.route_list_for_key(allowed_models=["gpt-4o", "gone"])] == ["gpt-4o"]


def test_a_warm_lookup_costs_no_query_and_an_unknown_name_none_either(routes, django_assert_num_queries):
    selectors.route_get(model="gpt-4o")

    with django_assert_num_queries(0):
        assert selectors.route_get(model="gpt-4o") is not None
        assert selectors.route_get(model="nope") is None
        assert len(selectors.route_list_for_key(allowed_models=[])) == 2


def _service_renamed(slug: str, new_slug: str) -> None:
    service = Service.objects.get(slug=slug)
    service.slug = new_slug
    service.save()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda: services.model_route_update(route=ModelRoute.objects.get(model="gpt-4o"), active=False), id="route-off"
        ),
        pytest.param(
            lambda: services.upstream_update(upstream=Upstream.objects.get(name="openai"), active=False), id="upstream-off"
        ),
        pytest.param(
            lambda: services.upstream_key_set(upstream=Upstream.objects.get(name="openai"), api_key="sk-rotated"), id="key-set"
        ),
        pytest.param(
            lambda: services.model_route_update(
                route=ModelRoute.objects.get(model="gpt-4o"),
                upstreams=[services.RouteUpstreamSpec(upstream="azure", upstream_model="gpt4o")],
            ),
            id="upstreams-replaced",
        ),
        pytest.param(lambda: _service_renamed("gpt", "gpt-v2"), id="service-renamed"),
        pytest.param(lambda: RouteUpstream.objects.filter(upstream__name="sandbox").delete(), id="link-deleted"),
        pytest.param(lambda: route_add("gpt-4o-mini", "gpt", "azure"), id="route-added"),
    ],
)
def test_every_write_reaches_the_next_lookup(routes, change):
    before = (selectors.route_get(model="gpt-4o"), selectors.route_get(model="gpt-4o-mini"))

    change()

    after = (selectors.route_get(model="gpt-4o"), selectors.route_get(model="gpt-4o-mini"))
    assert after != before


def test_a_change_in_the_back_office_reaches_the_next_lookup(routes):
    staff_groups()
    client, _ = staff_admin_client("Billing admins")
    upstream = Upstream.objects.get(name="openai")
    assert selectors.route_get(model="gpt-4o").upstreams[0].timeout == 20.0

    response = client.post(
        f"/admin/gateway/upstream/{upstream.pk}/change/",
        {
            "name": "openai",
            "base_url": "https://openai.example.com/v1",
            "api_key": "",
            "connect_timeout_seconds": "2",
            "timeout_seconds": "45",
            "idle_timeout_seconds": "9",
            "max_concurrency": "7",
            "active": "on",
        },
    )

    assert response.status_code == 302, response.content[:2000]
    first = selectors.route_get(model="gpt-4o").upstreams[0]
    assert (first.timeout, first.api_key) == (45.0, PLAIN_KEY)


def test_an_upstream_whose_key_cannot_be_decrypted_is_left_out_and_logged_without_it(routes, settings, caplog):
    foreign_token = Fernet(Fernet.generate_key()).encrypt(b"sk-from-elsewhere").decode()
    Upstream.objects.filter(name="openai").update(api_key_encrypted=foreign_token)  # as if its encryption key were dropped
    selectors.GATEWAY_ROUTES.clear_local()

    with caplog.at_level(logging.ERROR, logger="gateway.selectors"):
        route = selectors.route_get(model="gpt-4o")

    assert [u.name for u in route.upstreams] == ["azure", "sandbox"]
    assert "openai" in caplog.text and "cannot be decrypted" in caplog.text
    assert foreign_token not in caplog.text and "az-key" not in caplog.text
