"""Back-office building blocks every app's admin shares (nothing is registered here)."""

import json
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections, models
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from billing_site.money import money_format, money_str, plain_amount


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


class AmountInput(forms.NumberInput):
    """A money input that shows plain digits: a stored zero is Decimal('0E-12'), which Django's
    widget would print as it is."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"step": "any", "class": "amount-input", **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, Decimal) and value.is_finite():
            return plain_amount(value)
        return super().format_value(value)


class AccessibleLabels:
    """Names every input after its field for assistive technology: a tabular inline's row has column
    headers, not <label>s, and Django's split date/time input has one <label> for two boxes."""

    fields: dict[str, forms.Field]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            label = capfirst(str(field.label or name.replace("_", " ")))
            if isinstance(field.widget, forms.SplitDateTimeWidget):
                date, time = field.widget.widgets
                date.attrs["aria-label"] = f"{label}: date"
                time.attrs["aria-label"] = f"{label}: time"
            else:
                field.widget.attrs.setdefault("aria-label", label)
                # The admin wraps a select of related rows (add/change links beside it); the wrapper's
                # copy in this form renders its own inner widget, whose attrs are the ones that count.
                inner = getattr(field.widget, "widget", None)
                if isinstance(inner, forms.Widget):
                    inner.attrs.setdefault("aria-label", label)


class LabelledForm(AccessibleLabels, forms.ModelForm):
    """The admin's model form with every input named (see AccessibleLabels)."""


class LabelledInlineFormSet(BaseInlineFormSet):
    """An inline's formset whose per-row delete box is named too (the formset adds it after the form)."""

    def add_fields(self, form: forms.ModelForm, index: int | None) -> None:
        super().add_fields(form, index)
        if "DELETE" in form.fields:
            form.fields["DELETE"].widget.attrs.setdefault("aria-label", "Delete this row")


# `formfield_overrides` for every admin form with amounts in it.
AMOUNT_INPUTS: dict[type[models.Field], dict[str, Any]] = {models.DecimalField: {"widget": AmountInput}}


def money_cell(amount: Decimal | None, currency: str, *, precise: bool = False) -> SafeString | str:
    """An amount as staff read it: the currency's usual decimals (`precise`: up to 6, for per-event
    costs), with the exact stored figure on hover."""
    if amount is None:
        return "—"
    exact = money_str(amount.normalize()) if amount else "0"
    return format_html(
        '<span class="money" title="{} {}">{}</span>', exact, currency, money_format(amount, currency, precise=precise)
    )


class OrganizationFilter(admin.ListFilter):
    """Narrow a big table to one organization by its slug: a labelled text box rather than a list of
    every organization (there may be many), resolved through the slug's unique index and then the
    table's own (organization, …) index."""

    title = "organization"
    parameter_name = "organization"
    template = "admin/organization_filter.html"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        given = params.pop(self.parameter_name, "")
        self.slug = str((given[-1] if isinstance(given, list) else given) or "").strip()

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.parameter_name]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        return queryset.filter(organization__slug=self.slug) if self.slug else queryset

    def choices(self, changelist: Any) -> Any:
        kept = {name: value for name, value in changelist.params.items() if name not in (self.parameter_name, "p")}
        yield {
            "slug": self.slug,
            "hidden": [(name, item) for name, value in kept.items() for item in (value if isinstance(value, list) else [value])],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


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
