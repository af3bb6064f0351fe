"""Every page: renders for the roles that may see it, refuses the others, asks strangers to sign in."""

import pytest
from django.test import Client

from accounts.models import Organization
from tests.dashboard.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

EVERYONE = [
    "/dashboard/",
    "/dashboard/usage/",
    "/dashboard/pricing/",
    "/dashboard/team/",
    "/dashboard/settings/",
    "/dashboard/settings/password/",
    "/dashboard/usage/export.csv",
]
MANAGERS = ["/dashboard/keys/", "/dashboard/billing/"]


@pytest.mark.parametrize("url", EVERYONE + MANAGERS)
def test_owners_and_admins_see_every_page(owner_web, admin_web, funded, url):
    assert owner_web.get(url).status_code == 200
    assert admin_web.get(url).status_code == 200


@pytest.mark.parametrize("url", EVERYONE)
def test_members_see_the_shared_pages(member_web, url):
    assert member_web.get(url).status_code == 200


@pytest.mark.parametrize("url", MANAGERS)
def test_members_are_refused_the_managers_pages(member_web, url):
    response = member_web.get(url)
    assert response.status_code == 403 and "Owners and admins only" in response.content.decode()


@pytest.mark.parametrize("url", EVERYONE + MANAGERS + ["/dashboard/payments/1/", "/welcome/"])
def test_strangers_are_sent_to_sign_in(url):
    response = Client().get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize(
    "url", ["/dashboard/payments/999999/", "/dashboard/keys/999999/revoke/", "/dashboard/team/999999/remove/"]
)
def test_unknown_objects_answer_the_dashboards_404(owner_web, url):
    response = owner_web.get(url)
    assert response.status_code == 404 and "There is nothing here" in response.content.decode()


def test_a_person_in_no_organization_can_start_one():
    client = client_for(UserFactory())
    assert client.get("/dashboard/")["Location"] == "/welcome/"
    assert client.post("/welcome/", {"organization": "Fresh Start"})["Location"] == "/dashboard/"
    assert Organization.objects.filter(name="Fresh Start").exists()
    assert client.get("/dashboard/").status_code == 200
    assert client.get("/welcome/")["Location"] == "/dashboard/"


def test_navigation_marks_the_current_page(owner_web):
    html = owner_web.get("/dashboard/usage/").content.decode()
    assert 'href="/dashboard/usage/" aria-current="page"' in html
