"""Organization names go into email subjects, alert webhooks and the admin: every path that sets one
refuses control (Cc) and invisible formatting (Cf) characters."""

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.test import Client, RequestFactory

from accounts import services
from accounts.models import Organization, User
from billing_site.errors import InvalidRequest
from tests.accounts.helpers import assert_error
from tests.dashboard.conftest import client_for
from tests.factories import PASSWORD, UserFactory

BAD_NAMES = [
    pytest.param("Acme\nBcc: victim@example.com", id="newline"),
    pytest.param("Acme\rCorp", id="carriage-return"),
    pytest.param("Acme\tCorp", id="tab"),
    pytest.param("Acme\x1b[31mCorp", id="escape"),
    pytest.param("Acme\u202eproC", id="right-to-left-override"),
    pytest.param("Ac\u200bme", id="zero-width-space"),
    pytest.param("Acme\u0085Corp", id="next-line"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_register_api_refuses_the_name_and_creates_nothing(api_client, name):
    body = {"email": "ada@example.com", "password": PASSWORD, "organization": name}

    error = assert_error(api_client.post("/api/v1/auth/register/", body, format="json"), 400, "invalid_request")

    assert list(error["details"]) == ["organization"]
    assert not User.objects.exists() and not Organization.objects.exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_dashboard_signup_refuses_the_name(db, name):
    response = Client().post("/signup/", {"email": "ada@example.com", "password": "a long passphrase", "organization": name})

    assert response.status_code == 200
    assert "formatting characters are not allowed" in response.context["form"].errors["organization"][0]
    assert not User.objects.exists() and not Organization.objects.exists()


def test_starting_an_organization_refuses_the_name(db):
    client = client_for(UserFactory())

    response = client.post("/welcome/", {"organization": "Acme\nCorp"})

    assert response.status_code == 200
    assert "formatting characters are not allowed" in response.context["form"].errors["organization"][0]
    assert not Organization.objects.exists()


def test_the_admin_form_refuses_the_name(organization, staff_user):
    request = RequestFactory().get("/")
    request.user = staff_user
    form_class = admin.site._registry[Organization].get_form(request, obj=organization)

    form = form_class(data={"name": "Acme\u202eproC", "slug": organization.slug}, instance=organization)

    assert not form.is_valid() and "name" in form.errors
    organization.refresh_from_db()
    assert organization.name == "Acme"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_service_and_the_model_refuse_the_name(owner, name):
    with pytest.raises(InvalidRequest) as refused:
        services.organization_create(name=name, owner=owner)
    assert list(refused.value.details) == ["organization"]
    with pytest.raises(ValidationError):
        Organization(name=name, slug="x").full_clean()


@pytest.mark.parametrize("name", ["Société Générale AI", "東京ラボ", "Acme — Research & Co.", "🚀 Rocket Labs"])
def test_ordinary_names_in_any_script_are_welcome(owner, name):
    assert services.organization_create(name=name, owner=owner).name == name
