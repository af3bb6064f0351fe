"""Settings (alert threshold and webhook, through a two-field update) and the organization switcher."""

import importlib
import json
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import connection
from django.forms import modelform_factory
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from dashboard import services
from dashboard.context import SESSION_KEY
from payments.models import AlertDelivery, Wallet
from tests.dashboard.conftest import client_for
from tests.factories import organization_create, wallet_fund

pytestmark = pytest.mark.django_db


def test_owner_saves_the_alert_settings(owner_web, organization, public_dns):
    public_dns["hooks.example.com"] = ["93.184.215.14"]
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


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/hook", "public host"),
        ("https://localhost/hook", "public host"),
        ("https://[::1]/hook", "public host"),
        ("https://[::ffff:127.0.0.1]/hook", "public host"),
        ("https://2130706433/hook", "public host"),
        ("https://10.0.0.5/hook", "public host"),
        ("https://169.254.169.254/latest/meta-data/", "public host"),
        ("https://internal.example/hook", "public host"),
        ("https://user:secret@hooks.example.com/hook", "user name or password"),
        ("https://does-not-resolve.invalid/hook", "resolve"),
    ],
)
def test_a_webhook_into_our_own_network_is_refused_when_saved(owner_web, organization, public_dns, url, message):
    public_dns["hooks.example.com"] = ["93.184.215.14"]
    public_dns["internal.example"] = ["10.1.2.3"]

    response = owner_web.post("/dashboard/settings/", {"low_balance_threshold": "1", "alert_webhook_url": url})

    assert response.status_code == 400 and message in response.content.decode()
    assert Wallet.objects.get(pk=organization.pk).alert_webhook_url == ""


def test_any_model_form_of_the_wallet_applies_the_same_rule(organization, public_dns):
    """The admin edits wallets through model forms: the URL's own validator refuses there too."""
    public_dns["hooks.example.com"] = ["93.184.215.14"]
    form_class = modelform_factory(Wallet, fields=["alert_webhook_url"])
    wallet = Wallet.objects.get(pk=organization.pk)

    assert not form_class({"alert_webhook_url": "http://169.254.169.254/latest/meta-data/"}, instance=wallet).is_valid()
    assert not form_class({"alert_webhook_url": "https://localhost/hook"}, instance=wallet).is_valid()
    assert form_class({"alert_webhook_url": "https://hooks.example.com/hook"}, instance=wallet).is_valid()


# --- The organization's alert signing secret ---------------------------------------------------------------


def test_owners_and_admins_see_the_signing_secret_members_do_not(owner_web, admin_web, member_web, organization):
    secret = Wallet.objects.get(pk=organization.pk).alert_signing_secret
    assert secret.startswith("whsec_") and len(secret) >= 40
    assert secret in owner_web.get("/dashboard/settings/").content.decode()
    assert secret in admin_web.get("/dashboard/settings/").content.decode()
    assert secret not in member_web.get("/dashboard/settings/").content.decode()


def test_an_owner_rotates_the_signing_secret(owner_web, organization):
    old = Wallet.objects.get(pk=organization.pk).alert_signing_secret

    response = owner_web.post("/dashboard/settings/alert-secret/rotate/")

    assert response.status_code == 302 and response["Location"] == "/dashboard/settings/"
    new = Wallet.objects.get(pk=organization.pk).alert_signing_secret
    assert new != old and new.startswith("whsec_")
    page = owner_web.get("/dashboard/settings/").content.decode()
    assert new in page and old not in page


def test_members_cannot_rotate_the_signing_secret(member_web, owner_web, organization):
    old = Wallet.objects.get(pk=organization.pk).alert_signing_secret
    assert member_web.post("/dashboard/settings/alert-secret/rotate/").status_code == 403
    assert owner_web.get("/dashboard/settings/alert-secret/rotate/").status_code == 405
    assert Wallet.objects.get(pk=organization.pk).alert_signing_secret == old


def test_the_rotation_writes_that_column_only(organization):
    with CaptureQueriesContext(connection) as queries:
        services.wallet_alert_secret_rotate(organization_id=organization.pk)
    [update] = [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]
    assert update.startswith('UPDATE "payments_wallet" SET "alert_signing_secret" = ') and '"balance"' not in update


def test_the_migration_gives_every_existing_wallet_its_own_secret(organization, other_organization):
    migration = importlib.import_module("payments.migrations.0004_alert_signing_secret")
    Wallet.objects.update(alert_signing_secret="")

    migration.alert_signing_secrets_fill(apps, None)

    secrets = list(Wallet.objects.values_list("alert_signing_secret", flat=True))
    assert len(secrets) == 2 and len(set(secrets)) == 2 and all(s.startswith("whsec_") for s in secrets)


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
    assert 'data-exact="3">$3.00<' in client.get("/dashboard/").content.decode()


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


# --- Rename, time zone, test alert and delivery log ---------------------------------------------------


def test_owner_renames_the_organization_and_its_slug_stays(owner_web, organization):
    slug = organization.slug
    response = owner_web.post("/dashboard/settings/organization/", {"organization": "Acme Rockets"})
    assert response["Location"] == "/dashboard/settings/"
    organization.refresh_from_db()
    assert (organization.name, organization.slug) == ("Acme Rockets", slug)


@pytest.mark.parametrize("name", ["", "x" * 121, "bad\x00name"])
def test_a_bad_organization_name_says_why_and_changes_nothing(owner_web, organization, name):
    before = organization.name
    response = owner_web.post("/dashboard/settings/organization/", {"organization": name})
    assert response.status_code == 400 and 'class="error"' in response.content.decode()
    organization.refresh_from_db()
    assert organization.name == before


def test_members_cannot_rename_nor_send_test_alerts(member_web, organization):
    before = organization.name
    assert member_web.post("/dashboard/settings/organization/", {"organization": "Mine now"}).status_code == 403
    assert member_web.post("/dashboard/settings/alert-test/").status_code == 403
    organization.refresh_from_db()
    assert organization.name == before
    assert 'data-testid="rename-form"' not in member_web.get("/dashboard/settings/").content.decode()


def test_renaming_touches_only_the_current_organization(owner_web, owner, organization):
    second = organization_create(name="Second", owner=owner)
    owner_web.post("/dashboard/settings/organization/", {"organization": "Renamed"})
    second.refresh_from_db()
    assert second.name == "Second"


def test_each_person_picks_a_time_zone_and_pages_say_it(member_web, member, owner_web, organization):
    response = member_web.post("/dashboard/settings/time-zone/", {"time_zone": "Asia/Tokyo"})
    assert response["Location"] == "/dashboard/settings/"
    member.refresh_from_db()
    assert member.time_zone == "Asia/Tokyo"
    assert "times in Asia/Tokyo" in member_web.get("/dashboard/usage/").content.decode()
    assert "times in UTC" in owner_web.get("/dashboard/usage/").content.decode()  # the owner's own choice is untouched


def test_an_unknown_time_zone_is_refused(member_web, member):
    response = member_web.post("/dashboard/settings/time-zone/", {"time_zone": "Mars/Olympus"})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    member.refresh_from_db()
    assert member.time_zone == "UTC"


def test_send_test_alert_posts_a_signed_test_body_and_logs_it(
    owner_web, organization, other_organization, hook_server, public_dns, settings
):
    from tests.payments.payment_helpers import hmac_signature

    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    public_dns["hooks.example.com"] = ["127.0.0.1"]
    receiver = hook_server()
    url = receiver.url("/t", host="hooks.example.com")
    services.wallet_alerts_update(organization_id=organization.pk, low_balance_threshold=Decimal(0), alert_webhook_url=url)

    response = owner_web.post("/dashboard/settings/alert-test/", follow=True)

    [request] = receiver.requests
    body = json.loads(request.body)
    assert (body["type"], body["organization"]) == ("test", organization.slug)
    header = request.headers["Tollgate-Signature"]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    secret = Wallet.objects.get(pk=organization.pk).alert_signing_secret
    assert header == hmac_signature(request.body, secret=secret, timestamp=timestamp)
    log = response.content.decode()[response.content.decode().index('data-testid="alert-deliveries"') :]
    assert "<code>test</code>" in log and "badge-success" in log and "204" in log
    assert AlertDelivery.objects.get().organization_id == organization.pk
    # Another organization's log stays empty.
    other = client_for(other_organization.memberships.get().user).get("/dashboard/settings/").content.decode()
    assert "No alert has been sent to a webhook yet." in other


def test_a_failed_test_alert_is_logged_with_the_answer(owner_web, organization, hook_server, public_dns, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    public_dns["hooks.example.com"] = ["127.0.0.1"]
    receiver = hook_server(status=500)
    url = receiver.url("/t", host="hooks.example.com")
    services.wallet_alerts_update(organization_id=organization.pk, low_balance_threshold=Decimal(0), alert_webhook_url=url)
    owner_web.post("/dashboard/settings/alert-test/")
    delivery = AlertDelivery.objects.get()
    assert (delivery.delivered, delivery.status_code, delivery.kind) == (False, 500, "test")
    assert "answered 500" in delivery.error


def test_send_test_alert_without_a_url_says_so(owner_web, organization):
    response = owner_web.post("/dashboard/settings/alert-test/", follow=True)
    assert "Set an alert webhook URL first." in response.content.decode()
    assert not AlertDelivery.objects.exists()
