"""Price models through the staff API (`POST admin/prices/` with model, tiers, package_size, plan) and
as customers read them (`GET services/`: model, tiers, package size, what the plan includes)
(docs/contract.md §3, docs/pricing.md)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.models import Price, PriceModel, SubscriptionStatus
from tests.conftest import jwt_client
from tests.factories import UserFactory
from tests.metering.plan_helpers import PRICES, SERVICES, grant, plan_create, staff_api_client, staff_groups, subscribe, use
from tests.payments.helpers import assert_error


@pytest.fixture(autouse=True)
def _groups(db):
    staff_groups()


@pytest.fixture
def billing():
    return staff_api_client("Billing admins")


def listed(client) -> dict[str, dict]:
    response = client.get(SERVICES)
    assert response.status_code == 200, response.content
    return {service["slug"]: service for service in response.json()}


def test_a_tiered_token_price_is_stored_as_sent_and_shown_to_everyone(catalogue, billing, live_client, other_client):
    tiers = [
        {"up_to": 1_000_000, "input_price": "0.15", "output_price": "0.6", "cached_input_price": "0.075"},
        {"up_to": None, "input_price": "0.1", "output_price": "0.4", "flat_fee": "5"},
    ]

    response = billing.post(PRICES, {"service": "gpt", "model": "tiered", "tiers": tiers}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    shown = [
        {
            "up_to": 1000000,
            "input_price": "0.150000000000",
            "output_price": "0.600000000000",
            "cached_input_price": "0.075000000000",
        },
        {"up_to": None, "input_price": "0.100000000000", "output_price": "0.400000000000", "flat_fee": "5.000000000000"},
    ]
    assert body | {"id": 0, "effective_from": ""} == {
        "id": 0,
        "service": "gpt",
        "organization": None,
        "plan": None,
        "effective_from": "",
        "model": "tiered",
        "prices": {},
        "tiers": shown,
        "package_size": None,
    }
    row = Price.objects.get(pk=body["id"])
    assert (row.model, row.input_price, row.unit_price, row.package_size) == ("tiered", None, None, None)
    assert row.tiers == [
        {"up_to": 1000000, "input_price": "0.15", "output_price": "0.6", "cached_input_price": "0.075"},
        {"up_to": None, "input_price": "0.1", "output_price": "0.4", "flat_fee": "5"},
    ]
    for client in (live_client, other_client):
        gpt = listed(client)["gpt"]
        assert (gpt["model"], gpt["prices"], gpt["tiers"], gpt["package_size"]) == ("tiered", {}, shown, None)


def test_a_volume_price_and_a_package_price(catalogue, billing, live_client):
    volume = billing.post(
        PRICES,
        {
            "service": "translate",
            "model": "volume",
            "tiers": [{"up_to": 1000, "unit_price": "0.02"}, {"up_to": None, "unit_price": "0.01"}],
        },
        format="json",
    )
    package = billing.post(
        PRICES, {"service": "ping", "model": "package", "unit_price": "1.5", "package_size": 1000}, format="json"
    )

    assert volume.status_code == 201, volume.content
    assert package.status_code == 201, package.content
    assert package.json()["prices"] == {"unit_price": "1.500000000000"}
    assert package.json()["package_size"] == 1000
    services = listed(live_client)
    assert services["translate"]["model"] == "volume"
    assert services["translate"]["tiers"] == [
        {"up_to": 1000, "unit_price": "0.020000000000"},
        {"up_to": None, "unit_price": "0.010000000000"},
    ]
    assert services["ping"] | {"included": None} == {
        "slug": "ping",
        "name": "Ping",
        "calc_method": "REQUEST",
        "model": "package",
        "prices": {"unit_price": "1.500000000000"},
        "tiers": None,
        "package_size": 1000,
        "included": None,
    }
    # the per-unit prices keep their shape
    assert services["dalle"]["model"] == "per_unit"
    assert services["dalle"]["prices"] == {"unit_price": "0.010000000000"}


def test_a_plans_price_applies_to_its_active_subscribers_only(
    catalogue, billing, organization, other_organization, live_client, other_client
):
    plan = plan_create("team")
    subscribe(organization, plan)

    response = billing.post(PRICES, {"service": "ping", "plan": "team", "unit_price": "0.0004"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["plan"] == "team"
    assert Price.objects.get(pk=response.json()["id"]).plan_id == plan.pk
    assert listed(live_client)["ping"]["prices"] == {"unit_price": "0.000400000000"}
    assert listed(other_client)["ping"]["prices"] == {"unit_price": "0.001000000000"}


def test_an_unknown_plan_is_404_and_writes_nothing(catalogue, billing):
    before = Price.objects.count()

    assert_error(billing.post(PRICES, {"service": "ping", "plan": "nope", "unit_price": "1"}, format="json"), 404, "not_found")
    assert Price.objects.count() == before


def test_a_price_for_an_organization_and_a_plan_at_once_is_refused(catalogue, billing, organization):
    plan_create("team")
    before = Price.objects.count()

    error = assert_error(
        billing.post(
            PRICES, {"service": "ping", "plan": "team", "organization": organization.slug, "unit_price": "1"}, format="json"
        ),
        400,
        "invalid_request",
    )
    assert "plan" in error["details"]
    assert Price.objects.count() == before


TOKENS_TIER = {"input_price": "0.1", "output_price": "0.2"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {
                "service": "gpt",
                "model": "tiered",
                "tiers": [{"up_to": 10, **TOKENS_TIER}, {"up_to": 10, **TOKENS_TIER}, {"up_to": None, **TOKENS_TIER}],
            },
            "tiers[1]",
            id="up_to not increasing",
        ),
        pytest.param(
            {"service": "gpt", "model": "volume", "tiers": [{"up_to": 10, **TOKENS_TIER}, {"up_to": 20, **TOKENS_TIER}]},
            "tiers[1]",
            id="last up_to not null",
        ),
        pytest.param(
            {"service": "gpt", "model": "tiered", "tiers": [{"up_to": 10, "input_price": "0.1"}, {"up_to": None, **TOKENS_TIER}]},
            "tiers[0]",
            id="missing price field",
        ),
        pytest.param(
            {"service": "translate", "model": "tiered", "tiers": [{"up_to": None, "unit_price": "-0.01"}]},
            "tiers[0]",
            id="negative tier rate",
        ),
        pytest.param({"service": "translate", "unit_price": "-0.01"}, "unit_price", id="negative per-unit rate"),
        pytest.param(
            {"service": "translate", "model": "volume", "tiers": [{"up_to": None, "unit_price": "0.0000000000001"}]},
            "tiers[0]",
            id="too many decimals in a tier",
        ),
        pytest.param({"service": "translate", "unit_price": "0.0000000000001"}, "unit_price", id="too many decimals"),
        pytest.param(
            {
                "service": "translate",
                "model": "package",
                "unit_price": "1",
                "package_size": 1,
                "tiers": [{"up_to": None, "unit_price": "1"}],
            },
            "tiers",
            id="tiers on a package",
        ),
        pytest.param(
            {"service": "gpt", "model": "tiered", "tiers": [{"up_to": None, "unit_price": "0.1", **TOKENS_TIER}]},
            "tiers[0]",
            id="tier field not of the method",
        ),
        pytest.param({"service": "gpt", "unit_price": "0.1", **TOKENS_TIER}, "unit_price", id="per-unit field not of the method"),
        pytest.param(
            {"service": "translate", "model": "tiered", "unit_price": "1", "tiers": [{"up_to": None, "unit_price": "1"}]},
            "unit_price",
            id="rates beside the tiers",
        ),
        pytest.param({"service": "ping", "model": "package", "unit_price": "1"}, "package_size", id="package without size"),
        pytest.param(
            {"service": "ping", "model": "package", "unit_price": "1", "package_size": 0}, "package_size", id="package of 0"
        ),
        pytest.param({"service": "ping", "model": "package", "package_size": 10}, "unit_price", id="package without price"),
        pytest.param({"service": "ping", "unit_price": "1", "package_size": 10}, "package_size", id="size on a per-unit price"),
        pytest.param({"service": "ping", "model": "tiered", "tiers": []}, "tiers", id="no tiers"),
        pytest.param({"service": "ping", "model": "tiered", "tiers": "cheap"}, "tiers", id="tiers not a list"),
        pytest.param({"service": "ping", "model": "tiered"}, "tiers", id="tiered without tiers"),
        pytest.param({"service": "ping", "model": "per_vibe", "unit_price": "1"}, "model", id="unknown model"),
    ],
)
def test_a_price_that_does_not_fit_is_refused_naming_the_field(catalogue, billing, body, field):
    before = Price.objects.count()

    error = assert_error(billing.post(PRICES, body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert Price.objects.count() == before


@pytest.fixture
def refused_clients(owner_client, live_client):
    return {
        "owner": owner_client,
        "api key": live_client,
        "staff without rights": jwt_client(UserFactory(is_staff=True)),
        "support": staff_api_client("Support"),
    }


@pytest.mark.parametrize("who", ["owner", "api key", "staff without rights", "support"])
def test_only_staff_with_catalogue_rights_set_price_models(catalogue, refused_clients, who):
    before = Price.objects.count()
    body = {"service": "translate", "model": "tiered", "tiers": [{"up_to": None, "unit_price": "0"}]}

    assert_error(refused_clients[who].post(PRICES, body, format="json"), 403, "permission_denied")
    assert Price.objects.count() == before


# --- services/: what the plan includes ------------------------------------------------------------------


def test_services_show_what_the_plan_includes_used_and_left(catalogue, organization, live_client):
    plan = plan_create("team", included={catalogue["translate"]: 100_000, catalogue["ping"]: 50})
    subscribe(organization, plan)
    grant(organization, catalogue["translate"], 100_000)
    use(organization, catalogue["translate"], 30_000)
    use(organization, catalogue["translate"], 70_000, test=True)  # test usage never uses the allowance
    grant(organization, catalogue["ping"], 50)
    use(organization, catalogue["ping"], 75)

    services = listed(live_client)

    assert services["translate"]["included"] == {"quantity": 100_000, "used": 30_000, "left": 70_000}
    assert services["ping"]["included"] == {"quantity": 50, "used": 50, "left": 0}
    assert services["gpt"]["included"] is None


def test_a_past_due_plan_shows_nothing_left(catalogue, organization, owner_client):
    plan = plan_create("team", included={catalogue["translate"]: 1000})
    subscribe(organization, plan, status=SubscriptionStatus.PAST_DUE)
    grant(organization, catalogue["translate"], 1000)

    assert listed(owner_client)["translate"]["included"] == {"quantity": 1000, "used": 1000, "left": 0}


def test_included_figures_are_each_organizations_own(catalogue, organization, other_organization, live_client, other_client):
    team = plan_create("team", included={catalogue["translate"]: 1000})
    solo = plan_create("solo", included={catalogue["ping"]: 10})
    subscribe(organization, team)
    subscribe(other_organization, solo)
    grant(organization, catalogue["translate"], 1000)
    use(organization, catalogue["translate"], 400)
    grant(other_organization, catalogue["ping"], 10)
    use(other_organization, catalogue["translate"], 999)  # usage without an allowance: none of it shows

    mine, theirs = listed(live_client), listed(other_client)

    assert mine["translate"]["included"] == {"quantity": 1000, "used": 400, "left": 600}
    assert mine["ping"]["included"] is None
    assert theirs["translate"]["included"] is None
    assert theirs["ping"]["included"] == {"quantity": 10, "used": 0, "left": 10}


def test_amounts_in_tiers_keep_every_digit(catalogue, billing):
    response = billing.post(
        PRICES, {"service": "dalle", "model": "tiered", "tiers": [{"up_to": None, "unit_price": "0.000000000001"}]}, format="json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["tiers"] == [{"up_to": None, "unit_price": "0.000000000001"}]
    assert Decimal(Price.objects.get(pk=response.json()["id"]).tiers[0]["unit_price"]) == Decimal("1E-12")
    assert Price.objects.get(pk=response.json()["id"]).model == PriceModel.TIERED
