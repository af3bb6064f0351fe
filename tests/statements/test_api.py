"""GET statements/, statements/{id}/, …/pdf/, …/csv/: owners and admins only, their organization only,
amounts as exact strings; every error in the standard shape."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pypdf import PdfReader

from billing_site.money import money_display
from statements.models import Statement
from statements.selectors import statement_summary
from tests.conftest import jwt_client
from tests.factories import UserFactory
from tests.payments.helpers import assert_error
from tests.statements.activity import month_activity, month_issue, services_priced
from tests.statements.test_render import statement_by_hand

pytestmark = pytest.mark.django_db
LIST = "/api/v1/statements/"


def urls(statement_id: int) -> list[str]:
    base = f"{LIST}{statement_id}/"
    return [base, f"{base}pdf/", f"{base}csv/"]


@pytest.fixture
def issued(organization, staff_user, api_client, eager_celery, django_capture_on_commit_callbacks):
    services_priced()
    month = month_activity(
        organization, rng=random.Random(11), capture=django_capture_on_commit_callbacks, staff=staff_user, api_client=api_client
    )
    return month, month_issue(organization)


def test_the_list_is_newest_first_with_exact_amounts(owner_client, organization):
    older = statement_by_hand(organization, [("adjustment", None, "0.000000000001", 1)], opening="5")
    newer = Statement.objects.create(
        organization=organization,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        period_end=datetime(2027, 1, 1, tzinfo=UTC),
        currency="USD",
        opening_balance=older.closing_balance,
        closing_balance=older.closing_balance,
    )
    response = owner_client.get(LIST)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 2
    assert [row["id"] for row in body["results"]] == [newer.pk, older.pk]
    assert [row["number"] for row in body["results"]] == [2, 1]
    first = body["results"][1]
    assert set(first) == {
        "id",
        "number",
        "period_start",
        "period_end",
        "currency",
        "opening_balance",
        "closing_balance",
        "issued_at",
    }
    assert first["opening_balance"] == "5.000000000000"
    assert first["closing_balance"] == "5.000000000001"
    assert first["period_start"] == "2026-11-01T00:00:00Z" and first["period_end"] == "2026-12-01T00:00:00Z"
    page = owner_client.get(LIST, {"page_size": 1, "page": 2}).json()
    assert [row["id"] for row in page["results"]] == [older.pk] and page["next"] is None and page["previous"]


def test_the_detail_carries_lines_and_summary_exactly(owner_client, issued):
    month, statement = issued
    body = owner_client.get(urls(statement.pk)[0]).json()
    assert body["id"] == statement.pk and body["number"] == statement.number
    assert Decimal(body["closing_balance"]) == statement.closing_balance
    lines = body["lines"]
    assert [set(line) for line in lines] == [{"kind", "service", "service_name", "transfers", "amount"}] * len(lines)
    assert [(line["kind"], line["service"], line["amount"]) for line in lines] == [
        (line.kind, line.service.slug if line.service else None, format(line.amount, "f")) for line in statement.lines.all()
    ]
    usage = {line["service"]: Decimal(line["amount"]) for line in lines if line["kind"] == "usage"}
    assert usage == {slug: Decimal(value.numerator) / Decimal(value.denominator) for slug, value in month.usage.items()}
    assert {line["service_name"] for line in lines if line["kind"] == "usage"} == {"Vision", "Speech"}
    summary = body["summary"]
    assert summary["opening_balance"] == body["opening_balance"] and summary["closing_balance"] == body["closing_balance"]
    rows = summary["rows"]
    assert sum(Decimal(row["amount"]) for row in rows) == Decimal(body["closing_balance"]) - Decimal(body["opening_balance"])
    assert all(len(row["amount"].split(".")[1]) == 12 for row in rows)
    assert [row["label"] for row in rows] == [row.label for row in statement_summary(statement).rows]


def test_the_pdf_downloads(owner_client, issued, organization):
    _, statement = issued
    response = owner_client.get(urls(statement.pk)[1], HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="statement-{organization.slug}-S-{statement.number:06d}.pdf"'
    assert response["Cache-Control"] == "no-store"
    assert response.content.startswith(b"%PDF-")
    text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert f"Closing balance {money_display(statement.closing_balance, statement.currency)}" in text


def test_the_csv_downloads(org_admin_client, issued, organization):
    _, statement = issued
    response = org_admin_client.get(urls(statement.pk)[2], HTTP_ACCEPT="text/csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="statement-{organization.slug}-S-{statement.number:06d}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert rows[-1]["row"] == "closing_balance" and rows[-1]["amount"] == format(statement.closing_balance, "f")


def test_admins_may_read_everything(org_admin_client, organization):
    statement = statement_by_hand(organization, [])
    assert org_admin_client.get(LIST).status_code == 200
    for url in urls(statement.pk):
        assert org_admin_client.get(url).status_code == 200, url


def test_without_credentials_nothing_is_answered(api_client, organization):
    statement = statement_by_hand(organization, [])
    for url in [LIST, *urls(statement.pk)]:
        assert_error(api_client.get(url), 401, "not_authenticated")
        assert_error(api_client.get(url, HTTP_AUTHORIZATION="Bearer tg_live_nonsense"), 401, "invalid_api_key")


def test_members_and_api_keys_are_refused(member_client, live_client, organization):
    statement = statement_by_hand(organization, [])
    for client in (member_client, live_client):
        for url in [LIST, *urls(statement.pk)]:
            assert_error(client.get(url), 403, "permission_denied")
        # a client asking for the file it wants still gets its refusal, in JSON
        for url in urls(statement.pk)[1:]:
            assert_error(client.get(url, HTTP_ACCEPT="application/pdf, text/csv"), 403, "permission_denied")


def test_another_organizations_statement_is_not_found(owner_client, organization, other_organization, other_owner):
    mine = statement_by_hand(organization, [])
    theirs = statement_by_hand(other_organization, [("adjustment", None, "9", 1)])
    for url in urls(theirs.pk):
        error = assert_error(owner_client.get(url), 404, "not_found")
        assert error["message"] == "No such statement."
    assert [row["id"] for row in owner_client.get(LIST).json()["results"]] == [mine.pk]
    theirs_client = jwt_client(other_owner)
    assert [row["id"] for row in theirs_client.get(LIST).json()["results"]] == [theirs.pk]
    for url in urls(mine.pk):
        assert_error(theirs_client.get(url), 404, "not_found")
    # naming an organization one does not belong to
    assert_error(owner_client.get(LIST, HTTP_X_ORGANIZATION=other_organization.slug), 404, "not_found")
    for url in urls(theirs.pk):
        assert_error(owner_client.get(url, HTTP_X_ORGANIZATION=other_organization.slug), 404, "not_found")


def test_unknown_ids_and_methods_are_refused(owner_client, organization):
    statement = statement_by_hand(organization, [])
    for url in urls(statement.pk + 1000):
        assert_error(owner_client.get(url), 404, "not_found")
    assert_error(owner_client.get(f"{LIST}abc/"), 404, "not_found")
    for url in [LIST, *urls(statement.pk)]:
        assert_error(owner_client.post(url, {}, format="json"), 405, "method_not_allowed")
        assert_error(owner_client.delete(url), 405, "method_not_allowed")


def test_a_person_in_two_organizations_must_name_one(organization, other_organization):
    user = UserFactory()
    organization.memberships.create(user=user, role="owner")
    other_organization.memberships.create(user=user, role="owner")
    client = jwt_client(user)
    assert_error(client.get(LIST), 400, "organization_required")
    statement = statement_by_hand(other_organization, [])
    assert client.get(urls(statement.pk)[0], HTTP_X_ORGANIZATION=other_organization.slug).status_code == 200
    assert_error(client.get(urls(statement.pk)[0], HTTP_X_ORGANIZATION=organization.slug), 404, "not_found")


def test_the_schema_describes_the_files(client, db):
    schema = client.get("/api/schema/?format=json").json()
    pdf = schema["paths"]["/api/v1/statements/{statement_id}/pdf/"]["get"]["responses"]["200"]["content"]
    csv_ = schema["paths"]["/api/v1/statements/{statement_id}/csv/"]["get"]["responses"]["200"]["content"]
    assert pdf["application/pdf"]["schema"] == {"type": "string", "format": "binary"}
    assert csv_["text/csv"]["schema"] == {"type": "string", "format": "binary"}
    detail = schema["paths"]["/api/v1/statements/{statement_id}/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert detail["schema"] == {"$ref": "#/components/schemas/StatementDetail"}
    components = schema["components"]["schemas"]
    assert {"Statement", "StatementDetail", "StatementLine", "StatementSummary", "StatementSummaryRow", "StatementPage"} <= set(
        components
    )
