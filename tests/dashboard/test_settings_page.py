"""Settings (alert threshold and webhook, through a two-field update) and the organization switcher."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from dashboard import services
from dashboard.context import SESSION_KEY
from payments.models import Wallet
from tests.dashboard.conftest import client_for
from tests.factories import organization_create, wallet_fund

pytestmark = pytest.mark.django_db


def test_owner_saves_the_alert_settings(owner_web, organization):
    wallet_fund(organization, "12.5")
    response = owner_web.post(
        "/dashboard/settings/", {"low_balance_threshold": "20.00", "alert_webhook_url": "https://hooks.example.com/t"}
    )
    assert response["Location"] == "/dashboard/settings/"
    wallet = Wallet.objects.get(pk=organization.pk)
    assert wallet.low_balance_threshold == Decimal("20") and wallet.alert_webhook_url == "https://hooks.example.com/t"
    assert wallet.balance == Decimal("12.5")
    assert 'value="20.00"' in owner_web.get("/dashboard/settings/").content.decode()


def test_the_update_writes_those_two_fields_only(organization):
    with CaptureQueriesContext(connection) as queries:
        services.wallet_alerts_update(organization_id=organization.pk, low_balance_threshold=Decimal(3), alert_webhook_url="")
    update = next(q["sql"] for q in queries if q["sql"].startswith("UPDATE"))
    assert '"low_balance_threshold"' in update and '"alert_webhook_url"' in update
    assert '"balance"' not in update and '"held"' not in update


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"low_balance_threshold": "-1"}, "greater than or equal to 0"),
        ({"low_balance_threshold": "abc"}, "Enter a number"),
        ({"low_balance_threshold": "1", "alert_webhook_url": "ftp://example.com/x"}, "Use an https:// URL"),
    ],
)
def test_invalid_settings_change_nothing(owner_web, organization, data, message):
    response = owner_web.post("/dashboard/settings/", data)
    assert response.status_code == 400 and message in response.content.decode()
    assert Wallet.objects.get(pk=organization.pk).low_balance_threshold == 0


@pytest.mark.parametrize(
    "url", ["http://example.com/hook", "https://localhost/hook", "https://10.0.0.5/hook", "https://[::1]/hook"]
)
def test_in_production_the_webhook_must_be_public_https(owner_web, organization, settings, url):
    settings.DEVELOPMENT = False
    response = owner_web.post("/dashboard/settings/", {"low_balance_threshold": "1", "alert_webhook_url": url})
    assert response.status_code == 400
    assert Wallet.objects.get(pk=organization.pk).alert_webhook_url == ""


def test_members_read_but_do_not_change_settings(member_web, organization):
    html = member_web.get("/dashboard/settings/").content.decode()
    assert "Only owners and admins" in html and 'name="low_balance_threshold"' not in html
    assert member_web.post("/dashboard/settings/", {"low_balance_threshold": "99"}).status_code == 403
    assert Wallet.objects.get(pk=organization.pk).low_balance_threshold == 0


@pytest.fixture
def two_organizations(owner, organization):
    second = organization_create(name="Zeta Labs", owner=owner)
    wallet_fund(second, "3")
    return organization, second


def test_the_switcher_remembers_the_chosen_organization(owner, two_organizations):
    first, second = two_organizations
    client = client_for(owner)
    html = client.get("/dashboard/").content.decode()
    assert 'id="org-switch"' in html and client.session[SESSION_KEY] == first.slug  # the first by name
    response = client.post("/dashboard/switch/", {"organization": second.slug, "next": "/dashboard/usage/"})
    assert response["Location"] == "/dashboard/usage/" and client.session[SESSION_KEY] == second.slug
    assert "data-balance>$3.00<" in client.get("/dashboard/").content.decode()


def test_switching_from_an_object_page_goes_to_its_list(owner, two_organizations):
    client = client_for(owner)
    response = client.post("/dashboard/switch/", {"organization": two_organizations[1].slug, "next": "/dashboard/payments/7/"})
    assert response["Location"] == "/dashboard/billing/"
    response = client.post("/dashboard/switch/", {"organization": two_organizations[0].slug, "next": "https://evil.example/"})
    assert response["Location"] == "/dashboard/"


def test_switching_to_a_foreign_organization_answers_404(owner_web, organization, other_organization):
    assert owner_web.post("/dashboard/switch/", {"organization": other_organization.slug}).status_code == 404
    assert owner_web.session[SESSION_KEY] == organization.slug


def test_a_stale_session_choice_falls_back_to_a_membership(owner, two_organizations, other_organization):
    client = client_for(owner)
    session = client.session
    session[SESSION_KEY] = other_organization.slug  # e.g. removed from it since
    session.save()
    assert client.get("/dashboard/").context["current"].organization == two_organizations[0]


def test_pages_follow_the_chosen_organization(owner, two_organizations):
    from payments import services as payment_services

    first, second = two_organizations
    payment, _ = payment_services.payment_recharge_start(organization=first, user=owner, amount=Decimal(5), provider="sandbox")
    client = client_for(owner)
    assert client.get(f"/dashboard/payments/{payment.pk}/").status_code == 200
    client.post("/dashboard/switch/", {"organization": second.slug})
    assert client.get(f"/dashboard/payments/{payment.pk}/").status_code == 404


def test_roles_are_per_organization(member, organization):
    own = organization_create(name="Member's own", owner=member)
    client = client_for(member)
    client.post("/dashboard/switch/", {"organization": organization.slug})
    assert client.get("/dashboard/keys/").status_code == 403
    client.post("/dashboard/switch/", {"organization": own.slug})
    assert client.get("/dashboard/keys/").status_code == 200
    assert own.memberships.get(user=member).role == Role.OWNER
