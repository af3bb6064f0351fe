"""Billing details: GET/PUT billing-details/ (owners, admins) and organization_billing_update. A
refusal names each faulty field and changes nothing; another organization is never touched."""

import pytest

from accounts import services
from accounts.models import Organization
from billing_site.errors import InvalidRequest, PermissionRefused
from tests.payments.helpers import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/billing-details/"
GOOD = {"billing_name": "Acme Widgets Ltd", "billing_address": "1 Long Road\nSpringfield", "tax_id": "US-12-3456789"}
EMPTY = {"billing_name": "", "billing_address": "", "tax_id": ""}


def stored(organization: Organization) -> dict[str, str]:
    organization.refresh_from_db()
    return {name: getattr(organization, name) for name in ("billing_name", "billing_address", "tax_id")}


def test_billing_details_start_empty(owner_client):
    response = owner_client.get(URL)
    assert response.status_code == 200, response.content
    assert response.json() == EMPTY


@pytest.mark.parametrize("who", ["owner_client", "org_admin_client"])
def test_owners_and_admins_set_them(request, organization, who):
    client = request.getfixturevalue(who)

    response = client.put(URL, GOOD, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == GOOD
    assert stored(organization) == GOOD
    assert client.get(URL).json() == GOOD


def test_every_field_is_replaced_and_the_address_is_tidied(owner_client, organization):
    owner_client.put(URL, GOOD, format="json")

    body = {
        "billing_name": "  Łódź Spółka z o.o. ",
        "billing_address": "\r\nul. Piotrkowska 1  \r\n\t90-001 Łódź\r\n\r\n",
        "tax_id": "",
    }
    response = owner_client.put(URL, body, format="json")

    assert response.status_code == 200, response.content
    expected = {"billing_name": "Łódź Spółka z o.o.", "billing_address": "ul. Piotrkowska 1\n\t90-001 Łódź", "tax_id": ""}
    assert response.json() == expected
    assert stored(organization) == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "billing_name": "Acme\u202eLtd"}, "billing_name"),  # a bidi override
        ({**GOOD, "billing_name": "Acme\nLtd"}, "billing_name"),  # a name is one line
        ({**GOOD, "billing_name": "Ac\u200bme"}, "billing_name"),  # zero-width space
        ({**GOOD, "billing_name": "x" * 201}, "billing_name"),
        ({**GOOD, "billing_address": "1 Road\u2066\nTown"}, "billing_address"),  # bidi isolate
        ({**GOOD, "billing_address": "1 Road\x1b[31m"}, "billing_address"),  # an escape
        ({**GOOD, "billing_address": "1 Road\u2028Town"}, "billing_address"),  # a line separator
        ({**GOOD, "billing_address": "1 Road\x00"}, "billing_address"),
        ({**GOOD, "billing_address": "x" * 1001}, "billing_address"),
        ({**GOOD, "tax_id": "DE\t123"}, "tax_id"),
        ({**GOOD, "tax_id": "x" * 65}, "tax_id"),
        ({**GOOD, "tax_id": 123}, "tax_id"),
        ({**GOOD, "tax_id": None}, "tax_id"),
        ({"billing_name": "A", "billing_address": ""}, "tax_id"),  # every field is required
        ({**GOOD, "vat": "x"}, "vat"),  # unknown fields are refused
    ],
)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(owner_client, organization, body, field):
    owner_client.put(URL, GOOD, format="json")

    error = assert_error(owner_client.put(URL, body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert stored(organization) == GOOD


def test_several_faulty_fields_are_all_named(owner_client, organization):
    body = {"billing_name": "A\u202e", "billing_address": "B\x07", "tax_id": "C\u200f"}
    error = assert_error(owner_client.put(URL, body, format="json"), 400, "invalid_request")
    assert set(error["details"]) == {"billing_name", "billing_address", "tax_id"}
    assert "U+202E" in error["details"]["billing_name"][0]
    assert stored(organization) == EMPTY


def test_malformed_json_is_refused(owner_client, organization):
    response = owner_client.put(URL, data="{", content_type="application/json")
    assert_error(response, 400, "malformed_json")
    assert stored(organization) == EMPTY


@pytest.mark.parametrize("who", ["member_client", "live_client"])
@pytest.mark.parametrize("method", ["get", "put"])
def test_members_and_api_keys_may_not_read_or_set_them(request, organization, who, method):
    client = request.getfixturevalue(who)
    response = client.get(URL) if method == "get" else client.put(URL, GOOD, format="json")
    assert_error(response, 403, "permission_denied")
    assert stored(organization) == EMPTY


@pytest.mark.parametrize("method", ["get", "put"])
def test_billing_details_require_authentication(api_client, method):
    response = api_client.get(URL) if method == "get" else api_client.put(URL, GOOD, format="json")
    assert_error(response, 401, "not_authenticated")


def test_another_organizations_details_are_neither_shown_nor_changed(owner_client, organization, other_organization):
    services.organization_billing_update(
        organization=other_organization,
        billing_name="Globex Corp",
        billing_address="Cypress Creek",
        tax_id="GX-1",
        actor=other_organization.memberships.get(role="owner").user,
    )

    # naming an organization one does not belong to is 404, for reading and for writing
    assert_error(owner_client.get(URL, HTTP_X_ORGANIZATION=other_organization.slug), 404, "not_found")
    response = owner_client.put(URL, GOOD, format="json", HTTP_X_ORGANIZATION=other_organization.slug)
    assert_error(response, 404, "not_found")
    assert owner_client.get(URL).json() == EMPTY

    owner_client.put(URL, GOOD, format="json")
    assert stored(other_organization) == {"billing_name": "Globex Corp", "billing_address": "Cypress Creek", "tax_id": "GX-1"}


def test_a_person_in_two_organizations_sets_the_one_they_name(owner, organization, other_organization, owner_client):
    other_organization.memberships.create(user=owner, role="admin")

    response = owner_client.put(URL, GOOD, format="json", HTTP_X_ORGANIZATION=other_organization.slug)

    assert response.status_code == 200, response.content
    assert stored(other_organization) == GOOD
    assert stored(organization) == EMPTY


def test_the_service_refuses_members_and_outsiders(organization, member, other_owner):
    for actor in (member, other_owner):
        with pytest.raises(PermissionRefused):
            services.organization_billing_update(organization=organization, actor=actor, **GOOD)
    assert stored(organization) == EMPTY


def test_the_service_writes_only_the_billing_columns(organization, owner):
    stale = Organization.objects.get(pk=organization.pk)
    Organization.objects.filter(pk=organization.pk).update(name="Renamed meanwhile", requests_per_minute=7)

    services.organization_billing_update(organization=stale, actor=owner, **GOOD)

    organization.refresh_from_db()
    assert (organization.name, organization.requests_per_minute) == ("Renamed meanwhile", 7)
    assert stored(organization) == GOOD


def test_the_service_refuses_a_long_address_the_model_would_not_check(organization, owner):
    with pytest.raises(InvalidRequest) as refused:
        services.organization_billing_update(organization=organization, actor=owner, **{**GOOD, "billing_address": "x" * 1001})
    assert "billing_address" in refused.value.details
    assert stored(organization) == EMPTY
