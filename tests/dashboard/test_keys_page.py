"""API keys: create (secret once), list, revoke with confirmation; owners and admins only."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from tests.conftest import key_client
from tests.dashboard.conftest import new_key

pytestmark = pytest.mark.django_db


def test_creating_a_key_shows_its_secret_once(owner_web, organization):
    response = owner_web.post("/dashboard/keys/", {"name": "Backend", "mode": "live"}, follow=True)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    assert secret.startswith("tg_live_") and secret in response.content.decode()
    key = ApiKey.objects.get(organization=organization)
    assert key.name == "Backend" and key.mode == "live" and secret not in (key.digest, key.prefix)
    listing = owner_web.get("/dashboard/keys/").content.decode()
    assert "Backend" in listing and key.prefix in listing and secret not in listing
    assert key_client(secret).get("/api/v1/balance/").status_code == 200


def test_creating_a_test_key_with_cap_and_expiry(admin_web, organization):
    tomorrow = timezone.now().date() + timedelta(days=2)
    response = admin_web.post(
        "/dashboard/keys/", {"name": "CI", "mode": "test", "spend_cap": "5.50", "expires_on": str(tomorrow)}, follow=True
    )
    assert response.context["secret"].startswith("tg_test_")
    key = ApiKey.objects.get(organization=organization)
    assert key.mode == "test" and str(key.spend_cap.normalize()) == "5.5" and key.expires_at.date() == tomorrow


@pytest.mark.parametrize(
    "data",
    [{"name": "", "mode": "live"}, {"name": "x", "mode": "gold"}, {"name": "x", "mode": "live", "expires_on": "2000-01-01"}],
)
def test_invalid_key_forms_create_nothing(owner_web, organization, data):
    assert owner_web.post("/dashboard/keys/", data).status_code == 400
    assert not ApiKey.objects.exists()


def test_revoking_asks_first_then_refuses_the_key(owner_web, organization):
    key = new_key(organization, name="Old")
    page = owner_web.get(f"/dashboard/keys/{key.pk}/revoke/")
    assert page.status_code == 200 and "cannot be undone" in page.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None
    assert owner_web.post(f"/dashboard/keys/{key.pk}/revoke/")["Location"] == "/dashboard/keys/"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "Revoked" in owner_web.get("/dashboard/keys/").content.decode()


def test_another_organizations_key_answers_404(owner_web, other_key):
    key = other_key.api_key
    assert owner_web.get(f"/dashboard/keys/{key.pk}/revoke/").status_code == 404
    response = owner_web.post(f"/dashboard/keys/{key.pk}/revoke/")
    assert response.status_code == 404 and "Not found" in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None


def test_members_cannot_see_or_manage_keys(member_web, organization):
    key = new_key(organization)
    assert member_web.get("/dashboard/keys/").status_code == 403
    assert member_web.post("/dashboard/keys/", {"name": "sneaky", "mode": "live"}).status_code == 403
    assert member_web.post(f"/dashboard/keys/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None and ApiKey.objects.count() == 1
    assert "/dashboard/keys/" not in member_web.get("/dashboard/").content.decode()


def test_refreshing_the_new_key_page_creates_no_second_key_and_shows_the_secret_once(owner_web, organization):
    """Bug (issue 12): the secret was rendered in the answer to the POST, so a refresh re-posted the form."""
    response = owner_web.post("/dashboard/keys/", {"name": "Backend", "mode": "live"})
    key = ApiKey.objects.get(organization=organization)
    assert response.status_code == 302 and response["Location"] == f"/dashboard/keys/{key.pk}/created/"
    shown = owner_web.get(response["Location"])
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    secret = shown.context["secret"]
    assert secret.startswith("tg_live_") and secret in shown.content.decode()
    assert key_client(secret).get("/api/v1/balance/").status_code == 200
    refreshed = owner_web.get(response["Location"])
    assert refreshed.status_code == 200 and secret not in refreshed.content.decode()
    assert "no longer shown" in refreshed.content.decode()
    assert ApiKey.objects.filter(organization=organization).count() == 1


def test_another_organizations_new_key_page_is_not_found(owner_web, other_web, organization):
    created = owner_web.post("/dashboard/keys/", {"name": "Backend", "mode": "live"})["Location"]
    assert other_web.get(created).status_code == 404


@pytest.fixture
def routed(catalogue):
    from tests.gateway.config_helpers import route_add, upstream_add

    upstream_add("openai")
    route_add("gpt-4o-mini", "gpt", "openai")
    route_add("dall-e-3", "dalle", "openai")
    route_add("paused", "gpt", "openai", active=False)


def test_a_key_is_created_with_its_gateway_limits_and_the_list_shows_them(owner_web, organization, routed):
    page = owner_web.get("/dashboard/keys/").content.decode()
    assert 'value="gpt-4o-mini"' in page and 'value="dall-e-3"' in page
    assert 'value="paused"' not in page  # only the models customers can call are offered

    response = owner_web.post(
        "/dashboard/keys/",
        {"name": "Chat", "mode": "live", "allowed_models": ["gpt-4o-mini"], "rpm_limit": "60", "tpm_limit": "100000"},
        follow=True,
    )

    assert response.status_code == 200
    key = ApiKey.objects.get(organization=organization)
    assert (key.allowed_models, key.rpm_limit, key.tpm_limit, key.max_concurrent_streams) == (["gpt-4o-mini"], 60, 100_000, None)
    listing = owner_web.get("/dashboard/keys/").content.decode()
    assert "gpt-4o-mini · 60 req/min · 100,000 tokens/min" in listing


@pytest.mark.parametrize(
    "limits",
    [{"rpm_limit": "0"}, {"tpm_limit": "-3"}, {"max_concurrent_streams": "many"}, {"allowed_models": ["gpt-5"]}],
)
def test_bad_gateway_limits_create_no_key(owner_web, organization, routed, limits):
    response = owner_web.post("/dashboard/keys/", {"name": "x", "mode": "live", **limits})

    assert response.status_code == 400
    assert not ApiKey.objects.exists()


def test_without_routes_the_form_offers_no_model_list_but_still_the_limits(owner_web, organization):
    page = owner_web.get("/dashboard/keys/").content.decode()

    assert 'name="allowed_models"' not in page and 'name="rpm_limit"' in page
