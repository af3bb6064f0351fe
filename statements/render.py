"""The statement as files: the CSV (exact figures, every stored digit) and the PDF (amounts rounded to
the currency's usual decimals for the eye), both from the issued statement and its lines only."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Literal

from django.http import HttpResponse

from billing_site.csv_stream import attachment_disposition, csv_cell
from billing_site.money import ZERO, money_display, money_str
from billing_site.pdf import Document, document_date, party_loaded
from statements.models import Statement
from statements.selectors import statement_number_display, statement_period_display, statement_summary

CSV_HEADER = (
    "statement_number",
    "organization",
    "period_start",
    "period_end",
    "currency",
    "row",
    "kind",
    "service",
    "service_name",
    "transfers",
    "amount",
)
USAGE_OTHER_NAME = "Other (no service recorded)"
ROUNDING_NOTE = "Amounts are rounded to the currency's usual decimals for display; the CSV and the API carry the exact figures."


def statement_filename(statement: Statement, extension: str) -> str:
    """`statement-<org slug>-S-000007.pdf`."""
    return f"statement-{statement.organization.slug}-{statement_number_display(statement)}.{extension}"


def statement_csv(*, statement: Statement) -> bytes:
    """UTF-8 CSV (RFC 4180: every cell quoted, CRLF line ends): an `opening_balance` row, one `line` row
    per statement line in its order, a `closing_balance` row; amounts exact (money_str). Text cells
    that a spreadsheet would run as a formula are neutralised (csv_cell)."""
    organization = statement.organization
    common = [
        statement_number_display(statement),
        organization.name,
        statement.period_start.isoformat(),
        statement.period_end.isoformat(),
        statement.currency,
    ]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    rows: list[list[object]] = [[*common, "opening_balance", "", "", "", "", money_str(statement.opening_balance)]]
    for line in statement.lines.all():
        service = line.service
        rows.append(
            [
                *common,
                "line",
                line.kind,
                service.slug if service is not None else "",
                service.name if service is not None else "",
                line.transfers,
                money_str(line.amount),
            ]
        )
    rows.append([*common, "closing_balance", "", "", "", "", money_str(statement.closing_balance)])
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return out.getvalue().encode("utf-8")


def amount_shown(amount: Decimal, currency: str) -> str:
    """An amount as the PDF prints it: rounded to the currency's usual decimals, except a movement too
    small for them, which shows its own digits (up to 6) rather than a bare 0.00."""
    rounded = money_display(amount, currency)
    return money_display(amount, currency, precise=True) if amount and rounded == money_display(ZERO, currency) else rounded


def statement_pdf(*, statement: Statement) -> bytes:
    """The statement as a PDF: number, month and issue date; seller and customer; the summary from the
    opening to the closing balance by category; usage by service; amounts via money_display."""
    number, period, currency = statement_number_display(statement), statement_period_display(statement), statement.currency
    summary = statement_summary(statement)

    def shown(amount):
        return amount_shown(amount, currency)

    doc = Document(title="Statement", subject=f"Statement {number}, {period}", issuer=party_loaded(statement.seller))
    doc.heading(
        "Statement",
        facts=[("Number", number), ("Period", period), ("Issued", document_date(statement.issued_at)), ("Currency", currency)],
    )
    doc.parties(("From", doc.issuer), ("To", party_loaded(statement.billed_to)))
    doc.section("Summary")
    doc.amounts(
        [("Opening balance", shown(summary.opening_balance)), *((row.label, shown(row.amount)) for row in summary.rows)],
        total=("Closing balance", shown(summary.closing_balance)),
    )
    doc.section("Usage by service")
    usage = [row for row in summary.usage_rows if row.transfers or row.amount]
    if usage:
        doc.columns(
            ["Service", "Transfers", "Amount"],
            [[row.service_name or USAGE_OTHER_NAME, str(row.transfers), shown(row.amount)] for row in usage],
            widths=[0.6, 0.15, 0.25],
            right=[False, True, True],
        )
    else:
        doc.paragraph("No usage this month.")
    doc.paragraph(ROUNDING_NOTE, muted=True)
    doc.footer_set(f"Statement {number} · {period}")
    return bytes(doc)


def statement_download(*, statement: Statement, fmt: Literal["pdf", "csv"]) -> HttpResponse:
    """The statement's PDF or CSV as an attachment (`statement-<org slug>-S-000007.pdf`), never cached:
    what the API, the dashboard and the back office answer."""
    if fmt == "pdf":
        body, content_type = statement_pdf(statement=statement), "application/pdf"
    else:
        body, content_type = statement_csv(statement=statement), "text/csv; charset=utf-8"
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = attachment_disposition(statement_filename(statement, fmt))
    response["Cache-Control"] = "no-store"
    return response
