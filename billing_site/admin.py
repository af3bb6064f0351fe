"""Back-office building blocks every app's admin shares (nothing is registered here)."""

import json
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is never edited: no add, change or delete from the admin (the database refuses too)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent and never edited there: every field read-only, nothing added,
    changed or deleted."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to `exact_limit` rows and answers PostgreSQL's estimate above it: a changelist
    over ten million rows must not count them all on every page load. The estimate is the planner's row
    count for the filtered query (EXPLAIN, no rows read), so it follows filters too."""

    exact_limit = 10_000

    @cached_property
    def count(self) -> int:
        rows: QuerySet = self.object_list  # type: ignore[assignment]  # changelists paginate querysets
        exact = rows[: self.exact_limit + 1].count()
        if exact <= self.exact_limit:
            return exact
        sql, params = rows.order_by().query.sql_with_params()
        with connections[rows.db].cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return max(self.exact_limit + 1, int(plan[0]["Plan"]["Plan Rows"]))


_NEXT_PERIOD = {
    "year": lambda start: start.replace(year=start.year + 1),
    "month": lambda start: start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1),
    "day": lambda start: start + timedelta(days=1),
}


class IndexedDatesQuerySet(QuerySet):
    """`datetimes()` (what the admin's date hierarchy lists: the years, a year's months, a month's days)
    by one indexed probe per period found — the first row at or after the period's start — instead of a
    DISTINCT over every row of the range. Needs an index that starts with the field."""

    def datetimes(self, field_name: str, kind: Any, order: Any = "ASC", tzinfo: Any = None) -> Any:
        if kind not in _NEXT_PERIOD or order != "ASC" or tzinfo is not None:
            return super().datetimes(field_name, kind, order, tzinfo)
        current = timezone.get_current_timezone()
        firsts = self.order_by(field_name).values_list(field_name, flat=True)
        periods: list[datetime] = []
        start = None
        while (first := (firsts if start is None else firsts.filter(**{f"{field_name}__gte": start})).first()) is not None:
            local = timezone.localtime(first, current)
            period = local.replace(
                month=1 if kind == "year" else local.month,
                day=1 if kind in ("year", "month") else local.day,
                hour=0,
                minute=0,
                second=0,
                microsecond=0,
            )
            periods.append(period)
            start = _NEXT_PERIOD[kind](period)
        return periods


class LargeTableAdmin(ReadOnlyAdmin):
    """The history tables that grow to millions of rows (usage, transfers, ledger entries): no full count
    on a page load (estimated above 10,000 rows), and a date hierarchy that probes an index rather than
    reading every row of the year. `bench/bigdata.py` measures these changelists at 10M records."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Rendering a changelist row costs about a millisecond of Python (template tags per cell), whatever
    # the table's size: 50 rows keep the page near the dashboard's cost. Filters and search find the rest.
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        rows = super().get_queryset(request)
        return IndexedDatesQuerySet(model=rows.model, query=rows.query, using=rows.db)
