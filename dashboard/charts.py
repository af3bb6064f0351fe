"""Daily spend by service as a stacked bar chart, drawn server-side as inline SVG (no JS library).

Amounts stay Decimals until they become pixel coordinates; only geometry is rounded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from billing_site.money import ZERO

SERIES_MAX = 6  # distinct colours; the rest is "Other"
TICKS = 5  # at most this many steps on the y axis
OTHER = "Other"


@dataclass(frozen=True)
class Frame:
    """The drawing's size and margins, in SVG units."""

    width: int = 720
    height: int = 240
    left: int = 64
    right: int = 8
    top: int = 12
    bottom: int = 28
    labels: int = 6  # about this many day labels under the bars

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom


DESKTOP = Frame()
PHONE = Frame(width=360, height=220, left=52, labels=4)


@dataclass(frozen=True)
class Segment:
    series: int  # colour index; SERIES_MAX is "Other"
    name: str
    cost: Decimal
    x: str
    y: str
    width: str
    height: str


@dataclass
class Bar:
    day: date
    total: Decimal
    x: str
    slot_x: str
    slot_width: str
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class Tick:
    value: Decimal
    y: str


@dataclass(frozen=True)
class Label:
    text: str
    x: str


@dataclass(frozen=True)
class Series:
    index: int
    name: str
    total: Decimal


@dataclass
class Chart:
    width: int
    height: int
    left: int
    right_x: int
    baseline_y: int
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    series: list[Series]
    total: Decimal

    @property
    def empty(self) -> bool:
        return self.total == ZERO

    @property
    def center_x(self) -> int:
        return (self.left + self.right_x) // 2

    @property
    def center_y(self) -> int:
        return self.baseline_y // 2 + 6


def _px(value: Decimal) -> str:
    return f"{value:.2f}"


def nice_step(top: Decimal, ticks: int = TICKS) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ that covers `top` in at most `ticks` steps."""
    if top <= ZERO:
        return Decimal("0.25")
    raw = top / ticks
    base = Decimal(1).scaleb(raw.adjusted())
    for factor in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        if base * factor >= raw:
            return base * factor
    return base * 10


def spend_chart(rows: list[dict], *, day_from: date, day_to: date, frame: Frame = DESKTOP) -> Chart:
    """`rows` are {day, service, cost} (any order); every day in [day_from, day_to] gets a bar."""
    by_day: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    per_service: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        by_day[row["day"]][row["service"]] += row["cost"]
        per_service[row["service"]] += row["cost"]
    ranked = sorted(per_service, key=lambda name: (-per_service[name], name))
    shown = ranked if len(ranked) <= SERIES_MAX else ranked[: SERIES_MAX - 1]
    index = {name: i for i, name in enumerate(shown)}
    series = [Series(index=i, name=name, total=per_service[name]) for i, name in enumerate(shown)]
    if len(ranked) > len(shown):
        series.append(Series(index=SERIES_MAX, name=OTHER, total=sum((per_service[n] for n in ranked[len(shown) :]), ZERO)))

    days = [day_from + timedelta(days=i) for i in range((day_to - day_from).days + 1)]
    totals = {day: sum(by_day[day].values(), ZERO) for day in days}
    highest = max(totals.values(), default=ZERO)
    step = nice_step(highest)
    steps = max(math.ceil(highest / step), 1) if highest > ZERO else TICKS - 1
    top = step * steps
    left, plot_w, plot_h, baseline = frame.left, frame.plot_w, frame.plot_h, frame.top + frame.plot_h
    slot = Decimal(plot_w) / len(days)
    bar_width = slot * Decimal("0.68")

    bars = []
    for i, day in enumerate(days):
        slot_x = left + slot * i
        x = slot_x + (slot - bar_width) / 2
        bar = Bar(day=day, total=totals[day], x=_px(x), slot_x=_px(slot_x), slot_width=_px(slot))
        stacked: dict[int, tuple[str, Decimal]] = {}
        for name, cost in by_day[day].items():
            key = index.get(name, SERIES_MAX)
            label = name if key != SERIES_MAX else OTHER
            stacked[key] = (label, stacked.get(key, (label, ZERO))[1] + cost)
        y = Decimal(baseline)
        for key in sorted(stacked):
            name, cost = stacked[key]
            if cost <= ZERO:
                continue
            # A sliver of spend still shows as a 1 px line, so no day with spend looks empty.
            height = max(cost / top * plot_h, Decimal(1))
            y -= height
            bar.segments.append(
                Segment(series=key, name=name, cost=cost, x=_px(x), y=_px(y), width=_px(bar_width), height=_px(height))
            )
        bars.append(bar)

    ticks = [Tick(value=step * i, y=_px(Decimal(baseline) - Decimal(plot_h) * i / steps)) for i in range(steps + 1)]
    label_every = max(len(days) // frame.labels, 1)
    labels = [
        Label(text=f"{day:%b} {day.day}", x=_px(left + slot * i + slot / 2))
        for i, day in enumerate(days)
        if (len(days) - 1 - i) % label_every == 0
    ]
    return Chart(
        width=frame.width,
        height=frame.height,
        left=left,
        right_x=frame.width - frame.right,
        baseline_y=baseline,
        bars=bars,
        ticks=ticks,
        labels=labels,
        series=series,
        total=sum(totals.values(), ZERO),
    )
