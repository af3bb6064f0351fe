"""The dashboard's Statements page and downloads (owners and admins, their organization only), and the
back office's read-only statements with their downloads (staff; Support may download)."""

from __future__ import annotations

import csv
import importlib
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.test import Client
from pypdf import PdfReader

from statements.models import Statement
from tests.factories import UserFactory
from tests.statements.test_render import statement_by_hand

pytestmark = pytest.mark.django_db
PAGE = "/dashboard/statements/"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def downloads(statement: Statement) -> list[str]:
    return [f"{PAGE}{statement.pk}/pdf/", f"{PAGE}{statement.pk}/csv/"]


@pytest.fixture
def statement(organization):
    return statement_by_hand(
        organization, [("recharge", None, "1234.567890123456", 2), ("adjustment", None, "-0.005", 1)], opening="10"
    )


def test_an_owner_sees_the_statements_and_downloads_them(owner, organization, statement):
    client = signed_in(owner)
    page = client.get(PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert f"S-{statement.number:06d}" in html and "November 2026" in html
    assert "$10.00" in html and "$1,244.56" in html  # opening and closing, rounded half-even for display
    assert 'title="1244.562890123456 USD"' in html  # the exact figure on hover
    for url in downloads(statement):
        assert f'href="{url}"' in html
    assert 'href="/dashboard/statements/" aria-current="page"' in html  # the nav link, current
    pdf = client.get(downloads(statement)[0])
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf["Content-Disposition"] == f'attachment; filename="statement-{organization.slug}-S-{statement.number:06d}.pdf"'
    assert "Closing balance $1,244.56" in PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    rows = list(csv.DictReader(io.StringIO(client.get(downloads(statement)[1]).content.decode(), newline="")))
    assert rows[-1]["amount"] == "1244.562890123456"


def test_the_empty_state_says_when_the_first_one_comes(owner, organization):
    html = signed_in(owner).get(PAGE).content.decode()
    assert "Your first statement is issued after your first month closes." in html


def test_admins_may_and_members_may_not(org_admin, member, statement):
    admin = signed_in(org_admin)
    assert admin.get(PAGE).status_code == 200
    assert all(admin.get(url).status_code == 200 for url in downloads(statement))
    client = signed_in(member)
    for url in [PAGE, *downloads(statement)]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert "Owners and admins only" in response.content.decode()
    assert 'href="/dashboard/statements/"' not in client.get("/dashboard/").content.decode()  # no nav link for members


def test_another_organizations_statement_is_not_found(other_owner, organization, statement):
    client = signed_in(other_owner)
    for url in [*downloads(statement), f"{PAGE}999999/pdf/"]:
        response = client.get(url)
        assert response.status_code == 404 and "There is nothing here" in response.content.decode()
    assert f"S-{statement.number:06d}" not in client.get(PAGE).content.decode()


def test_signed_out_people_are_sent_to_sign_in(client, statement):
    for url in [PAGE, *downloads(statement)]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    assert signed_in(UserFactory()).get(PAGE).status_code == 302  # no organization yet: the welcome page


def test_only_get_is_answered(owner, statement):
    client = signed_in(owner)
    for url in [PAGE, *downloads(statement)]:
        assert client.post(url).status_code == 405


# --- Back office ---------------------------------------------------------------------------------


@pytest.fixture
def staff_groups(db):
    """The groups come from data migrations; transactional tests elsewhere truncate them."""
    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("statements.migrations.0002_staff_groups").extend_groups(apps, None)


def staff(group: str | None = None) -> Client:
    user = UserFactory(is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return signed_in(user)


def admin_downloads(statement: Statement) -> list[str]:
    return [f"/admin/statements/statement/{statement.pk}/pdf/", f"/admin/statements/statement/{statement.pk}/csv/"]


@pytest.mark.parametrize("group", ["Support", "Billing admins"])
def test_staff_list_open_and_download_statements(staff_groups, statement, organization, group):
    client = staff(group)
    listing = client.get("/admin/statements/statement/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert f"S-{statement.number:06d}" in html and "November 2026" in html and "$1,244.56" in html
    assert "Download PDF" in html and "Download CSV" in html
    assert "/admin/statements/statement/add/" not in html
    detail = client.get(f"/admin/statements/statement/{statement.pk}/change/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "1244.562890123456" in body and "Recharge" in body.title()  # the lines inline
    assert 'name="_save"' not in body  # nothing to save
    pdf, csv_ = (client.get(url) for url in admin_downloads(statement))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF-")
    assert csv_.status_code == 200 and csv_["Content-Type"] == "text/csv; charset=utf-8"
    assert f"S-{statement.number:06d}" in csv_.content.decode()


def test_statements_filter_by_organization_and_month(staff_groups, statement, organization, other_organization):
    theirs = statement_by_hand(other_organization, [("adjustment", None, "7", 1)])
    december = Statement.objects.create(
        organization=organization,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        period_end=datetime(2027, 1, 1, tzinfo=UTC),
        currency="USD",
        opening_balance=statement.closing_balance,
        closing_balance=statement.closing_balance,
    )
    client = staff("Support")

    def shown(query: str) -> set[int]:
        response = client.get(f"/admin/statements/statement/?{query}")
        assert response.status_code == 200
        return set(response.context["cl"].result_list.values_list("pk", flat=True))

    assert shown("") == {statement.pk, theirs.pk, december.pk}
    assert shown(f"organization={organization.slug}") == {statement.pk, december.pk}
    assert shown("period=2026-11") == {statement.pk, theirs.pk}
    assert shown(f"period=2026-12&organization={organization.slug}") == {december.pk}
    assert shown("period=2026-13") == set()


def test_nothing_can_be_added_changed_or_deleted(staff_groups, statement):
    client = staff()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    assert client.get("/admin/statements/statement/add/").status_code == 403
    assert client.post(f"/admin/statements/statement/{statement.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(f"/admin/statements/statement/{statement.pk}/change/", {"currency": "EUR"})
    statement.refresh_from_db()
    assert statement.currency == "USD" and statement.closing_balance == Decimal("1244.562890123456")


def test_staff_without_the_right_and_customers_cannot_download(staff_groups, statement, owner):
    for client in (staff(), signed_in(owner)):
        for url in admin_downloads(statement):
            response = client.get(url)
            assert response.status_code in (302, 403), url
            assert not response.get("Content-Type", "").startswith(("application/pdf", "text/csv"))
    assert staff("Support").get("/admin/statements/statement/999999/pdf/").status_code == 404
