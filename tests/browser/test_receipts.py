"""Receipts in Chromium: an owner sets the billing details in Settings, then downloads a receipt from
the billing page's payment history; the file is a PDF whose text has the amount and those details
(a receipt keeps the details it was issued with, so the payment is credited after they are saved)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.axe import axe_check
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create
from tests.payments.payment_helpers import sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import pdf_text

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_owner_downloads_a_receipt_from_the_billing_page(visitor_factory, tmp_path):
    owner = UserFactory(email="ada@example.com")
    organization = organization_create(name="Analytical Engines", owner=owner)
    settled_sandbox_payment(organization, "5.00")
    visit = visitor_factory()
    log_in(visit, owner.email)
    page = visit.page

    visit.goto("/dashboard/settings/")
    form = page.get_by_test_id("billing-details-form")
    form.get_by_label("Billing name").fill("Łódź Engines Sp. z o.o.")
    form.get_by_label("Billing address").fill("ul. Piotrkowska 1\n90-001 Łódź")
    form.get_by_label("Tax id").fill("PL1234567890")
    form.get_by_role("button", name="Save billing details").click()
    expect(page.locator(".flash-success")).to_contain_text("Billing details saved")
    payment = settled_sandbox_payment(organization, "1234.50")
    sandbox_payment(organization, "9.00")  # pending: no receipt to offer

    visit.goto("/dashboard/billing/")
    table = page.get_by_test_id("payments-table")
    links = table.get_by_test_id("receipt-download")
    expect(links).to_have_count(2)
    axe_check(page)
    visit.shot("billing-receipt-links")
    row = table.locator("tr", has_text="$1,234.50")
    with page.expect_download() as download_info:
        row.get_by_role("link", name="Download receipt").click()
    download = download_info.value

    assert download.suggested_filename == f"receipt-{organization.slug}-R-000002.pdf"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    text = pdf_text(saved.read_bytes())
    assert "$1,234.50" in text and "R-000002" in text, text
    assert "Łódź Engines Sp. z o.o." in text and "90-001 Łódź" in text and "Tax id: PL1234567890" in text
    assert payment.provider_reference in text
