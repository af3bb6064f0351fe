"""Daily spend by service as a stacked bar chart, drawn server-side as inline SVG (no JS library).

Amounts stay Decimals until they become pixel coordinates; only geometry is rounded.

Colours are stable: a series' colour is fixed by its slug (sha256 of the slug, modulo the palette of
PALETTE colours `--series-0…9` in static/dashboard/app.css), so a service keeps its colour on every
page and every load whatever its rank. Two slugs of one chart that land on the same colour: the later
in slug order takes the next free one. "Other" is always grey (`--series-10`).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from billing_site.money import ZERO

SERIES_MAX = 6  # series drawn apart; the rest is "Other"
PALETTE = 10  # colours a series may take
OTHER_COLOUR = PALETTE
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
    series: int  # colour index; OTHER_COLOUR is "Other"
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
    index: int  # its colour
    name: str
    total: Decimal
    slug: str = ""


@dataclass(frozen=True)
class Share:
    """One series' part of a chart whose spend all fell on one day, as a horizontal bar."""

    series: Series
    y: str  # the label's baseline; the bar lies under it
    bar_y: str
    width: str


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
    days_with_spend: list[date] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)  # drawn instead of bars when one day has all the spend

    @property
    def empty(self) -> bool:
        return self.total == ZERO

    @property
    def one_day(self) -> date | None:
        return self.days_with_spend[0] if len(self.days_with_spend) == 1 else None

    @property
    def shares_height(self) -> int:
        return len(self.shares) * SHARE_ROW

    @property
    def center_x(self) -> int:
        return (self.left + self.right_x) // 2

    @property
    def center_y(self) -> int:
        return self.baseline_y // 2 + 6


SHARE_ROW = 40  # SVG units per horizontal bar (its label above it) of a one-day chart


def colour_of(slug: str) -> int:
    """The palette colour a slug starts from: the same on every page, for every organization."""
    return int.from_bytes(hashlib.sha256(slug.encode()).digest()[:4], "big") % PALETTE


def colours(slugs: Iterable[str]) -> dict[str, int]:
    """Each slug its own colour (while the palette lasts); clashes resolved in slug order."""
    taken: dict[str, int] = {}
    for slug in sorted(set(slugs)):
        colour = colour_of(slug)
        while colour in taken.values() and len(taken) < PALETTE:
            colour = (colour + 1) % PALETTE
        taken[slug] = colour
    return taken


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
    """`rows` are {day, service (its slug), cost} and optionally the service's `name` (any order);
    every day in [day_from, day_to] gets a bar."""
    by_day: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    per_service: dict[str, Decimal] = defaultdict(Decimal)
    names: dict[str, str] = {}
    for row in rows:
        by_day[row["day"]][row["service"]] += row["cost"]
        per_service[row["service"]] += row["cost"]
        names[row["service"]] = row.get("name") or row["service"]
    ranked = sorted((slug for slug in per_service if per_service[slug] > ZERO), key=lambda slug: (-per_service[slug], slug))
    shown = ranked if len(ranked) <= SERIES_MAX else ranked[: SERIES_MAX - 1]
    index = colours(shown)
    series = [Series(index=index[slug], name=names[slug], total=per_service[slug], slug=slug) for slug in shown]
    if len(ranked) > len(shown):
        rest = sum((per_service[slug] for slug in ranked[len(shown) :]), ZERO)
        series.append(Series(index=OTHER_COLOUR, name=OTHER, total=rest))

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
        stacked: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
        for slug, cost in by_day[day].items():
            rank = shown.index(slug) if slug in index else len(shown)  # stacked by rank: the biggest at the bottom
            stacked[(rank, names[slug] if slug in index else OTHER)] += cost
        y = Decimal(baseline)
        for rank, name in sorted(stacked):
            cost = stacked[(rank, name)]
            key = index[shown[rank]] if rank < len(shown) else OTHER_COLOUR
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
        days_with_spend=[day for day in days if totals[day] > ZERO],
        shares=_shares(series, frame),
    )


def _shares(series: list[Series], frame: Frame) -> list[Share]:
    """Horizontal bars, one per series, in proportion to the biggest."""
    biggest = max((s.total for s in series), default=ZERO)
    if biggest <= ZERO:
        return []
    plot_w = Decimal(frame.width - frame.right)
    return [
        Share(
            series=s,
            y=_px(Decimal(i * SHARE_ROW + 14)),
            bar_y=_px(Decimal(i * SHARE_ROW + 20)),
            width=_px(max(s.total / biggest * plot_w, Decimal(1))),
        )
        for i, s in enumerate(series)
    ]
