"""Overview, usage (with the streamed CSV export), pricing, and the no-organization page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts import services as account_services
from billing_site import keyset
from billing_site.csv_stream import csv_stream_response
from billing_site.errors import DomainError
from billing_site.money import ZERO
from dashboard import charts, forms, reports, selectors
from dashboard.context import SESSION_KEY, current_resolve, dashboard_view, page, secure_headers
from dashboard.reports import UNITS
from metering import selectors as metering_selectors
from metering.exports import EXPORT_CHUNK, EXPORT_FIRST_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import CalcMethod, Price, PriceModel, Service
from metering.pricing import optional_price_fields, price_fields, prices_listed
from metering.selectors import Included
from payments import selectors as payment_selectors

CHART_DAYS = 30
BURN_DAYS = 7
PHONE_CHART_DAYS = 14
RECENT_PAYMENTS = 5
USAGE_PAGE_SIZE = 50
USAGE_CHART_DAYS_MAX = 92  # a longer period's chart shows its last 92 days; the totals cover all of it


@dashboard_view()
def overview(request, current):
    organization = current.organization
    wallet = payment_selectors.wallet_get(organization_id=organization.pk)
    today = timezone.now().date()
    month_start = today.replace(day=1)
    last_month_start = (month_start - timedelta(days=1)).replace(day=1)
    chart_from = today - timedelta(days=CHART_DAYS - 1)
    rows = selectors.daily_spend_by_service(
        organization_id=organization.pk, day_from=min(chart_from, last_month_start), day_to=today
    )
    names = {row["service"]: row["name"] for row in rows}
    burn = selectors.burn_rate(rows, today=today, days=BURN_DAYS)
    chart = charts.spend_chart([r for r in rows if r["day"] >= chart_from], day_from=chart_from, day_to=today)
    phone_from = today - timedelta(days=PHONE_CHART_DAYS - 1)
    phone_chart = charts.spend_chart(
        [r for r in rows if r["day"] >= phone_from], day_from=phone_from, day_to=today, frame=charts.PHONE
    )
    by_service = metering_selectors.usage_summary(
        organization_id=organization.pk, group_by="service", day_from=month_start, day_to=today
    )
    context = {
        "wallet": wallet,
        "spend_today": sum((r["cost"] for r in rows if r["day"] == today), ZERO),
        "spend_month": sum((r["cost"] for r in rows if r["day"] >= month_start), ZERO),
        # The same days of last month (1st up to today's day number), so the comparison is like for like.
        "spend_last_month_to_date": sum(
            (r["cost"] for r in rows if last_month_start <= r["day"] < month_start and r["day"].day <= today.day), ZERO
        ),
        "burn_per_day": burn,
        "runway_days": selectors.runway_days(available=wallet.available + wallet.credit_limit, per_day=burn),
        "spend_30d": chart.total,
        "low_balance": wallet.low_balance_threshold > ZERO and wallet.balance < wallet.low_balance_threshold,
        "grants_expiring": list(payment_selectors.grants_expiring_soon(organization_id=organization.pk)[:3]),
        "exhausted": wallet.available <= -wallet.credit_limit,
        "chart": chart,
        "phone_chart": phone_chart,
        # The rows cover this month, so every service of `by_service` has its name among them.
        "by_service": sorted(
            ({**row, "name": names.get(row["service"], row["service"])} for row in by_service), key=lambda row: -row["cost"]
        ),
        "recent_payments": list(payment_selectors.payment_list(organization_id=organization.pk)[:RECENT_PAYMENTS])
        if current.is_manager
        else [],
        "month_start": month_start,
    }
    return page(request, "dashboard/overview.html", context)


def _usage_filters(request, current) -> forms.UsageFilterForm:
    api_keys = list(selectors.api_keys_by_id(organization_id=current.organization.pk).values())
    services = selectors.services_by_id()
    options = sorted((service.slug, service.name) for service in services.values())
    form = forms.UsageFilterForm(request.GET or None, services=options, api_keys=api_keys)
    form.api_keys = {key.pk: key for key in api_keys}
    form.services = services
    return form


def _usage_summary(form: forms.UsageFilterForm, current) -> dict:
    """Totals, grouped rows and the chart of the filtered period (see dashboard.selectors.usage_cells)."""
    start, end = form.window()
    filters = form.selector_filters()
    cells = selectors.usage_cells(
        organization_id=current.organization.pk,
        start=start or keyset.EPOCH,
        end=end,
        service=filters["service"],
        api_key_id=filters["api_key_id"],
        test=filters["test"],
        by_key=form.chosen_group == "key",
    )
    chart_test = filters["test"] is True
    report = reports.usage_report(
        cells.cells,
        group=form.chosen_group,
        services=form.services,
        api_keys={pk: key for pk, key in form.api_keys.items() if pk is not None},
        chart_test=chart_test,
    )
    # The chart's days are UTC days (the rollups'), from the period's first to its last.
    last_day = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    first_day = start.astimezone(UTC).date() if start else min((c.day for c in cells.cells), default=last_day)
    first_day = max(first_day, last_day - timedelta(days=USAGE_CHART_DAYS_MAX - 1))
    chart_rows = [row for row in report.chart_rows if first_day <= row["day"] <= last_day]
    return {
        "report": report,
        "too_many": cells.too_many,
        "scan_max": selectors.USAGE_SCAN_MAX,
        "chart": charts.spend_chart(chart_rows, day_from=first_day, day_to=last_day),
        "phone_chart": charts.spend_chart(chart_rows, day_from=first_day, day_to=last_day, frame=charts.PHONE),
        "chart_test": chart_test,
        "chart_days_cut": start is None or start.astimezone(UTC).date() < first_day,
        "utc_days": timezone.get_current_timezone_name() != "UTC",
        "period_start": start,
        "period_end": end - timedelta(microseconds=1),
        "presets": [
            (value, label, form.querystring(period=value, date_from="", date_to="")) for value, label in forms.PERIOD_CHOICES[:-1]
        ],
        "groups": [(value, label, form.querystring(group=value)) for value, label in forms.GROUP_CHOICES],
    }


@dashboard_view()
def usage(request, current):
    form = _usage_filters(request, current)
    if form.is_bound and not form.is_valid():
        # Invalid filters show their error and nothing else: never the unfiltered records.
        wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
        # The period and grouping come from links, not boxes of the form: their errors are said above it.
        link_errors = [
            f"{form.fields[name].label}: {error}" for name in ("period", "group") for error in form.errors.get(name, [])
        ]
        context = {
            "form": form,
            "rows": [],
            "currency": wallet.currency,
            "filtered": True,
            "invalid": True,
            "link_errors": link_errors,
        }
        return page(request, "dashboard/usage.html", context, status=400)
    records = metering_selectors.usage_list(organization_id=current.organization.pk, **form.selector_filters())
    # Keyset pages: page 10,000 costs what page 1 does (no OFFSET, no COUNT).
    usage_page = keyset.keyset_page(
        records,
        before=keyset.Position.decode(request.GET.get("before")),
        after=keyset.Position.decode(request.GET.get("after")),
        size=USAGE_PAGE_SIZE,
    )
    rows = [(record, form.api_keys.get(record.api_key_id)) for record in usage_page.rows]
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    context = {
        "form": form,
        "page": usage_page,
        "rows": rows,
        # The gateway's column only where the page shows a call it made (its record's metadata has an outcome).
        "gateway_calls": any(isinstance(record.metadata, dict) and "outcome" in record.metadata for record, _ in rows),
        "query": form.querystring(),
        "currency": wallet.currency,
        "filtered": bool(form.querystring()),
        "period": form.chosen_period,
        "group": form.chosen_group,
        **_usage_summary(form, current),
    }
    return page(request, "dashboard/usage.html", context)


@dashboard_view()
def usage_export(request, current):
    """The filtered records as CSV, streamed: rows are fetched in keyset chunks, so a million rows
    never sit in memory and the first one goes out after one small query."""
    form = _usage_filters(request, current)
    if form.is_bound and not form.is_valid():
        return HttpResponseBadRequest(f"Invalid filters: {form.errors.as_text()}", content_type="text/plain; charset=utf-8")
    records = metering_selectors.usage_list(organization_id=current.organization.pk, **form.selector_filters())
    prefixes = {pk: key.prefix for pk, key in form.api_keys.items()}
    rows = usage_csv_rows(
        keyset.keyset_iterate(records, chunk=EXPORT_CHUNK, first_chunk=EXPORT_FIRST_CHUNK),
        api_key_label=lambda key_id: prefixes.get(key_id, ""),
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return csv_stream_response(usage_csv_header(), rows, filename=f"usage-{current.organization.slug}-{stamp}.csv")


RATE_UNITS = {
    "input_price": "per 1M input tokens",
    "output_price": "per 1M output tokens",
    "cached_input_price": "per 1M cached input tokens",
}
METHOD_RATE_UNITS: dict[str, str] = {
    CalcMethod.CHAR_COUNT: "per 1K characters",
    CalcMethod.WORD_COUNT: "per 1K words",
    CalcMethod.IMAGE_RESOLUTION: "per 512×512 tile",
    CalcMethod.REQUEST: "per request",
}
RATE_HEADINGS = {"input_price": "Input", "output_price": "Output", "cached_input_price": "Cached input"}


def rate_unit(calc_method: str, name: str) -> str:
    """What a rate is quoted per: `per 1M input tokens`, `per 1K characters`, `per request`…"""
    return RATE_UNITS.get(name) or METHOD_RATE_UNITS.get(calc_method, "")


@dataclass(frozen=True)
class TierRow:
    """One tier as a person reads it: the range of this month's units it covers, its rates, its flat fee."""

    range: str
    rates: list[tuple[str, Decimal | None]]
    flat_fee: Decimal | None


def tier_rows(calc_method: str, stored: list[dict[str, Any]], names: list[str]) -> list[TierRow]:
    """A price's tiers with their ranges: `0 – 1,000,000`, `1,000,001 – 5,000,000`, `5,000,001 +`."""
    rows, low = [], 0
    for tier in stored:
        up_to = tier.get("up_to")
        start = format(low + 1 if low else 0, ",")
        text = f"{start} +" if up_to is None else f"{start} – {up_to:,}"
        rates = [(name, Decimal(tier[name]) if name in tier else None) for name in names]
        flat_fee = Decimal(tier["flat_fee"]) if tier.get("flat_fee") else None
        rows.append(TierRow(range=text, rates=rates, flat_fee=flat_fee))
        low = up_to if up_to is not None else low
    return rows


@dataclass(frozen=True)
class PricingRow:
    service: Service
    price: Price | None
    rates: list[tuple[str, Decimal, str]]  # per-unit: (field, rate, what it is quoted per)
    tiers: list[TierRow]
    tier_rates: list[tuple[str, str, str]]  # the tier table's rate columns: (field, heading, quoted per)
    has_flat_fees: bool
    unit: str  # what a quantity of the service counts (tokens, characters, …)
    included: Included | None

    @property
    def used_percent(self) -> int:
        """How much of the included quantity is used, 0 to 100, for the bar."""
        if self.included is None or not self.included.quantity:
            return 0
        return min(100, self.included.used * 100 // self.included.quantity)


@dashboard_view()
def pricing(request, current):
    organization_id = current.organization.pk
    included = metering_selectors.plan_usage_left(organization_id=organization_id)
    rows = []
    for service, price in metering_selectors.service_list_with_prices(organization_id=organization_id):
        method = service.calc_method
        listed = prices_listed(method, price) if price else {}
        names: list[str] = []
        tiers: list[TierRow] = []
        if price and price.model in (PriceModel.TIERED, PriceModel.VOLUME) and price.tiers:
            names = [
                name for name in (*price_fields(method), *optional_price_fields(method)) if any(name in t for t in price.tiers)
            ]
            tiers = tier_rows(method, price.tiers, names)
        rows.append(
            PricingRow(
                service=service,
                price=price,
                rates=[(name, value, rate_unit(method, name)) for name, value in listed.items()],
                tiers=tiers,
                tier_rates=[(name, RATE_HEADINGS.get(name, "Rate"), rate_unit(method, name)) for name in names],
                has_flat_fees=any(tier.flat_fee for tier in tiers),
                unit="tokens" if method == CalcMethod.TOKENS else UNITS.get(method, "units"),
                included=included.get(service.pk),
            )
        )
    wallet = payment_selectors.wallet_get(organization_id=organization_id)
    return page(request, "dashboard/pricing.html", {"rows": rows, "currency": wallet.currency})


@login_required
@require_http_methods(["GET", "POST"])
def welcome(request):
    """For a person who belongs to no organization (e.g. removed from their last): start one."""
    if current_resolve(request) is not None:
        return redirect("dashboard:overview")
    form = forms.OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization = account_services.organization_create(name=form.cleaned_data["organization"], owner=request.user)
        except DomainError as error:
            forms.service_error_add(form, error)
        else:
            request.session[SESSION_KEY] = organization.slug
            return redirect("dashboard:overview")
    return secure_headers(render(request, "dashboard/welcome.html", {"form": form}))
