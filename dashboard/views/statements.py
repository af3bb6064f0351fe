"""Monthly statements: the list, and each one's PDF and CSV (owners and admins, like the billing pages)."""

from __future__ import annotations

from django.http import Http404
from django.views.decorators.http import require_GET

from dashboard.context import dashboard_view, page
from statements import render
from statements import selectors as statement_selectors
from statements.models import Statement

STATEMENTS_SHOWN = 120  # ten years of months


@require_GET
@dashboard_view(managers_only=True)
def statements(request, current):
    rows = list(statement_selectors.statement_list(organization_id=current.organization.pk)[:STATEMENTS_SHOWN])
    context = {
        "rows": [
            {
                "statement": statement,
                "number": statement_selectors.statement_number_display(statement),
                "month": statement_selectors.statement_period_display(statement),
            }
            for statement in rows
        ]
    }
    return page(request, "dashboard/statements.html", context)


def _statement(current, statement_id: int) -> Statement:
    statement = statement_selectors.statement_get(organization_id=current.organization.pk, statement_id=statement_id)
    if statement is None:
        raise Http404("No such statement.")
    return statement


@require_GET
@dashboard_view(managers_only=True, document=True)
def statement_pdf(request, current, statement_id: int):
    statement = _statement(current, statement_id)
    return render.statement_download(statement=statement, fmt="pdf")


@require_GET
@dashboard_view(managers_only=True, document=True)
def statement_csv(request, current, statement_id: int):
    statement = _statement(current, statement_id)
    return render.statement_download(statement=statement, fmt="csv")
