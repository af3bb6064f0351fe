"""The Statements page as an owner uses it, in headless Chromium with axe-core: the list, then the PDF
downloaded by a click and read back."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect
from pypdf import PdfReader

from statements.selectors import statement_number_display
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, wallet_fund
from tests.statements.activity import month_issue, month_live

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_owner_downloads_a_statement_pdf(visitor_factory):
    owner = UserFactory(email="grace@example.com")
    organization = organization_create(name="Compilers", owner=owner)
    month_live(organization)
    wallet_fund(organization, Decimal("1234.565"))
    wallet_fund(organization, Decimal("-0.000000000001"))
    statement = month_issue(organization)
    number = statement_number_display(statement)

    visitor = visitor_factory()
    log_in(visitor, owner.email)
    page = visitor.page
    page.get_by_role("link", name="Statements", exact=True).click()
    page.wait_for_url("**/dashboard/statements/")
    row = page.get_by_test_id(f"statement-{statement.pk}")
    expect(row).to_contain_text(number)
    expect(row).to_contain_text("$1,234.56")  # the closing balance, rounded half-even for display
    axe_check(page, context="statements page")
    visitor.shot("statements")

    with page.expect_download() as download:
        row.get_by_role("link", name=f"Download {number}", exact=False).first.click()
    assert download.value.suggested_filename == f"statement-{organization.slug}-{number}.pdf"
    body = download.value.path().read_bytes()
    assert body.startswith(b"%PDF-")
    text = PdfReader(download.value.path()).pages[0].extract_text()
    assert "Closing balance $1,234.56" in text and number in text

    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=visitor.context.storage_state())
    phone.goto("/dashboard/statements/")
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the statements page scrolls sideways on a phone ({width}px)"
    phone.shot("statements")


def test_support_opens_a_statement_in_the_back_office_and_downloads_its_csv(visitor):
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group

    from tests.factories import PASSWORD

    # transactional tests truncate the groups their data migrations made
    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("statements.migrations.0002_staff_groups").extend_groups(apps, None)
    support = UserFactory(email="support@tollgate.test", is_staff=True)
    support.groups.add(Group.objects.get(name="Support"))
    organization = organization_create(name="Difference Engines")
    month_live(organization)
    wallet_fund(organization, Decimal("42.000000000042"))
    statement = month_issue(organization)
    number = statement_number_display(statement)

    visitor.goto("/admin/login/")
    page = visitor.page
    page.get_by_label("Email").fill(support.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")
    visitor.goto("/admin/statements/statement/")
    axe_check(page, context="back office statements")
    visitor.shot("admin-statements")
    page.get_by_role("link", name=number).click()
    page.wait_for_url(f"**/admin/statements/statement/{statement.pk}/change/")
    axe_check(page, context="back office statement")
    visitor.shot("admin-statement")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename == f"statement-{organization.slug}-{number}.csv"
    assert '"closing_balance","","","","","42.000000000042"' in download.value.path().read_text()
