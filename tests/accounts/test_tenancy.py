import pytest

from accounts import services
from accounts.models import Role
from accounts.tenancy import tenant_resolve
from billing_site.errors import NotFound, OrganizationRequired
from tests.accounts.helpers import assert_error
from tests.factories import UserFactory, organization_create

URL = "/api/v1/api-keys/"


@pytest.fixture
def two_hats(owner, organization, other_organization):
    """`owner` owns Acme and is an admin of Globex."""
    other_organization.memberships.create(user=owner, role=Role.ADMIN)
    return owner


def _names(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["name"] for row in response.json()["results"]}


def test_several_memberships_without_header_need_an_organization(client_for, two_hats):
    assert_error(client_for(two_hats).get(URL), 400, "organization_required")


@pytest.mark.parametrize(("slug", "expected"), [("acme", {"live"}), ("globex", {"globex"})])
def test_header_scopes_the_request_to_the_named_organization(client_for, two_hats, live_key, other_key, slug, expected):
    response = client_for(two_hats).get(URL, HTTP_X_ORGANIZATION=slug)

    assert _names(response) == expected


@pytest.mark.parametrize("slug", ["acme", "globex"])
def test_header_scopes_balance_to_the_named_organization(client_for, two_hats, slug):
    response = client_for(two_hats).get("/api/v1/balance/", HTTP_X_ORGANIZATION=slug)

    assert response.status_code == 200, response.content
    assert response.json()["organization"] == slug


def test_header_scopes_writes_to_the_named_organization(client_for, two_hats, organization, other_organization):
    response = client_for(two_hats).post(URL, {"name": "for-globex"}, format="json", HTTP_X_ORGANIZATION="globex")

    assert response.status_code == 201, response.content
    assert other_organization.api_keys.filter(name="for-globex").exists()
    assert not organization.api_keys.exists()


@pytest.mark.parametrize("slug", ["initech", "does-not-exist"])
def test_header_naming_an_organization_of_which_one_is_not_a_member_is_not_found(client_for, two_hats, slug):
    organization_create(name="Initech")

    assert_error(client_for(two_hats).get(URL, HTTP_X_ORGANIZATION=slug), 404, "not_found")


def test_single_membership_implies_the_organization(client_for, owner, live_key):
    assert _names(client_for(owner).get(URL)) == {"live"}


def test_single_member_naming_another_organization_is_not_found(client_for, owner, organization, other_organization):
    assert_error(client_for(owner).get(URL, HTTP_X_ORGANIZATION="globex"), 404, "not_found")


def test_role_is_the_one_held_in_the_named_organization(client_for, owner, organization, other_organization):
    other_organization.memberships.create(user=owner, role=Role.MEMBER)
    client = client_for(owner)

    assert client.get(URL, HTTP_X_ORGANIZATION="acme").status_code == 200
    assert_error(client.get(URL, HTTP_X_ORGANIZATION="globex"), 403, "permission_denied")
    assert client.get("/api/v1/balance/", HTTP_X_ORGANIZATION="globex").status_code == 200


def test_user_without_membership_is_not_found(client_for, db):
    assert_error(client_for(UserFactory()).get(URL), 404, "not_found")


def test_list_shows_only_own_organizations_keys(client_for, owner, live_key, other_key):
    assert _names(client_for(owner).get(URL)) == {"live"}


def test_api_key_implies_its_organization_whatever_the_header(live_key, other_organization):
    tenant = tenant_resolve(user=None, api_key=live_key.api_key, organization_slug=other_organization.slug)

    assert tenant.organization == live_key.api_key.organization
    assert tenant.api_key == live_key.api_key
    assert tenant.user is None
    assert not tenant.is_manager


@pytest.mark.parametrize(("mode", "is_test"), [("live", False), ("test", True)])
def test_tenant_of_a_key_knows_its_mode(organization, mode, is_test):
    created = services.api_key_create(organization=organization, name="k", mode=mode)

    assert tenant_resolve(user=None, api_key=created.api_key, organization_slug=None).is_test is is_test


@pytest.mark.parametrize(("role", "is_manager"), [(Role.OWNER, True), (Role.ADMIN, True), (Role.MEMBER, False)])
def test_tenant_of_a_person_carries_the_role(organization, role, is_manager):
    user = UserFactory()
    organization.memberships.create(user=user, role=role)

    tenant = tenant_resolve(user=user, api_key=None, organization_slug=None)

    assert (tenant.organization, tenant.user, tenant.role, tenant.is_manager, tenant.is_test) == (
        organization,
        user,
        role,
        is_manager,
        False,
    )


def test_tenant_resolve_raises_domain_errors(two_hats):
    with pytest.raises(OrganizationRequired):
        tenant_resolve(user=two_hats, api_key=None, organization_slug=None)
    with pytest.raises(NotFound):
        tenant_resolve(user=two_hats, api_key=None, organization_slug="nope")
