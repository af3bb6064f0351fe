"""The statement's summary, CSV and PDF, from statements issued over real activity, against figures
kept by hand (tests/statements/activity.py)."""

from __future__ import annotations

import csv
import io
import random
from decimal import Decimal
from fractions import Fraction

import pytest
from pypdf import PdfReader

from accounts.models import Organization
from statements.render import ROUNDING_NOTE, amount_shown, statement_csv, statement_pdf
from statements.selectors import statement_summary
from tests.statements.activity import month_activity, month_issue, services_priced

pytestmark = pytest.mark.django_db


@pytest.fixture
def issued(organization, staff_user, api_client, eager_celery, django_capture_on_commit_callbacks, request):
    services_priced()
    seed = request.node.callspec.params.get("seed", 7) if hasattr(request.node, "callspec") else 7
    month = month_activity(
        organization, rng=random.Random(seed), capture=django_capture_on_commit_callbacks, staff=staff_user, api_client=api_client
    )
    return month, month_issue(organization)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_summary_is_the_months_activity_exactly(issued, seed):
    month, statement = issued
    summary = statement_summary(statement)
    assert Fraction(statement.opening_balance) == 0
    assert Fraction(statement.closing_balance) == month.total
    by_category: dict[str, Fraction] = {}
    for row in summary.rows:
        by_category[row.category] = by_category.get(row.category, Fraction(0)) + Fraction(row.amount)
    usage = {row.service_slug: Fraction(row.amount) for row in summary.usage_rows}
    assert usage == dict(month.usage)
    assert {row.service_slug: row.transfers for row in summary.usage_rows} == dict(month.usage_counts)
    expected = {**{c: Fraction(0) for c in by_category}, **month.expected, "usage": sum(month.usage.values(), Fraction(0))}
    assert by_category == expected
    assert sum((Fraction(row.amount) for row in summary.rows), Fraction(0)) == Fraction(statement.closing_balance) - Fraction(
        statement.opening_balance
    )
    assert [row.category for row in summary.rows if row.category != "usage"] == [
        "recharges",
        "subscription",
        "grants",
        "redemptions",
        "expiry",
        "refunds",
        "adjustments",
        "other",
    ]


def test_the_csv_is_exact_and_parses(issued):
    month, statement = issued
    body = statement_csv(statement=statement)
    assert body.decode("utf-8").count("\r\n") == statement.lines.count() + 3
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert [row["row"] for row in rows] == ["opening_balance", *["line"] * statement.lines.count(), "closing_balance"]
    assert {row["statement_number"] for row in rows} == {f"S-{statement.number:06d}"}
    assert {row["currency"] for row in rows} == {statement.currency}
    opening, *lines, closing = rows
    assert Fraction(Decimal(closing["amount"])) == month.total
    assert Fraction(Decimal(opening["amount"])) + sum(Fraction(Decimal(row["amount"])) for row in lines) == Fraction(
        Decimal(closing["amount"])
    )
    usage = {row["service"]: Fraction(Decimal(row["amount"])) for row in lines if row["kind"] == "usage"}
    assert usage == dict(month.usage)
    # every stored digit: the 12th place of the cheapest service survives
    assert any(row["amount"].endswith("7") for row in lines if row["service"] == "speech")


def test_the_pdf_shows_the_totals(issued):
    _, statement = issued
    reader = PdfReader(io.BytesIO(statement_pdf(statement=statement)))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert text.startswith("Tollgate") or "Tollgate" in text
    assert f"S-{statement.number:06d}" in text
    assert f"{statement.period_start:%B %Y}" in text
    summary = statement_summary(statement)
    for label, value in [
        ("Opening balance", summary.opening_balance),
        ("Closing balance", summary.closing_balance),
        *((row.label, row.amount) for row in summary.rows),
    ]:
        shown = amount_shown(value, statement.currency)
        assert f"{label}{shown}" in text.replace(" ", "") or f"{label} {shown}" in text, (label, shown)
    assert "Usage by service" in text and "Vision" in text and "Speech" in text
    assert "Service Transfers Amount" in text  # the usage table itself, not only the summary
    assert " ".join(ROUNDING_NOTE.split()) in " ".join(text.split())


def statement_by_hand(organization, lines, *, opening="0", currency="USD"):
    """A statement with the given (kind, service, amount, transfers) lines, inserted as issuance does."""
    from datetime import UTC, datetime

    from statements.models import Statement, StatementLine

    total = sum((Decimal(amount) for _, _, amount, _ in lines), Decimal(opening))
    from payments.receipts import document_parties

    statement = Statement.objects.create(
        organization=organization,
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC),
        currency=currency,
        opening_balance=Decimal(opening),
        closing_balance=total,
        **document_parties(organization),
    )
    for position, (kind, service, amount, transfers) in enumerate(lines, start=1):
        StatementLine.objects.create(
            statement=statement, position=position, kind=kind, service=service, amount=Decimal(amount), transfers=transfers
        )
    return Statement.objects.select_related("organization").prefetch_related("lines__service").get(pk=statement.pk)


def test_no_line_is_ever_dropped_from_the_summary(organization):
    (vision, _speech) = services_priced().values()
    statement = statement_by_hand(
        organization,
        [
            ("usage", vision, "-1.000000000001", 3),
            ("usage", None, "-0.5", 1),
            ("rebalance", None, "0", 2),
            ("bonus", None, "0.25", 1),  # a kind added later
        ],
        opening="10",
    )
    summary = statement_summary(statement)
    rows = {(row.category, row.label): (row.amount, row.transfers) for row in summary.rows}
    assert rows[("usage", "Usage: Vision")] == (Decimal("-1.000000000001"), 3)
    assert rows[("usage", "Usage (other)")] == (Decimal("-0.5"), 1)
    assert rows[("other", "Other")] == (Decimal("0.25"), 3)
    assert rows[("recharges", "Recharges")] == (0, 0)
    assert sum(row.amount for row in summary.rows) == statement.closing_balance - statement.opening_balance
    assert [row.service_slug for row in summary.usage_rows] == ["vision", None]


def test_a_quiet_month_shows_every_category_at_zero(organization):
    statement = statement_by_hand(organization, [], opening="3.5")
    summary = statement_summary(statement)
    assert [row.label for row in summary.rows] == [
        "Recharges",
        "Usage",
        "Subscription fees",
        "Credit grants",
        "Redeemed codes",
        "Expired credit",
        "Refunds",
        "Adjustments",
        "Other",
    ]
    assert all(row.amount == 0 for row in summary.rows)
    text = PdfReader(io.BytesIO(statement_pdf(statement=statement))).pages[0].extract_text()
    assert "Closing balance $3.50" in text and "No usage this month." in text


def test_the_csv_neutralises_formulas_in_text_cells(organization):
    Organization.objects.filter(pk=organization.pk).update(name='=HYPERLINK("http://evil.example","x")')
    service = services_priced()["vision"]
    type(service).objects.filter(pk=service.pk).update(name="@SUM(A1)")
    statement = statement_by_hand(Organization.objects.get(pk=organization.pk), [("usage", service, "-2", 1)])
    rows = list(csv.reader(io.StringIO(statement_csv(statement=statement).decode("utf-8"), newline="")))
    assert {row[1] for row in rows[1:]} == {'\'=HYPERLINK("http://evil.example","x")'}
    assert rows[2][8] == "'@SUM(A1)"
    assert rows[2][10] == "-2.000000000000"  # a negative amount stays a number


def test_the_pdf_names_both_parties(organization, settings):
    settings.SELLER_NAME = "Tollgate Ltd"
    settings.SELLER_ADDRESS = "1 Quay Street\\nDublin"
    settings.SELLER_TAX_ID = "IE1234567X"
    Organization.objects.filter(pk=organization.pk).update(
        billing_name="Ärzte Ωmega GmbH", billing_address="Hauptstraße 5\n10115 Berlin", tax_id="DE999999999"
    )
    organization.refresh_from_db()
    statement = statement_by_hand(organization, [("recharge", None, "1234.5", 1)], currency="EUR")
    text = PdfReader(io.BytesIO(statement_pdf(statement=statement))).pages[0].extract_text()
    for expected in [
        "Tollgate Ltd",
        "1 Quay Street",
        "Dublin",
        "Tax id: IE1234567X",
        "Ärzte Ωmega GmbH",
        "Hauptstraße 5",
        "10115 Berlin",
        "Tax id: DE999999999",
        "November 2026",
        "€1,234.50",
    ]:
        assert expected in text, expected
    # The parties are the statement's own, as they were when it was issued: a later change never alters it.
    Organization.objects.filter(pk=organization.pk).update(billing_name="", billing_address="")
    settings.SELLER_NAME = "Renamed Seller"
    statement.refresh_from_db()
    again = PdfReader(io.BytesIO(statement_pdf(statement=statement))).pages[0].extract_text()
    assert "Ärzte Ωmega GmbH" in again and "Hauptstraße 5" in again and "Tollgate Ltd" in again
    assert "Renamed Seller" not in again


def test_a_movement_smaller_than_a_cent_shows_its_digits_not_zero(organization):
    """−0.001 of a service prints −$0.001 on the PDF (its row and its usage line), never $0.00."""
    from tests.factories import ServiceFactory

    tiny = ServiceFactory(slug="tiny", name="Tiny")
    statement = statement_by_hand(organization, [("usage", tiny, "-0.001", 1), ("adjustment", None, "1", 1)])
    text = PdfReader(io.BytesIO(statement_pdf(statement=statement))).pages[0].extract_text()
    rows = text.splitlines()
    assert [line for line in rows if "Tiny" in line] == ["Usage: Tiny −$0.001", "Tiny 1 −$0.001"]
