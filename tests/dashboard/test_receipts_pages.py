"""The dashboard's receipts and billing details: the download for owners and admins, the links on the
payment and billing pages for credited payments only, the Settings page's "Billing details" form."""

import pytest

from accounts.models import Organization
from payments.models import Payment
from tests.dashboard.conftest import client_for
from tests.factories import organization_create
from tests.payments.payment_helpers import sandbox_notify, sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import pdf_text

pytestmark = pytest.mark.django_db


def receipt_page(payment: Payment) -> str:
    return f"/dashboard/payments/{payment.pk}/receipt.pdf"


@pytest.fixture
def credited(organization) -> Payment:
    return settled_sandbox_payment(organization, "42.00")


# --- The download ---------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner_web", "admin_web"])
def test_owners_and_admins_download_the_receipt(request, organization, credited, who):
    response = request.getfixturevalue(who).get(receipt_page(credited))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="receipt-{organization.slug}-R-000001.pdf"'
    text = pdf_text(response.content)
    assert "R-000001" in text and "$42.00" in text


def test_members_may_not_download_receipts(member_web, credited):
    response = member_web.get(receipt_page(credited))
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")


def test_another_organizations_receipt_is_the_404_page(other_web, credited):
    response = other_web.get(receipt_page(credited))
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_payment_not_credited_has_no_receipt_to_download(owner_web, organization):
    pending = sandbox_payment(organization, "3.00")
    failed = sandbox_notify(sandbox_payment(organization, "4.00"), "payment.failed")
    for payment in (pending, failed):
        assert owner_web.get(receipt_page(payment)).status_code == 404
    assert owner_web.get("/dashboard/payments/987654321/receipt.pdf").status_code == 404


def test_the_receipt_follows_the_chosen_organization(owner, organization, credited):
    second = organization_create(name="Zeta Labs", owner=owner)
    client = client_for(owner)
    client.post("/dashboard/switch/", {"organization": second.slug})
    assert client.get(receipt_page(credited)).status_code == 404
    client.post("/dashboard/switch/", {"organization": organization.slug})
    assert client.get(receipt_page(credited)).status_code == 200


def test_signing_in_is_required(client, credited):
    response = client.get(receipt_page(credited))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_only_get_is_allowed(owner_web, credited):
    assert owner_web.post(receipt_page(credited)).status_code == 405


# --- The links --------------------------------------------------------------------------------------


def test_the_payment_page_offers_the_receipt_of_a_credited_payment(owner_web, organization, credited):
    html = owner_web.get(f"/dashboard/payments/{credited.pk}/").content.decode()
    assert "Download receipt" in html and receipt_page(credited) in html
    assert 'data-testid="receipt-number">R-000001<' in html

    pending = sandbox_payment(organization, "3.00")
    html = owner_web.get(f"/dashboard/payments/{pending.pk}/").content.decode()
    assert "Download receipt" not in html and "receipt-number" not in html


def test_billing_rows_link_receipts_of_credited_payments_only(owner_web, organization, credited):
    pending = sandbox_payment(organization, "3.00")
    failed = sandbox_notify(sandbox_payment(organization, "4.00"), "payment.failed")

    html = owner_web.get("/dashboard/billing/").content.decode()

    table = html[html.index('data-testid="payments-table"') :]
    assert receipt_page(credited) in table
    assert receipt_page(pending) not in table and receipt_page(failed) not in table
    assert table.count('data-testid="receipt-download"') == 1


# --- Billing details in Settings ----------------------------------------------------------------------

SETTINGS = "/dashboard/settings/"
BILLING = "/dashboard/settings/billing-details/"
GOOD = {"billing_name": "Ωmega Αναλυτική ΑΕ", "billing_address": "Οδός 1\r\nΑθήνα", "tax_id": "EL123456789"}


def stored(organization: Organization) -> tuple[str, str, str]:
    organization.refresh_from_db()
    return organization.billing_name, organization.billing_address, organization.tax_id


@pytest.mark.parametrize("who", ["owner_web", "admin_web"])
def test_owners_and_admins_save_billing_details(request, organization, who):
    client = request.getfixturevalue(who)
    assert 'data-testid="billing-details-form"' in client.get(SETTINGS).content.decode()

    response = client.post(BILLING, GOOD, follow=True)

    assert response.status_code == 200
    assert "Billing details saved" in response.content.decode()
    assert stored(organization) == ("Ωmega Αναλυτική ΑΕ", "Οδός 1\nΑθήνα", "EL123456789")
    assert "Ωmega Αναλυτική ΑΕ" in client.get(SETTINGS).content.decode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**GOOD, "billing_name": "Evil\u202eCorp"}, "billing_name"),
        ({**GOOD, "billing_address": "1 Road\x1b"}, "billing_address"),
        ({**GOOD, "tax_id": "x" * 65}, "tax_id"),
    ],
)
def test_bad_billing_details_say_why_and_change_nothing(owner_web, organization, data, field):
    response = owner_web.post(BILLING, data)

    assert response.status_code == 400
    html = response.content.decode()
    assert 'class="error"' in html and 'data-testid="billing-details-form"' in html
    assert stored(organization) == ("", "", "")


def test_members_read_billing_details_but_do_not_change_them(member_web, organization, owner):
    from accounts import services

    services.organization_billing_update(
        organization=organization, billing_name="Acme Ltd", billing_address="1 Road\nTown", tax_id="T-1", actor=owner
    )

    html = member_web.get(SETTINGS).content.decode()

    assert 'data-testid="billing-details"' in html and 'data-testid="billing-details-form"' not in html
    assert "Acme Ltd" in html and "1 Road<br>Town" in html and "T-1" in html
    assert member_web.post(BILLING, GOOD).status_code == 403
    assert stored(organization) == ("Acme Ltd", "1 Road\nTown", "T-1")


def test_billing_details_are_set_on_the_chosen_organization_only(owner, organization):
    second = organization_create(name="Zeta Labs", owner=owner)
    client = client_for(owner)
    client.post("/dashboard/switch/", {"organization": second.slug})

    client.post(BILLING, GOOD)

    assert stored(second)[0] == "Ωmega Αναλυτική ΑΕ"
    assert stored(organization) == ("", "", "")
