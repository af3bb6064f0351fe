"""Staff API for plans: `GET/POST admin/plans/`, `GET admin/plans/{slug}/` (docs/contract.md §3).
A POST creates a plan or changes one; prices are only ever added as new rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import Plan, PlanAllowance, Price
from tests.conftest import jwt_client
from tests.factories import UserFactory
from tests.metering.plan_helpers import PLANS, plan_create, staff_api_client, staff_groups
from tests.payments.helpers import assert_error


@pytest.fixture(autouse=True)
def _groups(db):
    staff_groups()


@pytest.fixture
def billing():
    return staff_api_client("Billing admins")


@pytest.fixture
def support():
    return staff_api_client("Support")


TEAM = {
    "slug": "team",
    "name": "Team",
    "monthly_fee": "49.00",
    "included": {"gpt": 2_000_000, "translate": 500_000},
    "prices": {
        "gpt": {"input_price": "0.1", "output_price": "0.4"},
        "translate": {
            "model": "tiered",
            "tiers": [{"up_to": 1_000_000, "unit_price": "0.02"}, {"up_to": None, "unit_price": "0.01"}],
        },
    },
}


def test_staff_create_a_plan_with_what_it_includes_and_its_prices(catalogue, billing):
    response = billing.post(PLANS, TEAM, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["slug"], body["name"], body["monthly_fee"], body["public"]) == ("team", "Team", "49.000000000000", True)
    assert body["included"] == {"gpt": 2_000_000, "translate": 500_000}
    assert body["prices"]["gpt"]["model"] == "per_unit"
    assert body["prices"]["gpt"]["prices"] == {"input_price": "0.100000000000", "output_price": "0.400000000000"}
    assert body["prices"]["translate"]["tiers"] == [
        {"up_to": 1_000_000, "unit_price": "0.020000000000"},
        {"up_to": None, "unit_price": "0.010000000000"},
    ]
    plan = Plan.objects.get(slug="team")
    assert {(a.service.slug, a.quantity) for a in plan.allowances.all()} == {("gpt", 2_000_000), ("translate", 500_000)}
    assert Price.objects.filter(plan=plan, organization=None).count() == 2
    assert billing.get(PLANS).json() == [body]
    assert billing.get(f"{PLANS}team/").json() == body


def test_posting_an_existing_plan_changes_it_and_adds_price_rows_never_edits_them(catalogue, billing):
    assert billing.post(PLANS, TEAM, format="json").status_code == 201
    first_gpt = Price.objects.get(plan__slug="team", service__slug="gpt")

    response = billing.post(
        PLANS,
        {
            "slug": "team",
            "monthly_fee": "59",
            "included": {"gpt": 0, "ping": 100},  # gpt no longer included; translate keeps its quantity
            "prices": {"gpt": {"input_price": "0.09", "output_price": "0.35"}},
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["monthly_fee"]) == ("Team", "59.000000000000")
    assert body["included"] == {"ping": 100, "translate": 500_000}
    assert body["prices"]["gpt"]["prices"] == {"input_price": "0.090000000000", "output_price": "0.350000000000"}
    rows = Price.objects.filter(plan__slug="team", service__slug="gpt").order_by("id")
    assert (rows[0].pk, rows[0].input_price) == (first_gpt.pk, first_gpt.input_price)  # untouched
    assert rows.count() == 2
    assert Plan.objects.count() == 1


def test_a_plan_shows_its_price_in_force_or_else_the_next_one(catalogue, billing):
    later = (timezone.now() + timedelta(days=3)).isoformat()
    billing.post(
        PLANS, {"slug": "team", "name": "Team", "prices": {"ping": {"unit_price": "1", "effective_from": later}}}, format="json"
    )

    scheduled = billing.get(f"{PLANS}team/").json()["prices"]["ping"]
    billing.post(PLANS, {"slug": "team", "prices": {"ping": {"unit_price": "2"}}}, format="json")
    in_force = billing.get(f"{PLANS}team/").json()["prices"]["ping"]

    assert scheduled["prices"] == {"unit_price": "1.000000000000"}
    assert in_force["prices"] == {"unit_price": "2.000000000000"}  # in force now, though the other starts later


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"slug": "team", "included": {"nope": 5}}, "included.nope", id="unknown service in included"),
        pytest.param({"slug": "team", "prices": {"nope": {"unit_price": "1"}}}, "prices.nope", id="unknown service in prices"),
        pytest.param({"slug": "team", "included": {"ping": -1}}, "included", id="negative included quantity"),
        pytest.param({"slug": "team", "monthly_fee": "-1"}, "monthly_fee", id="negative fee"),
        pytest.param({"slug": "team", "monthly_fee": "1.0000000000001"}, "monthly_fee", id="fee with too many decimals"),
        pytest.param({"slug": "not a slug", "name": "X"}, "slug", id="bad slug"),
        pytest.param({"slug": "team", "colour": "blue"}, "colour", id="unknown field"),
        pytest.param(
            {"slug": "team", "prices": {"gpt": {"unit_price": "1"}}}, "prices.gpt.unit_price", id="price field not of the method"
        ),
        pytest.param(
            {"slug": "team", "prices": {"translate": {"model": "tiered", "tiers": [{"up_to": 5, "unit_price": "1"}]}}},
            "prices.translate.tiers[0]",
            id="last tier with an end",
        ),
        pytest.param(
            {"slug": "team", "prices": {"ping": {"model": "package", "unit_price": "1"}}},
            "prices.ping.package_size",
            id="package without size",
        ),
    ],
)
def test_a_faulty_plan_is_refused_naming_the_entry_and_nothing_changes(catalogue, billing, body, field):
    plan_create("team", fee="20", included={catalogue["ping"]: 7})
    before = (Price.objects.count(), list(PlanAllowance.objects.values_list("service__slug", "quantity")))

    error = assert_error(billing.post(PLANS, {"name": "Changed", **body}, format="json"), 400, "invalid_request")

    assert any(key == field or key.startswith(f"{field}") for key in error["details"]), error
    assert (Price.objects.count(), list(PlanAllowance.objects.values_list("service__slug", "quantity"))) == before
    assert Plan.objects.get(slug="team").name == "Team"


def test_a_plan_with_a_good_price_and_a_bad_one_writes_neither(catalogue, billing):
    body = {"slug": "new", "name": "New", "prices": {"ping": {"unit_price": "1"}, "gpt": {"unit_price": "1"}}}

    error = assert_error(billing.post(PLANS, body, format="json"), 400, "invalid_request")

    assert "prices.gpt.unit_price" in error["details"]
    assert not Plan.objects.filter(slug="new").exists()
    assert not Price.objects.filter(plan__isnull=False).exists()


def test_a_new_plan_needs_a_name(catalogue, billing):
    error = assert_error(billing.post(PLANS, {"slug": "nameless"}, format="json"), 400, "invalid_request")

    assert "name" in error["details"]
    assert not Plan.objects.exists()


def test_an_unknown_plan_is_404(db, billing):
    assert_error(billing.get(f"{PLANS}nope/"), 404, "not_found")


def test_support_reads_plans_but_cannot_change_them(catalogue, support):
    plan_create("team", fee="20")

    assert support.get(PLANS).status_code == 200
    assert support.get(f"{PLANS}team/").status_code == 200
    assert_error(support.post(PLANS, {"slug": "team", "monthly_fee": "0"}, format="json"), 403, "permission_denied")
    assert_error(support.post(PLANS, {"slug": "sneaky", "name": "S"}, format="json"), 403, "permission_denied")
    assert Plan.objects.get(slug="team").monthly_fee == 20
    assert not Plan.objects.filter(slug="sneaky").exists()


@pytest.mark.parametrize("who", ["owner", "api key", "staff without rights"])
def test_plans_are_for_staff_only(catalogue, owner_client, live_client, who):
    plan_create("team")
    client = {"owner": owner_client, "api key": live_client, "staff without rights": jwt_client(UserFactory(is_staff=True))}[who]

    assert_error(client.get(PLANS), 403, "permission_denied")
    assert_error(client.get(f"{PLANS}team/"), 403, "permission_denied")
    assert_error(client.post(PLANS, {"slug": "sneaky", "name": "S"}, format="json"), 403, "permission_denied")
    assert not Plan.objects.filter(slug="sneaky").exists()


def test_plans_require_authentication(api_client):
    assert api_client.get(PLANS).status_code == 401
    assert api_client.post(PLANS, {}, format="json").status_code == 401
