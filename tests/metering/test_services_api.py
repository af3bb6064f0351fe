"""GET services/ — active services with the prices in force for the caller (docs/contract.md §3)."""

from datetime import timedelta

from django.utils import timezone

from tests.factories import ServiceFactory, price_add

SERVICES = "/api/v1/services/"


def listed(client) -> dict[str, dict]:
    response = client.get(SERVICES)
    assert response.status_code == 200, response.content
    return {service["slug"]: service for service in response.json()}


def test_services_lists_active_services_with_prices_named_per_method(catalogue, live_client):
    ServiceFactory(slug="unpriced")

    services = listed(live_client)

    assert set(services) == {"gpt", "translate", "summarize", "dalle", "ping", "unpriced"}  # not "retired"
    assert services["gpt"] == {
        "slug": "gpt",
        "name": "Gpt",
        "calc_method": "TOKENS",
        "model": "per_unit",
        "prices": {"input_price": "0.150000000000", "output_price": "0.600000000000"},
        "tiers": None,
        "package_size": None,
        "included": None,
    }
    assert services["translate"]["prices"] == {"unit_price": "0.020000000000"}
    assert services["dalle"]["prices"] == {"unit_price": "0.010000000000"}
    assert services["unpriced"]["prices"] is None
    assert services["unpriced"]["model"] is None


def test_services_show_the_organizations_override(catalogue, organization, live_client, other_client):
    price_add(service=catalogue["ping"], organization=organization, unit_price="0.0005")
    price_add(
        service=catalogue["gpt"],
        organization=organization,
        input_price="0.1",
        output_price="0.4",
        effective_from=timezone.now() - timedelta(days=1),
    )
    price_add(service=catalogue["gpt"], input_price="0.2", output_price="0.8")  # newer general price: override still wins

    mine, theirs = listed(live_client), listed(other_client)

    assert mine["ping"]["prices"] == {"unit_price": "0.000500000000"}
    assert mine["gpt"]["prices"] == {"input_price": "0.100000000000", "output_price": "0.400000000000"}
    assert theirs["ping"]["prices"] == {"unit_price": "0.001000000000"}
    assert theirs["gpt"]["prices"] == {"input_price": "0.200000000000", "output_price": "0.800000000000"}


def test_services_do_not_show_future_prices(catalogue, organization, owner_client):
    soon = timezone.now() + timedelta(hours=1)
    price_add(service=catalogue["ping"], unit_price="9", effective_from=soon)
    price_add(service=catalogue["dalle"], organization=organization, unit_price="9", effective_from=soon)

    services = listed(owner_client)

    assert services["ping"]["prices"] == {"unit_price": "0.001000000000"}
    assert services["dalle"]["prices"] == {"unit_price": "0.010000000000"}


def test_services_require_authentication(api_client):
    assert api_client.get(SERVICES).status_code == 401
