"""Staff API: admin/services/, admin/prices/, admin/organizations/{slug}/adjust/ (docs/contract.md §3)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import Price, Service
from payments.models import Transfer, Wallet
from tests.conftest import jwt_client
from tests.factories import UserFactory
from tests.metering.helpers import ping
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

SERVICES = "/api/v1/admin/services/"
PRICES = "/api/v1/admin/prices/"


def adjust_url(organization) -> str:
    return f"/api/v1/admin/organizations/{organization.slug}/adjust/"


@pytest.fixture
def staff_without_rights(db):
    return jwt_client(UserFactory(is_staff=True))


@pytest.fixture
def outsiders(request, owner_client, live_client, staff_without_rights) -> dict:
    return {"owner": owner_client, "api key": live_client, "staff without rights": staff_without_rights}


OUTSIDERS = ["owner", "api key", "staff without rights"]


# --- admin/services/ -------------------------------------------------------------------------------------


def test_staff_creates_a_service(staff_client):
    response = staff_client.post(SERVICES, {"slug": "whisper", "name": "Whisper", "calc_method": "REQUEST"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json() == {"slug": "whisper", "name": "Whisper", "calc_method": "REQUEST", "active": True}
    assert Service.objects.get(slug="whisper").calc_method == "REQUEST"


@pytest.mark.parametrize(
    "body",
    [
        {"slug": "ping", "name": "Again", "calc_method": "REQUEST"},  # exists
        {"slug": "x", "name": "X", "calc_method": "PER_VIBE"},
        {"slug": "not a slug", "name": "X", "calc_method": "REQUEST"},
        {"name": "X", "calc_method": "REQUEST"},
    ],
)
def test_staff_service_creation_validates(catalogue, staff_client, body):
    assert_error(staff_client.post(SERVICES, body, format="json"), 400, "invalid_request")
    assert Service.objects.count() == len(catalogue)


@pytest.mark.parametrize("who", OUTSIDERS)
def test_only_staff_with_rights_create_services(outsiders, who):
    response = outsiders[who].post(SERVICES, {"slug": "sneaky", "name": "S", "calc_method": "REQUEST"}, format="json")

    assert_error(response, 403, "permission_denied")
    assert not Service.objects.filter(slug="sneaky").exists()


def test_service_admin_requires_authentication(api_client):
    assert api_client.post(SERVICES, {}, format="json").status_code == 401


# --- admin/prices/ ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "fields"),
    [
        ("gpt", {"input_price": "0.2", "output_price": "0.9"}),
        ("translate", {"unit_price": "0.03"}),
        ("summarize", {"unit_price": "0.6"}),
        ("dalle", {"unit_price": "0.02"}),
        ("ping", {"unit_price": "0.002"}),
    ],
)
def test_staff_adds_a_price_with_the_fields_of_its_method(catalogue, staff_client, owner_client, service, fields):
    response = staff_client.post(PRICES, {"service": service, **fields}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["prices"] == {name: format(Decimal(value), ".12f") for name, value in fields.items()}
    assert (body["service"], body["organization"]) == (service, None)
    listed = {s["slug"]: s["prices"] for s in owner_client.get("/api/v1/services/").json()}
    assert listed[service] == body["prices"]
    assert Price.objects.filter(service__slug=service).count() == 2  # the old row is history, not edited


@pytest.mark.parametrize(
    ("service", "fields"),
    [
        ("gpt", {"unit_price": "1"}),  # wrong field for the method
        ("gpt", {"input_price": "1"}),  # one missing
        ("gpt", {"input_price": "1", "output_price": "1", "unit_price": "1"}),
        ("ping", {"input_price": "1"}),
        ("ping", {"unit_price": "1", "output_price": "1"}),
        ("ping", {}),
        ("ping", {"unit_price": "-1"}),
        ("ping", {"unit_price": "abc"}),
        ("ping", {"unit_price": "0.0000000000001"}),
        ("ping", {"unit_price": "1", "effective_from": "tomorrow"}),
    ],
)
def test_staff_price_with_wrong_fields_is_400(catalogue, staff_client, service, fields):
    before = Price.objects.count()

    assert_error(staff_client.post(PRICES, {"service": service, **fields}, format="json"), 400, "invalid_request")
    assert Price.objects.count() == before


def test_staff_price_override_for_one_organization(catalogue, funded, staff_client, live_client, other_client):
    response = staff_client.post(PRICES, {"service": "ping", "organization": funded.slug, "unit_price": "0.0001"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["organization"] == funded.slug
    assert ping(live_client, "a").json()["cost"] == "0.000100000000"
    assert [s["prices"] for s in other_client.get("/api/v1/services/").json() if s["slug"] == "ping"] == [
        {"unit_price": "0.001000000000"}
    ]


def test_staff_price_in_the_future_waits_for_its_time(catalogue, funded, staff_client, live_client):
    later = (timezone.now() + timedelta(hours=2)).isoformat()

    response = staff_client.post(PRICES, {"service": "ping", "unit_price": "5", "effective_from": later}, format="json")

    assert response.status_code == 201, response.content
    assert ping(live_client, "a").json()["cost"] == "0.001000000000"


@pytest.mark.parametrize(
    ("body", "status"),
    [({"service": "nope", "unit_price": "1"}, 404), ({"service": "ping", "organization": "nope", "unit_price": "1"}, 404)],
)
def test_staff_price_for_unknown_things_is_404(catalogue, staff_client, body, status):
    assert staff_client.post(PRICES, body, format="json").status_code == status


@pytest.mark.parametrize("who", OUTSIDERS)
def test_only_staff_with_rights_add_prices(catalogue, outsiders, who):
    before = Price.objects.count()

    assert_error(outsiders[who].post(PRICES, {"service": "ping", "unit_price": "0"}, format="json"), 403, "permission_denied")
    assert Price.objects.count() == before


# --- admin/organizations/{slug}/adjust/ ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "balance"), [("2.5", "12.5"), ("-2.5", "7.5"), ("-10", "0"), ("0.000000000001", "10.000000000001")]
)
def test_staff_adjusts_a_wallet_by_a_signed_amount(funded, staff_client, staff_user, amount, balance):
    response = staff_client.post(adjust_url(funded), {"amount": amount, "reason": "goodwill"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["balance_after"] == format(Decimal(balance), ".12f")
    assert wallet_of(funded).balance == Decimal(balance)
    transfer = Transfer.objects.get(pk=response.json()["transfer_id"])
    assert (transfer.kind, transfer.memo, transfer.created_by_id) == ("adjustment", "goodwill", staff_user.pk)
    assert sorted(e.account for e in transfer.entries.all()) == ["adjustments", "wallet"]
    assert_money_invariants([funded.pk])


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "0", "reason": "nothing"},
        {"amount": "0.000", "reason": "nothing"},
        {"amount": "5"},
        {"amount": "5", "reason": ""},
        {"amount": "5", "reason": "   "},
        {"reason": "no amount"},
        {"amount": "five", "reason": "typo"},
        {"amount": "0.0000000000001", "reason": "too fine"},
    ],
)
def test_staff_adjustment_validates(funded, staff_client, body):
    assert_error(staff_client.post(adjust_url(funded), body, format="json"), 400, "invalid_request")
    assert wallet_of(funded).balance == Decimal("10")


def test_staff_adjustment_may_not_pass_the_credit_limit(funded, staff_client):
    Wallet.objects.filter(organization_id=funded.pk).update(credit_limit=Decimal("1"))

    assert_error(
        staff_client.post(adjust_url(funded), {"amount": "-11.01", "reason": "x"}, format="json"), 402, "insufficient_balance"
    )
    assert wallet_of(funded).balance == Decimal("10")


def test_staff_adjustment_of_unknown_organization_is_404(db, staff_client):
    assert (
        staff_client.post("/api/v1/admin/organizations/nope/adjust/", {"amount": "1", "reason": "x"}, format="json").status_code
        == 404
    )


@pytest.mark.parametrize("who", OUTSIDERS)
def test_only_staff_with_rights_adjust(funded, outsiders, who):
    response = outsiders[who].post(adjust_url(funded), {"amount": "100", "reason": "free money"}, format="json")

    assert_error(response, 403, "permission_denied")
    assert wallet_of(funded).balance == Decimal("10")
