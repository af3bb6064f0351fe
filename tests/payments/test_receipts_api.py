"""GET payments/{id}/receipt/: the PDF for owners and admins; every refusal in the standard error body,
another organization's payment answering 404 like an unknown one."""

import pytest
from rest_framework.test import APIClient

from payments.models import Payment, PaymentStatus
from tests.payments.helpers import assert_error
from tests.payments.payment_helpers import sandbox_notify, sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import pdf_text, receipt_url
from tests.payments.test_refunds import refund

pytestmark = pytest.mark.django_db


@pytest.fixture
def credited(organization) -> Payment:
    settled_sandbox_payment(organization, "1.00")
    return settled_sandbox_payment(organization, "42.00")


def assert_receipt(response, *, slug: str, number: str, amount: str) -> str:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="receipt-{slug}-{number}.pdf"'
    text = pdf_text(response.content)
    assert number in text and amount in text, text
    return text


@pytest.mark.parametrize("who", ["owner_client", "org_admin_client"])
def test_owners_and_admins_download_the_receipt(request, organization, credited, who):
    response = request.getfixturevalue(who).get(receipt_url(credited))

    assert_receipt(response, slug=organization.slug, number="R-000002", amount="$42.00")
    assert "no-store" in response["Cache-Control"]


def test_a_client_asking_for_a_pdf_gets_it_and_its_errors_as_json(owner_client, organization, credited):
    response = owner_client.get(receipt_url(credited), HTTP_ACCEPT="application/pdf")
    assert_receipt(response, slug=organization.slug, number="R-000002", amount="$42.00")

    missing = owner_client.get(receipt_url(987654321), HTTP_ACCEPT="application/pdf")
    assert missing["Content-Type"] == "application/json"
    assert_error(missing, 404, "not_found")


def test_a_refunded_payment_keeps_its_receipt(owner_client, organization, credited, staff_user):
    refund(credited, "40.00", staff=staff_user)

    text = assert_receipt(owner_client.get(receipt_url(credited)), slug=organization.slug, number="R-000002", amount="$42.00")
    assert "−$40.00" in text and "Net paid" in text and "$2.00" in text


@pytest.mark.parametrize("outcome", ["pending", "failed"])
def test_a_payment_not_credited_has_no_receipt(owner_client, organization, outcome):
    payment = sandbox_payment(organization, "3.00")
    if outcome == "failed":
        assert sandbox_notify(payment, "payment.failed").status == PaymentStatus.FAILED

    error = assert_error(owner_client.get(receipt_url(payment)), 404, "receipt_not_found")

    assert "only credited payments" in error["message"]


def test_an_unknown_payment_is_not_found(owner_client, credited):
    error = assert_error(owner_client.get(receipt_url(credited.pk + 1000)), 404, "not_found")
    assert error["message"] == "No such payment."


def test_another_organizations_payment_is_404_like_an_unknown_one(other_owner_client, credited):
    error = assert_error(other_owner_client.get(receipt_url(credited)), 404, "not_found")
    assert error["message"] == "No such payment."


def test_another_organizations_pending_payment_says_nothing_of_its_receipt(other_owner_client, organization):
    pending = sandbox_payment(organization, "3.00")
    assert_error(other_owner_client.get(receipt_url(pending)), 404, "not_found")


def test_naming_an_organization_you_are_not_in_is_404(owner_client, credited, other_organization):
    response = owner_client.get(receipt_url(credited), HTTP_X_ORGANIZATION=other_organization.slug)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("who", ["member_client", "live_client"])
def test_members_and_api_keys_may_not_download_receipts(request, credited, who):
    assert_error(request.getfixturevalue(who).get(receipt_url(credited)), 403, "permission_denied")


def test_a_test_key_may_not_download_receipts(test_key, credited):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {test_key.secret}")
    assert_error(client.get(receipt_url(credited)), 403, "permission_denied")


def test_receipts_require_authentication(api_client, credited):
    assert_error(api_client.get(receipt_url(credited)), 401, "not_authenticated")


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_only_get_is_allowed(owner_client, credited, method):
    assert_error(getattr(owner_client, method)(receipt_url(credited)), 405, "method_not_allowed")


def test_the_schema_describes_the_receipt_as_a_pdf(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/payments/{payment_id}/receipt/"]["get"]
    assert operation["responses"]["200"]["content"] == {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}
    assert "receipt_not_found" in operation["responses"]["404"]["description"]
    assert operation["responses"]["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {"401", "403"} <= set(operation["responses"])
