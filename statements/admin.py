"""The back office's statements: read-only, with each one's PDF and CSV for staff who may view them
(Support too)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html

from billing_site.admin import OrganizationFilter, ReadOnlyAdmin, ReadOnlyInline, money_cell
from statements import render
from statements.models import Statement, StatementLine
from statements.selectors import statement_document_get, statement_number_display, statement_period_display

MONTHS_IN_FILTER = 36
PERIOD_VALUE = re.compile(r"(?P<year>[1-9][0-9]{3})-(?P<month>[0-9]{2})")


class PeriodFilter(admin.SimpleListFilter):
    """The statement's month, among the latest months any statement covers."""

    title = "period"
    parameter_name = "period"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        months = Statement.objects.order_by("-period_start").values_list("period_start", flat=True).distinct()
        return [(f"{month:%Y-%m}", f"{month:%B %Y}") for month in months[:MONTHS_IN_FILTER]]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        if not value:
            return queryset
        # ASCII digits and a year a datetime can hold: a hand-typed `?period=` is never a server error.
        match = PERIOD_VALUE.fullmatch(value)
        if match is None or not 1 <= int(match["month"]) <= 12:
            return queryset.none()
        return queryset.filter(period_start__year=int(match["year"]), period_start__month=int(match["month"]))


class StatementLineInline(ReadOnlyInline):
    model = StatementLine
    fields = ("position", "kind", "service", "transfers", "amount_shown")

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("statement", "service")

    @admin.display(description="amount")
    def amount_shown(self, line: StatementLine) -> str:
        return money_cell(line.amount, line.statement.currency)


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = [
        "number_shown",
        "organization",
        "period_shown",
        "currency",
        "opening_shown",
        "closing_shown",
        "issued_at",
        "emailed_at",
        "downloads",
    ]
    list_filter = [OrganizationFilter, PeriodFilter]
    list_select_related = ["organization"]
    search_fields = ["organization__slug", "organization__name"]
    fields = readonly_fields = (
        "number_shown",
        "organization",
        "period_shown",
        "period_start",
        "period_end",
        "currency",
        "opening_shown",
        "closing_shown",
        "issued_at",
        "emailed_at",
        "downloads",
    )
    inlines = [StatementLineInline]

    @admin.display(description="number", ordering="number")
    def number_shown(self, statement: Statement) -> str:
        return statement_number_display(statement)

    @admin.display(description="period", ordering="period_start")
    def period_shown(self, statement: Statement) -> str:
        return statement_period_display(statement)

    @admin.display(description="opening balance")
    def opening_shown(self, statement: Statement) -> str:
        return money_cell(statement.opening_balance, statement.currency)

    @admin.display(description="closing balance")
    def closing_shown(self, statement: Statement) -> str:
        return money_cell(statement.closing_balance, statement.currency)

    @admin.display(description="download")
    def downloads(self, statement: Statement) -> str:
        return format_html(
            '<a href="{}">Download PDF</a> · <a href="{}">Download CSV</a>',
            reverse("admin:statements_statement_pdf", args=[statement.pk]),
            reverse("admin:statements_statement_csv", args=[statement.pk]),
        )

    def get_urls(self) -> list[Any]:
        return [
            path("<int:statement_id>/pdf/", self.admin_site.admin_view(self.pdf_view), name="statements_statement_pdf"),
            path("<int:statement_id>/csv/", self.admin_site.admin_view(self.csv_view), name="statements_statement_csv"),
            *super().get_urls(),
        ]

    def _statement(self, request: HttpRequest, statement_id: int) -> Statement:
        if not self.has_view_permission(request):
            raise PermissionDenied
        statement = statement_document_get(statement_id=statement_id)
        if statement is None:
            raise Http404("No such statement.")
        return statement

    def pdf_view(self, request: HttpRequest, statement_id: int) -> HttpResponse:
        statement = self._statement(request, statement_id)
        return render.statement_download(statement=statement, fmt="pdf")

    def csv_view(self, request: HttpRequest, statement_id: int) -> HttpResponse:
        statement = self._statement(request, statement_id)
        return render.statement_download(statement=statement, fmt="csv")
