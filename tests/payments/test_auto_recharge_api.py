"""GET/PUT /api/v1/auto-recharge/: owners and admins only, every refusal changes nothing, one tenant never
sees or changes another's; and the dashboard's form on the billing page (Django test client)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payments.auto_models import AutoRecharge
from payments.models import Payment, PaymentStatus
from tests.dashboard.conftest import client_for
from tests.factories import wallet_fund
from tests.payments.auto_helpers import auto_enable, stripe_card_save
from tests.payments.helpers import assert_error, wallet_of

D = Decimal
URL = "/api/v1/auto-recharge/"
VALID = {"enabled": True, "threshold": "10.00", "amount": "50.00", "monthly_max": "200.00", "provider": "sandbox"}

pytestmark = pytest.mark.django_db


def state(organization) -> tuple:
    """Everything a refused PUT must leave as it was."""
    row = AutoRecharge.objects.filter(pk=organization.pk).values().first()
    return row, wallet_of(organization).auto_recharge_below, Payment.objects.filter(organization=organization).count()


def test_get_before_any_setting_answers_off(owner_client, organization):
    response = owner_client.get(URL)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "enabled": False,
        "threshold": None,
        "amount": None,
        "monthly_max": None,
        "provider": None,
        "payment_method": "",
        "consecutive_declines": 0,
        "disabled_reason": "",
        "spent_this_month": "0.000000000000",
        "currency": "USD",
    }


@pytest.mark.parametrize("manager", ["owner_client", "org_admin_client"])
def test_put_turns_it_on_and_get_answers_it(request, organization, manager):
    client = request.getfixturevalue(manager)

    response = client.put(URL, {**VALID, "payment_method": "pm_sandbox_decline"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] is True
    assert (body["threshold"], body["amount"], body["monthly_max"]) == ("10.000000000000", "50.000000000000", "200.000000000000")
    assert (body["provider"], body["payment_method"], body["consecutive_declines"]) == ("sandbox", "pm_sandbox_decline", 0)
    assert client.get(URL).json() == body
    assert wallet_of(organization).auto_recharge_below == D("10")


def test_put_off_clears_the_wallet_threshold(owner_client, organization):
    owner_client.put(URL, VALID, format="json")

    response = owner_client.put(URL, {**VALID, "enabled": False}, format="json")

    assert response.json()["enabled"] is False
    assert wallet_of(organization).auto_recharge_below is None


def test_spent_this_month_counts_pending_and_succeeded_auto_payments(owner_client, organization):
    wallet_fund(organization, "1")
    auto_enable(organization, threshold="5", amount="20", monthly_max="100")
    from payments import auto_recharge

    first = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    Payment.objects.filter(pk=first.pk).update(status=PaymentStatus.SUCCEEDED)
    auto_recharge.auto_recharge_start(organization_id=organization.pk)

    assert owner_client.get(URL).json()["spent_this_month"] == "40.000000000000"


def test_a_saved_card_shows_masked(owner_client, organization, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    stripe_card_save(organization, payment_method="pm_1QabcdefghijklmnopWXYZ", customer="cus_secret123")

    response = owner_client.put(URL, {**VALID, "provider": "stripe"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["payment_method"] == "pm_…WXYZ"
    assert "cus_secret123" not in response.content.decode()
    assert "pm_1Qabcdefghijklmnop" not in response.content.decode()


# --- Refusals: 400 invalid_request with details, nothing changed --------------------------------------------


REFUSED = {
    "missing enabled": ({k: v for k, v in VALID.items() if k != "enabled"}, "enabled"),
    "missing threshold": ({k: v for k, v in VALID.items() if k != "threshold"}, "threshold"),
    "missing amount": ({k: v for k, v in VALID.items() if k != "amount"}, "amount"),
    "missing monthly_max": ({k: v for k, v in VALID.items() if k != "monthly_max"}, "monthly_max"),
    "missing provider": ({k: v for k, v in VALID.items() if k != "provider"}, "provider"),
    "enabled not a boolean": ({**VALID, "enabled": "perhaps"}, "enabled"),
    "threshold negative": ({**VALID, "threshold": "-1"}, "threshold"),
    "threshold not a number": ({**VALID, "threshold": "ten"}, "threshold"),
    "threshold NaN": ({**VALID, "threshold": "NaN"}, "threshold"),
    "threshold too many places": ({**VALID, "threshold": "10.001"}, "threshold"),
    "amount zero": ({**VALID, "amount": "0"}, "amount"),
    "amount negative": ({**VALID, "amount": "-50"}, "amount"),
    "amount below the minimum": ({**VALID, "amount": "0.50"}, "amount"),
    "amount above the maximum": ({**VALID, "amount": "10000.01", "monthly_max": "99999"}, "amount"),
    "amount too many places": ({**VALID, "amount": "50.005"}, "amount"),
    "amount Infinity": ({**VALID, "amount": "Infinity"}, "amount"),
    "amount too long": ({**VALID, "amount": "1" * 30}, "amount"),
    "monthly_max below the amount": ({**VALID, "monthly_max": "49.99"}, "monthly_max"),
    "monthly_max negative": ({**VALID, "monthly_max": "-1"}, "monthly_max"),
    "unknown provider": ({**VALID, "provider": "paypal"}, "provider"),
    "unknown sandbox method": ({**VALID, "payment_method": "pm_card_visa"}, "payment_method"),
    "a card over the API": ({**VALID, "provider": "stripe", "payment_method": "pm_card_visa"}, "payment_method"),
    "stripe without a saved card": ({**VALID, "provider": "stripe"}, "provider"),
}


@pytest.mark.parametrize(("body", "field"), REFUSED.values(), ids=REFUSED.keys())
def test_put_refuses_bad_input_and_changes_nothing(owner_client, organization, body, field):
    owner_client.put(URL, {**VALID, "threshold": "3"}, format="json")
    before = state(organization)

    error = assert_error(owner_client.put(URL, body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert state(organization) == before


def test_put_refuses_a_body_that_is_not_json_object(owner_client, organization):
    before = state(organization)

    assert_error(owner_client.put(URL, "[1, 2]", content_type="application/json"), 400, "invalid_request")
    assert state(organization) == before


def test_put_refuses_a_provider_disabled_here(owner_client, organization, settings):
    settings.PAYMENT_PROVIDERS = ["stripe"]

    error = assert_error(owner_client.put(URL, VALID, format="json"), 400, "invalid_request")

    assert "provider" in error["details"]
    assert not AutoRecharge.objects.exists()


@pytest.mark.parametrize("method", ["post", "patch", "delete"])
def test_other_methods_are_not_allowed(owner_client, organization, method):
    assert_error(getattr(owner_client, method)(URL, VALID, format="json"), 405, "method_not_allowed")


# --- Who may, and tenant isolation ----------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["member_client", "live_client"])
def test_members_and_api_keys_are_refused(request, organization, caller):
    client = request.getfixturevalue(caller)
    auto_enable(organization)
    before = state(organization)

    assert_error(client.get(URL), 403, "permission_denied")
    assert_error(client.put(URL, {**VALID, "amount": "9999"}, format="json"), 403, "permission_denied")
    assert state(organization) == before


def test_it_needs_authentication(api_client, organization):
    assert_error(api_client.get(URL), 401, "not_authenticated")
    assert_error(api_client.put(URL, VALID, format="json"), 401, "not_authenticated")


def test_another_tenant_neither_sees_nor_changes_it(owner_client, other_owner_client, organization, other_organization):
    owner_client.put(URL, {**VALID, "threshold": "7.00"}, format="json")
    before = state(organization)

    theirs = other_owner_client.get(URL).json()
    other_owner_client.put(URL, {**VALID, "threshold": "1.00", "enabled": False}, format="json")

    assert theirs["enabled"] is False and theirs["threshold"] is None
    assert state(organization) == before
    assert AutoRecharge.objects.get(pk=other_organization.pk).threshold == D("1")
    assert owner_client.get(URL).json()["threshold"] == "7.000000000000"


def test_naming_another_organization_answers_404(owner_client, organization, other_organization):
    before = state(other_organization)

    assert_error(owner_client.get(URL, HTTP_X_ORGANIZATION=other_organization.slug), 404, "not_found")
    assert_error(owner_client.put(URL, VALID, format="json", HTTP_X_ORGANIZATION=other_organization.slug), 404, "not_found")
    assert state(other_organization) == before


# --- The dashboard's form ---------------------------------------------------------------------------------------


FORM = {
    "enabled": "on",
    "threshold": "10",
    "amount": "50",
    "monthly_max": "200",
    "provider": "sandbox",
    "payment_method": "pm_sandbox_ok",
}


def test_the_billing_page_shows_the_auto_top_up_section(owner, organization):
    page = client_for(owner).get("/dashboard/billing/")

    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="auto-recharge-form"' in html
    assert 'data-testid="auto-recharge-state">Off<' in html


def test_the_form_turns_it_on_and_the_page_shows_its_history(owner, organization):
    client = client_for(owner)

    response = client.post("/dashboard/billing/auto-recharge/", FORM)

    assert response.status_code == 302 and response["Location"].endswith("/dashboard/billing/#auto-recharge")
    setting = AutoRecharge.objects.get(pk=organization.pk)
    assert (setting.enabled, setting.threshold, setting.amount, setting.monthly_max) == (True, D("10"), D("50"), D("200"))
    assert wallet_of(organization).auto_recharge_below == D("10")

    wallet_fund(organization, "1")
    from payments import auto_recharge

    auto_recharge.auto_recharge_start(organization_id=organization.pk)
    html = client.get("/dashboard/billing/").content.decode()
    assert 'data-testid="auto-recharge-state">On<' in html
    assert 'data-testid="auto-payments-table"' in html
    assert "Auto top-up is on." in html


def test_the_form_turns_it_off(owner, organization):
    client = client_for(owner)
    client.post("/dashboard/billing/auto-recharge/", FORM)

    client.post("/dashboard/billing/auto-recharge/", {k: v for k, v in FORM.items() if k != "enabled"})

    assert AutoRecharge.objects.get(pk=organization.pk).enabled is False
    assert wallet_of(organization).auto_recharge_below is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"monthly_max": "20"}, "At least the amount of one top-up"),
        ({"amount": "0.5"}, "Between"),
        ({"amount": "x"}, "Enter a number"),
        ({"provider": "stripe"}, "No card is saved"),
    ],
)
def test_the_form_refuses_bad_input_and_changes_nothing(owner, organization, changes, message, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"

    response = client_for(owner).post("/dashboard/billing/auto-recharge/", {**FORM, **changes})

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not AutoRecharge.objects.exists()
    assert wallet_of(organization).auto_recharge_below is None


def test_members_cannot_use_the_form(member, organization):
    response = client_for(member).post("/dashboard/billing/auto-recharge/", FORM)

    assert response.status_code == 403
    assert not AutoRecharge.objects.exists()


def test_the_page_says_why_it_turned_itself_off(owner, organization):
    wallet_fund(organization, "1")
    auto_enable(organization, payment_method="pm_sandbox_decline")
    from payments import auto_recharge

    for _ in range(3):
        payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
        auto_recharge.auto_recharge_charge(payment_id=payment.pk)

    html = client_for(owner).get("/dashboard/billing/").content.decode()
    assert 'data-testid="auto-recharge-disabled"' in html
    assert "3 declined charges in a row" in html


def test_the_payments_list_marks_auto_top_ups(owner_client, organization):
    from tests.payments.payment_helpers import sandbox_payment

    by_hand = sandbox_payment(organization, "10.00")
    wallet_fund(organization, "1")
    auto_enable(organization)
    from payments import auto_recharge

    auto = auto_recharge.auto_recharge_start(organization_id=organization.pk)

    listed = {p["id"]: p["auto"] for p in owner_client.get("/api/v1/payments/").json()["results"]}
    assert listed == {by_hand.pk: False, auto.pk: True}
    assert owner_client.get(f"/api/v1/payments/{auto.pk}/").json()["auto"] is True
