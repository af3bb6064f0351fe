from accounts.models import Role
from tests.accounts.helpers import assert_error
from tests.conftest import key_client
from tests.factories import UserFactory, organization_create

URL = "/api/v1/me/"


def test_me_describes_the_user_and_every_membership_with_its_role(client_for, owner, organization):
    other = organization_create(name="Zeta Labs")
    other.memberships.create(user=owner, role=Role.MEMBER)
    organization_create(name="Not Mine")

    response = client_for(owner).get(URL)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "id": owner.pk,
        "email": owner.email,
        "name": "",
        "memberships": [
            {"organization": "acme", "name": "Acme", "role": "owner"},
            {"organization": "zeta-labs", "name": "Zeta Labs", "role": "member"},
        ],
    }


def test_me_needs_no_organization_header_with_several_memberships(client_for, owner, organization):
    organization_create(name="Second").memberships.create(user=owner, role=Role.ADMIN)

    response = client_for(owner).get(URL)

    assert response.status_code == 200, response.content
    assert len(response.json()["memberships"]) == 2


def test_me_lists_no_memberships_for_a_user_without_organization(client_for, db):
    response = client_for(UserFactory()).get(URL)

    assert response.status_code == 200, response.content
    assert response.json()["memberships"] == []


def test_me_without_credentials_is_refused(api_client):
    response = api_client.get(URL)

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_me_with_an_api_key_is_refused_because_it_describes_a_person(live_key):
    assert_error(key_client(live_key.secret).get(URL), 400, "invalid_request")


def test_me_costs_two_queries(client_for, owner, organization, django_assert_num_queries):
    client = client_for(owner)

    with django_assert_num_queries(2):  # the token's user, the memberships
        assert client.get(URL).status_code == 200
