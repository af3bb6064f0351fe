"""The back office's receipts: the number and a download on the payment, a read-only Receipt list, and
the organization's billing details shown and edited on its page."""

import importlib

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from payments.models import Receipt
from tests.factories import UserFactory
from tests.payments.payment_helpers import sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import pdf_text
from tests.payments.test_wallet_guard import _organization_form

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from a data migration that transactional tests elsewhere truncate: re-run it."""
    from django.apps import apps

    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)


def staff(group: str | None = None, *, superuser: bool = False) -> Client:
    user = UserFactory(is_staff=True, is_superuser=superuser)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


def admin_receipt_url(payment) -> str:
    return f"/admin/payments/payment/{payment.pk}/receipt.pdf"


@pytest.fixture
def credited(organization):
    settled_sandbox_payment(organization, "1.00")
    return settled_sandbox_payment(organization, "42.00")


@pytest.mark.parametrize("who", ["superuser", "Support", "Billing admins"])
def test_staff_see_the_receipt_number_and_download_it(organization, credited, who):
    client = staff(superuser=True) if who == "superuser" else staff(who)

    page = client.get(f"/admin/payments/payment/{credited.pk}/change/").content.decode()
    assert "R-000002" in page and admin_receipt_url(credited) in page

    listing = client.get("/admin/payments/payment/").content.decode()
    assert "R-000002" in listing

    response = client.get(admin_receipt_url(credited))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="receipt-{organization.slug}-R-000002.pdf"'
    assert "$42.00" in pdf_text(response.content)


def test_a_payment_without_receipt_says_so_and_has_nothing_to_download(organization):
    pending = sandbox_payment(organization, "3.00")
    client = staff(superuser=True)

    page = client.get(f"/admin/payments/payment/{pending.pk}/change/").content.decode()

    assert "only a credited payment has a receipt" in page
    assert client.get(admin_receipt_url(pending)).status_code == 404


def test_staff_without_payment_rights_and_customers_get_no_receipt(credited, owner):
    assert staff().get(admin_receipt_url(credited)).status_code == 403
    customer = Client()
    customer.force_login(owner)
    response = customer.get(admin_receipt_url(credited))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize("who", ["superuser", "Support"])
def test_the_receipt_list_is_read_only(organization, credited, who):
    client = staff(superuser=True) if who == "superuser" else staff(who)
    receipt = Receipt.objects.get(payment=credited)

    listing = client.get("/admin/payments/receipt/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "R-000001" in html and "R-000002" in html and admin_receipt_url(credited) in html

    assert client.get(f"/admin/payments/receipt/{receipt.pk}/change/").status_code == 200  # a view page
    assert client.get("/admin/payments/receipt/add/").status_code == 403
    assert client.post(f"/admin/payments/receipt/{receipt.pk}/change/", {"number": "9"}).status_code == 403
    assert client.post(f"/admin/payments/receipt/{receipt.pk}/delete/", {"post": "yes"}).status_code == 403
    receipt.refresh_from_db()
    assert receipt.number == 2


def test_the_organization_page_shows_and_edits_billing_details(organization):
    client = staff(superuser=True)
    url = f"/admin/accounts/organization/{organization.pk}/change/"
    assert "Billing details" in client.get(url).content.decode()

    data = {
        **_organization_form(organization),
        "billing_name": "Ωmega Αναλυτική ΑΕ",
        "billing_address": "Οδός 1\r\nΑθήνα",
        "tax_id": "EL123",
    }
    response = client.post(url, data)

    assert response.status_code == 302, response.content.decode()[:3000]
    organization.refresh_from_db()
    assert (organization.billing_name, organization.tax_id) == ("Ωmega Αναλυτική ΑΕ", "EL123")
    assert organization.billing_address == "Οδός 1\nΑθήνα"


@pytest.mark.parametrize(
    ("field", "value"), [("billing_address", "1 Road\u202e\nTown"), ("billing_name", "A\nB"), ("tax_id", "T\u200b1")]
)
def test_the_organization_page_refuses_hidden_characters_in_billing_details(organization, field, value):
    client = staff(superuser=True)
    url = f"/admin/accounts/organization/{organization.pk}/change/"

    response = client.post(url, {**_organization_form(organization), field: value})

    assert response.status_code == 200
    assert "Control and invisible formatting characters are not allowed" in response.content.decode()
    organization.refresh_from_db()
    assert getattr(organization, field) == ""
