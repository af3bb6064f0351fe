"""The back office's price models and plans: the price form takes a model, tiers, a package size and a
plan, checked by the pricing module's one rule with each fault on its own field; plans with what they
include, their prices and subscribers; subscriptions to look at. Support looks and changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from metering.models import CalcMethod, Plan, PlanAllowance, Price, Subscription, SubscriptionCharge
from tests.factories import ServiceFactory, UserFactory
from tests.metering.plan_helpers import plan_create, staff_groups, subscribe


@pytest.fixture(autouse=True)
def _groups(db):
    staff_groups()


def staff_client(group: str) -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def billing():
    return staff_client("Billing admins")


@pytest.fixture
def support():
    return staff_client("Support")


@pytest.fixture
def translate(db):
    return ServiceFactory(slug="translate", calc_method=CalcMethod.CHAR_COUNT)


def price_form(service, **fields) -> dict:
    return {"service": service.pk, "effective_from_0": "2030-01-01", "effective_from_1": "00:00:00", **fields}


TIERS = '[{"up_to": 1000000, "unit_price": "0.02"}, {"up_to": null, "unit_price": "0.01", "flat_fee": "5.00"}]'


def test_a_billing_admin_adds_a_tiered_price(billing, translate):
    response = billing.post("/admin/metering/price/add/", price_form(translate, model="tiered", tiers=TIERS))

    assert response.status_code == 302, response.content.decode()[:3000]
    price = Price.objects.get()
    assert (price.model, price.unit_price, price.package_size) == ("tiered", None, None)
    assert price.tiers == [{"up_to": 1000000, "unit_price": "0.02"}, {"up_to": None, "unit_price": "0.01", "flat_fee": "5.00"}]
    listing = billing.get("/admin/metering/price/").content.decode()
    assert "Tiered (graduated)" in listing
    assert "2 tiers up to 1,000,000 / ∞" in listing


def test_a_package_price_and_a_plans_price(billing, translate):
    plan = plan_create("team")

    package = billing.post(
        "/admin/metering/price/add/", price_form(translate, model="package", unit_price="1.5", package_size="1000")
    )
    planned = billing.post("/admin/metering/price/add/", price_form(translate, plan=plan.pk, unit_price="0.015"))

    assert package.status_code == 302, package.content.decode()[:3000]
    assert planned.status_code == 302, planned.content.decode()[:3000]
    assert Price.objects.get(model="package").package_size == 1000
    assert Price.objects.get(plan=plan).unit_price == Decimal("0.015")
    assert "1,000 units per package" in billing.get("/admin/metering/price/").content.decode()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        pytest.param(
            {
                "model": "tiered",
                "tiers": '[{"up_to": 10, "unit_price": "1"}, {"up_to": 5, "unit_price": "1"}, {"up_to": null, "unit_price": "1"}]',
            },
            "tiers",
            "Tier 2: Each up_to is greater",
            id="up_to not increasing",
        ),
        pytest.param(
            {"model": "volume", "tiers": '[{"up_to": 10, "unit_price": "1"}]'},
            "tiers",
            "Tier 1: The last tier",
            id="last not null",
        ),
        pytest.param({"model": "tiered", "tiers": '[{"up_to": null}]'}, "tiers", "unit_price is required", id="missing rate"),
        pytest.param(
            {"model": "tiered", "tiers": '[{"up_to": null, "unit_price": "-1"}]'},
            "tiers",
            "finite amount ≥ 0",
            id="negative rate",
        ),
        pytest.param(
            {"model": "tiered", "tiers": '[{"up_to": null, "unit_price": "1", "input_price": "1"}]'},
            "tiers",
            "Unknown fields for this method: input_price",
            id="rate not of the method",
        ),
        pytest.param({"model": "tiered", "tiers": "[{not json"}, "tiers", "JSON", id="not JSON"),
        pytest.param({"model": "tiered"}, "tiers", "non-empty list", id="no tiers"),
        pytest.param({"model": "package", "unit_price": "1"}, "package_size", "An integer from 1", id="package without size"),
        pytest.param(
            {"unit_price": "1", "tiers": '[{"up_to": null, "unit_price": "1"}]'},
            "tiers",
            "Only for the tiered",
            id="tiers on per unit",
        ),
    ],
)
def test_a_price_that_does_not_fit_shows_the_fault_on_its_field(billing, translate, fields, field, words):
    response = billing.post("/admin/metering/price/add/", price_form(translate, **fields))

    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert any(words in message for message in errors[field]), errors
    assert not Price.objects.exists()


def test_a_price_for_an_organization_and_a_plan_is_refused_on_the_plan(billing, translate, organization):
    plan = plan_create("team")

    response = billing.post(
        "/admin/metering/price/add/", price_form(translate, plan=plan.pk, organization=organization.pk, unit_price="1")
    )

    assert response.status_code == 200
    assert "plan" in response.context["adminform"].form.errors
    assert not Price.objects.exists()


def test_the_price_form_explains_the_tiers_with_an_example(billing, translate):
    page = billing.get("/admin/metering/price/add/").content.decode()

    assert "flat_fee" in page and "up_to" in page and "1000000" in page
    for name in ("model", "tiers", "package_size", "plan"):
        assert f'name="{name}"' in page, name


def test_a_billing_admin_creates_a_plan_with_what_it_includes(billing, translate):
    response = billing.post(
        "/admin/metering/plan/add/",
        {
            "slug": "team",
            "name": "Team",
            "description": "",
            "monthly_fee": "49",
            "public": "on",
            "allowances-TOTAL_FORMS": "1",
            "allowances-INITIAL_FORMS": "0",
            "allowances-MIN_NUM_FORMS": "0",
            "allowances-MAX_NUM_FORMS": "1000",
            "allowances-0-service": translate.pk,
            "allowances-0-quantity": "500000",
            "subscriptions-TOTAL_FORMS": "0",
            "subscriptions-INITIAL_FORMS": "0",
            "subscriptions-MIN_NUM_FORMS": "0",
            "subscriptions-MAX_NUM_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    plan = Plan.objects.get(slug="team")
    assert plan.monthly_fee == 49
    assert PlanAllowance.objects.get(plan=plan).quantity == 500000


def test_a_plans_page_lists_its_prices_read_only_with_a_link_to_add_one_and_its_subscribers(billing, translate, organization):
    plan = plan_create("team", included={translate: 1000})
    Price.objects.create(service=translate, plan=plan, unit_price="0.015", effective_from=timezone.now())
    subscribe(organization, plan)

    page = billing.get(f"/admin/metering/plan/{plan.pk}/change/").content.decode()

    assert "translate" in page and "unit price 0.015" in page
    assert f"/admin/metering/price/add/?plan={plan.pk}" in page
    assert organization.name in page or organization.slug in page
    prefilled = billing.get(f"/admin/metering/price/add/?plan={plan.pk}").context["adminform"].form
    assert str(prefilled["plan"].value()) == str(plan.pk)


def test_a_subscription_is_shown_with_its_charges_and_never_changed(billing, translate, organization):
    plan = plan_create("team")
    subscription = subscribe(organization, plan)
    SubscriptionCharge.objects.create(
        subscription=subscription,
        organization=organization,
        plan=plan,
        period=subscription.period,
        kind="period_fee",
        amount="20",
    )

    page = billing.get(f"/admin/metering/subscription/{subscription.pk}/change/")

    assert page.status_code == 200
    assert "Period fee" in page.content.decode()
    assert billing.get("/admin/metering/subscription/add/").status_code == 403
    billing.post(f"/admin/metering/subscription/{subscription.pk}/change/", {"status": "canceled"})
    assert Subscription.objects.get().status == "active"
    assert billing.get("/admin/metering/subscription/").status_code == 200


def test_support_looks_at_plans_and_subscriptions_and_changes_nothing(support, translate, organization):
    plan = plan_create("team", fee="20", included={translate: 1000})
    subscribe(organization, plan)

    for url in ("/admin/metering/plan/", f"/admin/metering/plan/{plan.pk}/change/", "/admin/metering/subscription/"):
        assert support.get(url).status_code == 200, url
    assert support.get("/admin/metering/plan/add/").status_code == 403
    assert support.get("/admin/metering/price/add/").status_code == 403
    support.post(f"/admin/metering/plan/{plan.pk}/change/", {"slug": "team", "name": "Hacked", "monthly_fee": "0"})
    assert Plan.objects.get().name == "Team"
    assert 'name="monthly_fee"' not in support.get(f"/admin/metering/plan/{plan.pk}/change/").content.decode()
