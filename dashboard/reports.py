"""The usage page's figures, built from exact usage cells (dashboard.selectors.usage_cells): totals,
rows grouped by day, service or API key, quantities in their units, and the chart's rows.
Amounts stay Decimals; nothing here rounds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from accounts.models import ApiKey
from billing_site.money import ZERO
from dashboard.selectors import UsageCell
from metering.models import CalcMethod, Service

GROUPS = ("day", "service", "key")
# What one unit of each method is called; TOKENS count input and output apart.
UNITS: dict[str, str] = {
    CalcMethod.CHAR_COUNT: "characters",
    CalcMethod.WORD_COUNT: "words",
    CalcMethod.IMAGE_RESOLUTION: "tiles",
    CalcMethod.REQUEST: "requests",
}
UNIT_ORDER = ["tokens in", "tokens out", "characters", "words", "tiles", "requests"]
NO_KEY = "Signed-in users"


@dataclass
class Figures:
    """Events, quantities by unit, and cost split by mode (live is charged, test only priced)."""

    events: int = 0
    cost: Decimal = ZERO
    test_cost: Decimal = ZERO
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, cell: UsageCell, service: Service | None) -> None:
        self.events += cell.events
        if cell.test:
            self.test_cost += cell.cost
        else:
            self.cost += cell.cost
        method = service.calc_method if service else None
        if method == CalcMethod.TOKENS:
            self.units["tokens in"] += cell.input_tokens
            self.units["tokens out"] += cell.output_tokens
        elif method in UNITS:
            self.units[UNITS[method]] += cell.quantity

    @property
    def quantities(self) -> list[tuple[int, str]]:
        """(amount, unit) in a fixed order, units with nothing left out."""
        return [(self.units[unit], unit) for unit in UNIT_ORDER if self.units.get(unit)]


@dataclass
class ReportRow:
    label: str
    secondary: str  # the slug of a service, the prefix of a key, the weekday of a day
    figures: Figures
    day: date | None = None


@dataclass
class UsageReport:
    totals: Figures
    rows: list[ReportRow]
    chart_rows: list[dict]  # {day, service (colour key), name, cost} for dashboard.charts.spend_chart
    has_test: bool


def usage_report(
    cells: Iterable[UsageCell],
    *,
    group: str,
    services: dict[int, Service],
    api_keys: dict[int, ApiKey],
    chart_test: bool,
) -> UsageReport:
    """Group `cells` by `group`; the chart stacks cost per day by service (by key when grouped by
    key), test-mode cost when `chart_test`, else live cost (what was charged)."""
    totals = Figures()
    groups: dict[object, ReportRow] = {}
    chart: dict[tuple[date, str], dict] = {}
    for cell in cells:
        service = services.get(cell.service_id)
        totals.add(cell, service)
        key = api_keys.get(cell.api_key_id) if cell.api_key_id is not None else None
        if group == "service":
            ident: object = cell.service_id
            label, secondary = (service.name, service.slug) if service else ("?", "")
        elif group == "key":
            ident = cell.api_key_id
            label, secondary = (key.name, f"{key.prefix}…") if key else (NO_KEY, "")
        else:
            ident = cell.day
            label, secondary = f"{cell.day:%a}", ""
        row = groups.get(ident)
        if row is None:
            row = groups[ident] = ReportRow(
                label=label, secondary=secondary, figures=Figures(), day=cell.day if group == "day" else None
            )
        row.figures.add(cell, service)
        if cell.test == chart_test:
            series = (key.prefix if key else "-") if group == "key" else (service.slug if service else "?")
            name = label if group == "key" else (service.name if service else "?")
            point = chart.setdefault((cell.day, series), {"day": cell.day, "service": series, "name": name, "cost": ZERO})
            point["cost"] += cell.cost
    if group == "day":
        rows = [groups[day] for day in sorted(groups, reverse=True)]  # type: ignore[type-var]
    else:
        rows = sorted(groups.values(), key=lambda row: (-(row.figures.cost + row.figures.test_cost), row.label))
    return UsageReport(totals=totals, rows=rows, chart_rows=list(chart.values()), has_test=totals.test_cost > ZERO)
