"""The back office: billing admins save a Stripe card for auto top-up; its history is read-only; auto
payments show (and filter) in the payments list."""

from __future__ import annotations

import importlib
from decimal import Decimal

import pytest

from payments import auto_recharge
from payments.auto_models import AutoRecharge
from payments.models import Payment
from tests.factories import wallet_fund
from tests.payments.auto_helpers import auto_enable
from tests.test_admin import staff_client

D = Decimal
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from data migrations; transactional tests elsewhere truncate them, so re-run
    those migrations' functions (they are idempotent)."""
    from django.apps import apps

    for migration in ("metering.migrations.0004_staff_groups_payments", "payments.migrations.0012_staff_groups_auto_recharge"):
        importlib.import_module(migration).extend_groups(apps, None)


def test_a_billing_admin_saves_a_card_for_an_organization(organization):
    client, _ = staff_client("Billing admins")

    response = client.post(
        "/admin/payments/autorecharge/add/",
        {"organization": organization.pk, "stripe_customer": "cus_Q1", "payment_method": "pm_1Q"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    setting = AutoRecharge.objects.get(pk=organization.pk)
    assert (setting.provider, setting.stripe_customer, setting.payment_method, setting.enabled) == (
        "stripe",
        "cus_Q1",
        "pm_1Q",
        False,
    )


@pytest.mark.parametrize(("customer", "method"), [("Q1", "pm_1Q"), ("cus_Q1", "tok_visa"), ("", "")])
def test_the_card_form_refuses_what_is_not_a_stripe_id(organization, customer, method):
    client, _ = staff_client("Billing admins")

    response = client.post(
        "/admin/payments/autorecharge/add/",
        {"organization": organization.pk, "stripe_customer": customer, "payment_method": method},
    )

    assert response.status_code == 200
    assert not AutoRecharge.objects.exists()


def test_saving_a_card_over_a_sandbox_setting_turns_it_off(organization):
    auto_enable(organization)
    client, _ = staff_client("Billing admins")

    response = client.post(
        f"/admin/payments/autorecharge/{organization.pk}/change/", {"stripe_customer": "cus_Q1", "payment_method": "pm_1Q"}
    )

    assert response.status_code == 302
    setting = AutoRecharge.objects.get(pk=organization.pk)
    assert (setting.provider, setting.enabled, setting.threshold) == ("stripe", False, D("5"))
    assert Payment.objects.count() == 0


def test_support_sees_the_setting_and_its_history_but_changes_nothing(organization):
    wallet_fund(organization, "1")
    auto_enable(organization, payment_method="pm_sandbox_decline")
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    auto_recharge.auto_recharge_charge(payment_id=payment.pk)
    client, _ = staff_client("Support")

    page = client.get(f"/admin/payments/autorecharge/{organization.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="auto-history"' in html and f"#{payment.pk}" in html and "declined" in html
    assert (
        client.post(
            f"/admin/payments/autorecharge/{organization.pk}/change/", {"stripe_customer": "cus_X", "payment_method": "pm_X"}
        ).status_code
        == 403
    )
    assert AutoRecharge.objects.get(pk=organization.pk).stripe_customer == ""
    assert client.get("/admin/payments/autorecharge/").status_code == 200


def test_the_payments_list_filters_auto_top_ups(organization):
    wallet_fund(organization, "1")
    auto_enable(organization)
    auto_recharge.auto_recharge_start(organization_id=organization.pk)
    client, _ = staff_client("Support")

    response = client.get("/admin/payments/payment/?auto__exact=1")

    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
