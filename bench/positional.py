"""The positional cases of `make bench` (docs/performance.md, "Pricing models"): POST usage/ exactly like
the per-unit case (2), same clients, wallets, body and cells, but against

  tiered  a service whose general price is tiered: before each measured window the bench lays out a
          new tiered price (5 tiers) whose boundaries lie ahead of the organizations' positions, one
          step apart, the step set from the warm-up's rate so that the window crosses two or three;
  plan    a service the organizations' active plan includes: before each measured window every
          organization's free units of it are revoked and `--plan-free-share` of the window's expected
          events granted again, so the window starts free and ends charged.

Around each window it reads the positions (taken, boundaries crossed), the usage records (free and
charged events) and the app's /metrics counter `tollgate_position_settled_total{path}` (how the hot
path settled each positional event: its first guess, a later guess, or the locked path).
"""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import fixtures

POSITIONAL_CASES = ("tiered", "plan")
AIM_VS_PER_UNIT = 0.9  # the issue: each positional case >= 0.9x the per-unit throughput at 16 clients
TIER_BOUNDARIES = len(fixtures.TIER_RATES) - 1
SETTLED_PATHS = ("first", "retry", "locked")
_SETTLED_LINE = re.compile(r'^tollgate_position_settled_total\{path="(\w+)"\}\s+([0-9.eE+-]+)$')


def settled_read(base_url: str) -> dict[str, float]:
    """The app's `tollgate_position_settled_total` by path, summed over its workers (multiprocess mode)."""
    headers = {"X-Forwarded-Proto": "https"}
    token = os.environ.get("METRICS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base_url + "/metrics", headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - idem
        text = response.read().decode()
    counts = dict.fromkeys(SETTLED_PATHS, 0.0)
    for line in text.splitlines():
        match = _SETTLED_LINE.match(line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts


@dataclass
class Probe:
    """One positional cell's setup and figures. `before_warmup`, `before_measure` and `after_measure`
    are called by the HTTP cell around its warm-up and its measured window."""

    case: str
    pos: fixtures.PositionalData
    organization_ids: list[int]
    gunicorn: Any
    warmup_seconds: int
    duration_seconds: int
    tier_step: int | None = None
    plan_free_share: float = 0.5
    _warm_used: int = 0
    _start: dict[int, tuple[int, int]] = field(default_factory=dict)
    _settled: dict[str, float] = field(default_factory=dict)
    _since: datetime | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def service_id(self) -> int:
        return self.pos.tiered_service_id if self.case == "tiered" else self.pos.plan_service_id

    @property
    def service_slug(self) -> str:
        return self.pos.tiered_slug if self.case == "tiered" else self.pos.plan_service_slug

    def _used(self) -> dict[int, tuple[int, int]]:
        return fixtures.positions_read(self.service_id, self.organization_ids)

    def before_warmup(self) -> None:
        self._warm_used = sum(used for used, _ in self._used().values())

    def before_measure(self) -> None:
        """After the warm-up, once the workers are idle: the window's tiers or free units, then the
        starting positions and counters."""
        self.gunicorn.wait_idle()
        now = self._used()
        warm_events = sum(used for used, _ in now.values()) - self._warm_used
        # Events per organization the window should see, at the warm-up's rate (a floor of 10/s when no
        # warm-up ran or it saw nothing).
        rate = warm_events / self.warmup_seconds if self.warmup_seconds and warm_events > 0 else 10.0
        expected = rate * self.duration_seconds / max(1, len(self.organization_ids))
        self.figures = {"expected_events_per_organization": round(expected, 1)}
        if self.case == "tiered":
            step = self.tier_step or max(1, round(expected / 3))
            ahead = max((used for used, _ in now.values()), default=0)
            boundaries = [ahead + step * k for k in range(1, TIER_BOUNDARIES + 1)]
            price_id = fixtures.tiered_price_create(self.service_id, boundaries=boundaries, owner_id=self.pos.owner_id)
            self.figures.update(tier_step=step, boundaries=boundaries, price_id=price_id)
        else:
            # The window's free units in all, spread evenly (spread wallets each see a few events: some
            # organizations get one unit more, or none at all).
            total = max(1, round(expected * len(self.organization_ids) * self.plan_free_share))
            share, extra = divmod(total, len(self.organization_ids))
            fixtures.plan_grant(self.service_id, {org: share + (i < extra) for i, org in enumerate(self.organization_ids)})
            self.figures.update(granted_units=total)
        self._start = self._used()
        self._settled = settled_read(self.gunicorn.url)
        self._since = datetime.now(UTC)

    def after_measure(self) -> dict[str, Any]:
        """Once the window's requests are all answered (the caller waited for idle workers)."""
        from django.db import connection

        end = self._used()
        settled = settled_read(self.gunicorn.url)
        out = dict(self.figures)
        out["settled"] = {path: int(settled.get(path, 0) - self._settled.get(path, 0)) for path in SETTLED_PATHS}
        out["positions_taken"] = sum(end[org][0] - self._start.get(org, (end[org][0], 0))[0] for org in end)
        if self.case == "tiered":
            crossed = 0
            for org, (used, _) in end.items():
                start = self._start.get(org, (used, 0))[0]
                crossed += sum(1 for b in self.figures["boundaries"] if start < b < used)
            out["boundaries_crossed"] = crossed
            out["boundaries_crossed_per_organization"] = round(crossed / max(1, len(self.organization_ids)), 2)
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT count(*) FILTER (WHERE cost = 0), count(*) FILTER (WHERE cost > 0),
                          extract(epoch FROM max(created_at) FILTER (WHERE cost = 0) - %(since)s),
                          extract(epoch FROM max(created_at) - %(since)s)
                     FROM metering_usagerecord
                    WHERE service_id = %(service)s AND organization_id = ANY(%(orgs)s) AND created_at >= %(since)s""",
                {"service": self.service_id, "orgs": self.organization_ids, "since": self._since},
            )
            free, charged, free_until_s, last_s = cursor.fetchone()
        out["free_events"], out["charged_events"] = free, charged
        if self.case == "plan" and len(self.organization_ids) == 1:
            # One organization (hot): its window is free up to its last free event, then charged; the
            # rates before and after. (Spread wallets each run out at their own time: no such split.)
            free_s = float(free_until_s or 0)
            out["free_phase_seconds"] = round(free_s, 2)
            out["free_per_s"] = round(free / free_s, 1) if free_s > 0 else None
            rest = float(last_s or 0) - free_s
            out["charged_per_s"] = round(charged / rest, 1) if rest > 0 else None
        return out


def probe_for(case: str, *, pos, mode: str, data, gunicorn, args) -> Probe:
    tenants = [data.hot] if mode == "hot" else data.spread
    return Probe(
        case=case,
        pos=pos,
        organization_ids=[t.organization_id for t in tenants],
        gunicorn=gunicorn,
        warmup_seconds=max(1, round(args.warmup)) if args.warmup > 0 else 0,
        duration_seconds=max(1, round(args.duration)),
        tier_step=args.tier_step,
        plan_free_share=args.plan_free_share,
    )


# --- the summary -------------------------------------------------------------------------------------------


def pricing_rows(rows: list[dict], cells: list[dict]) -> list[dict]:
    """Per wallet mode and client count: the per-unit case's throughput, each positional case's and its
    ratio to it (medians of the same run), and the positional figures summed over the repeats."""
    by_key = {(r["case"], r["mode"], r["clients"]): r for r in rows}
    out = []
    for mode, clients in sorted({(r["mode"], r["clients"]) for r in rows if r["case"] in POSITIONAL_CASES}):
        base = by_key.get(("http", mode, clients))
        entry: dict[str, Any] = {"mode": mode, "clients": clients, "per_unit": base["throughput"] if base else None}
        for case in POSITIONAL_CASES:
            row = by_key.get((case, mode, clients))
            if row is None:
                continue
            runs = [c["positional"] for c in cells if (c["case"], c["mode"], c["clients"]) == (case, mode, clients)]
            totals: dict[str, Any] = {
                "throughput": row["throughput"],
                "ratio": row["throughput"] / base["throughput"] if base and base["throughput"] else None,
                "error_rate": row["error_rate"],
                "settled": {p: sum(r["settled"][p] for r in runs) for p in SETTLED_PATHS},
                "positions_taken": sum(r["positions_taken"] for r in runs),
                "free_events": sum(r["free_events"] for r in runs),
                "charged_events": sum(r["charged_events"] for r in runs),
                "runs": len(runs),
            }
            if case == "tiered":
                totals["boundaries_crossed"] = sum(r["boundaries_crossed"] for r in runs)
                totals["min_crossed_per_run"] = min(r["boundaries_crossed"] for r in runs) if runs else 0
            else:
                totals["granted_units"] = sum(r["granted_units"] for r in runs)
                free_rates = [r["free_per_s"] for r in runs if r.get("free_per_s")]
                charged_rates = [r["charged_per_s"] for r in runs if r.get("charged_per_s")]
                totals["free_per_s"] = sorted(free_rates)[len(free_rates) // 2] if free_rates else None
                totals["charged_per_s"] = sorted(charged_rates)[len(charged_rates) // 2] if charged_rates else None
            entry[case] = totals
        out.append(entry)
    return out


def aims(pricing: list[dict], max_error_rate: float) -> list[dict]:
    """The issue's aim for each positional case at 16 clients, in the shape of run.aims()'s rows."""
    out = []
    for entry in pricing:
        if entry["clients"] != 16:
            continue
        for case in POSITIONAL_CASES:
            totals = entry.get(case)
            if totals is None:
                continue
            ratio = totals["ratio"]
            invalid = totals["error_rate"] > max_error_rate
            out.append(
                {
                    "aim": f"(2{case[0]})/(2) throughput, 16 clients, {entry['mode']} >= {AIM_VS_PER_UNIT:.1f}x",
                    "value": ratio,
                    "target": AIM_VS_PER_UNIT,
                    "ok": None if invalid or ratio is None else ratio >= AIM_VS_PER_UNIT,
                    "invalid": invalid,
                    "text": "n/a (no per-unit cell)" if ratio is None else f"{ratio:.2f}x",
                }
            )
    return out


def _share(settled: dict[str, int]) -> str:
    total = sum(settled.values())
    if not total:
        return "none counted"
    return ", ".join(f"{path} {settled[path]:,} ({settled[path] / total:.0%})" for path in SETTLED_PATHS)


def print_pricing(pricing: list[dict], args) -> None:
    print(
        f"\nPricing models: POST usage/ per-unit (2) vs tiered and plan, same clients, wallets and cells "
        f"(medians of {args.repeat}; aim: >= {AIM_VS_PER_UNIT:.1f}x the per-unit throughput at 16 clients)"
    )
    head = f"  {'wallet':<7} {'clients':>7} {'per-unit/s':>11} {'tiered/s':>9} {'ratio':>6} {'plan/s':>9} {'ratio':>6}  aim at 16"
    print(head)
    for entry in pricing:
        cols = []
        verdicts = []
        for case in POSITIONAL_CASES:
            totals = entry.get(case)
            ratio = totals["ratio"] if totals else None
            cols.append(f"{totals['throughput']:>9,.0f}" if totals else f"{'-':>9}")
            cols.append(f"{ratio:>5.2f}x" if ratio is not None else f"{'-':>6}")
            if entry["clients"] == 16 and ratio is not None:
                verdicts.append(f"{case} {'met' if ratio >= AIM_VS_PER_UNIT else 'NOT met'}")
        per_unit = f"{entry['per_unit']:>11,.0f}" if entry["per_unit"] else f"{'-':>11}"
        print(
            f"  {entry['mode']:<7} {entry['clients']:>7} {per_unit} {cols[0]} {cols[1]} {cols[2]} {cols[3]}  "
            + ", ".join(verdicts)
        )
    for entry in pricing:
        tiered, plan = entry.get("tiered"), entry.get("plan")
        where = f"{entry['mode']}, {entry['clients']} clients, {args.repeat} windows"
        if tiered:
            print(
                f"  tiered ({where}): {tiered['positions_taken']:,} positions taken, {tiered['boundaries_crossed']} tier "
                f"boundaries crossed (at least {tiered['min_crossed_per_run']} in every window); settled: {_share(tiered['settled'])}"
            )
        if plan:
            rates = ""
            if plan["free_per_s"] or plan["charged_per_s"]:
                rates = f"; {plan['free_per_s'] or 0:,.0f}/s while free, {plan['charged_per_s'] or 0:,.0f}/s once charged"
            print(
                f"  plan ({where}): {plan['free_events']:,} events free and {plan['charged_events']:,} charged "
                f"({plan['granted_units']:,} free units granted{rates}); settled: {_share(plan['settled'])}"
            )
