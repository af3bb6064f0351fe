"""The credits case of `make bench` (docs/performance.md, "Credits and budgets"): POST usage/ exactly like
the per-unit case (2), same service, clients, body and cells, but from organizations of their own
(`bench-credits-hot`, `bench-credits-spread-0000` …) that each hold three live credit grants (different
priorities, the first to burn expiring a month ahead) and a hard monthly budget, so every debit draws
from a grant and counts against the budget in its own statement.

Around each measured window (workers idle at both ends) it reads the grants' remaining, the budgets'
spend and the app's /metrics counter of refused events, then checks the window's money: every record
costs the per-unit price (a Fraction oracle), the budgets' spend and the grants' draw each moved by
exactly the window's usage cost, each wallet's balance is the sum of its entries, each grant's remaining
is its amount less its allocations, each budget's spend this month is its organization's usage cost
this month, and no grant was drawn while one before it in burn order still held credit.
"""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from bench import fixtures

CASE = "credits"
HOT_SLUG = "bench-credits-hot"
SPREAD_SLUG = "bench-credits-spread-{:04d}"
KEY_PREFIX = "credits-"
AIM_VS_PER_UNIT = 0.8  # the issue: credits >= 0.8x the per-unit throughput at 16 clients
# (priority, expires, amount on the hot wallet, on a spread one): the first to burn expires a month ahead.
# At the bench's price (1e-6 a request) the smallest holds 5 million requests: none runs out in a run.
GRANTS = (
    (10, True, Decimal("50"), Decimal("5")),
    (20, False, Decimal("100"), Decimal("10")),
    (30, False, Decimal("200"), Decimal("20")),
)
GRANT_REASON = "bench"
EXPIRY_AHEAD = timedelta(days=30)
EXPIRY_RENEW_BEFORE = timedelta(days=7)  # an expiring grant closer to its end than this is replaced
BUDGET_HOT, BUDGET_SPREAD = Decimal("1000"), Decimal("100")  # hard, per month: a billion / 100 million requests
_EVENTS_LINE = re.compile(r"^tollgate_usage_events_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$")


@dataclass(frozen=True)
class CreditsData:
    data: fixtures.BenchData  # the credits organizations (hot and spread), on the per-unit service
    key_files: dict[str, str]


def ensure(*, spread_count: int) -> CreditsData:
    """The credits organizations with their keys and funding (as the per-unit ones), their three grants
    and their hard monthly budget; idempotent."""
    data = fixtures.ensure(spread_count=spread_count, hot_slug=HOT_SLUG, spread_slug=SPREAD_SLUG)
    grants_ensure(data)
    budgets_ensure(data)
    return CreditsData(data=data, key_files=fixtures.write_key_files(data, prefix=KEY_PREFIX))


def grants_ensure(data: fixtures.BenchData) -> int:
    """Each organization holds a live grant at each of GRANTS' priorities with at least half its amount
    (the expiring one at least EXPIRY_RENEW_BEFORE from its end); missing ones are made with
    `grant_create`, expired ones written off first. Answers how many were made."""
    from django.utils import timezone

    from payments.credits import GrantSpec, grant_create, grant_expire
    from payments.models import CreditGrant, GrantCategory

    now = timezone.now()
    orgs = data.organization_ids
    for grant_id in CreditGrant.objects.filter(organization_id__in=orgs, remaining__gt=0, expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        grant_expire(grant_id=grant_id, now=now)
    live: dict[tuple[int, int], list[tuple[Decimal, datetime | None]]] = {}
    for org, priority, remaining, expires_at in CreditGrant.objects.filter(organization_id__in=orgs, remaining__gt=0).values_list(
        "organization_id", "priority", "remaining", "expires_at"
    ):
        live.setdefault((org, priority), []).append((remaining, expires_at))
    made = 0
    for org in orgs:
        hot = org == data.hot.organization_id
        for priority, expires, hot_amount, spread_amount in GRANTS:
            amount = hot_amount if hot else spread_amount
            fine = any(
                remaining >= amount / 2
                and ((expires_at is not None and expires_at > now + EXPIRY_RENEW_BEFORE) if expires else expires_at is None)
                for remaining, expires_at in live.get((org, priority), [])
            )
            if not fine:
                spec = GrantSpec(
                    amount=amount,
                    category=GrantCategory.PROMOTIONAL,
                    priority=priority,
                    expires_at=now + EXPIRY_AHEAD if expires else None,
                    reason=GRANT_REASON,
                )
                grant_create(organization_id=org, spec=spec, created_by_id=None)
                made += 1
    if made:
        print(f"bench: made {made} credit grants", flush=True)
    return made


def budgets_ensure(data: fixtures.BenchData) -> None:
    """A hard monthly budget on each organization (its own scope, no API key) of BUDGET_HOT or
    BUDGET_SPREAD, made or set back to that."""
    from django.db import transaction

    from payments.models import Budget, BudgetMode, BudgetPeriod

    wanted = dict.fromkeys(data.organization_ids, BUDGET_SPREAD) | {data.hot.organization_id: BUDGET_HOT}
    with transaction.atomic():
        existing = {
            org: (pk, amount, mode)
            for pk, org, amount, mode in Budget.objects.filter(
                organization_id__in=list(wanted), api_key__isnull=True, period=BudgetPeriod.MONTH
            ).values_list("pk", "organization_id", "amount", "mode")
        }
        Budget.objects.bulk_create(
            [
                Budget(organization_id=org, period=BudgetPeriod.MONTH, amount=amount, mode=BudgetMode.HARD)
                for org, amount in wanted.items()
                if org not in existing
            ]
        )
        for org, (pk, amount, mode) in existing.items():
            if (amount, mode) != (wanted[org], BudgetMode.HARD):
                Budget.objects.filter(pk=pk).update(amount=wanted[org], mode=BudgetMode.HARD)


def refusals_read(base_url: str, service: str) -> dict[str, float]:
    """The app's `tollgate_usage_events_total` of `service` by outcome, summed over its workers."""
    headers = {"X-Forwarded-Proto": "https"}
    token = os.environ.get("METRICS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base_url + "/metrics", headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - idem
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _EVENTS_LINE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
        if labels.get("service") == service:
            counts[labels.get("outcome", "")] = counts.get(labels.get("outcome", ""), 0.0) + float(match.group("value"))
    return counts


def _round_money(value: Fraction) -> Decimal:
    """Half-even to the money scale on the Fraction (the oracle does not use the app's rounding)."""
    return Decimal(round(value * 10**12)).scaleb(-12)


# The window's own figures, over the organizations `orgs` since `since` (workers idle at both ends).
_WINDOW_SQL = """
SELECT (SELECT count(*) FROM metering_usagerecord
         WHERE organization_id = ANY(%(orgs)s) AND created_at >= %(since)s AND NOT test),
       (SELECT coalesce(sum(cost), 0) FROM metering_usagerecord
         WHERE organization_id = ANY(%(orgs)s) AND created_at >= %(since)s AND NOT test),
       (SELECT count(*) FROM metering_usagerecord
         WHERE organization_id = ANY(%(orgs)s) AND created_at >= %(since)s AND NOT test AND cost <> %(unit_cost)s),
       (SELECT coalesce(sum(a.amount), 0) FROM payments_grantallocation a JOIN payments_transfer t ON t.id = a.transfer_id
         WHERE a.organization_id = ANY(%(orgs)s) AND a.created_at >= %(since)s AND t.kind = 'usage')
"""

# Sums that each window moves, read before and after it.
_TOTALS_SQL = """
SELECT (SELECT coalesce(sum(remaining), 0) FROM payments_creditgrant WHERE organization_id = ANY(%(orgs)s)),
       (SELECT coalesce(sum(s.spent), 0) FROM payments_budgetspend s JOIN payments_budget b ON b.id = s.budget_id
         WHERE s.organization_id = ANY(%(orgs)s) AND b.api_key_id IS NULL
           AND s.period_start = date_trunc(b.period, %(now)s::timestamptz, 'UTC'))
"""

# Invariants on the credits organizations, each counting its violations.
MONEY_CHECKS: list[tuple[str, str]] = [
    (
        "wallet balance (row + stripes) == sum of its ledger entries",
        """SELECT count(*) FROM payments_wallet w
             LEFT JOIN (SELECT organization_id, sum(amount) AS total FROM payments_ledgerentry
                         WHERE account = 'wallet' AND organization_id = ANY(%(orgs)s) GROUP BY organization_id) e
               ON e.organization_id = w.organization_id
            WHERE w.organization_id = ANY(%(orgs)s)
              AND w.balance + (SELECT coalesce(sum(s.balance), 0) FROM payments_walletstripe s
                                WHERE s.organization_id = w.organization_id) <> coalesce(e.total, 0)""",
    ),
    (
        "each grant's remaining == amount - sum of its allocations",
        """SELECT count(*) FROM payments_creditgrant g
             LEFT JOIN (SELECT grant_id, sum(amount) AS total FROM payments_grantallocation
                         WHERE organization_id = ANY(%(orgs)s) GROUP BY grant_id) a ON a.grant_id = g.id
            WHERE g.organization_id = ANY(%(orgs)s) AND g.remaining <> g.amount - coalesce(a.total, 0)""",
    ),
    (
        "each budget's spend this period == its organization's live usage cost this period",
        """SELECT count(*) FROM payments_budget b
             LEFT JOIN payments_budgetspend s ON s.budget_id = b.id
                   AND s.period_start = date_trunc(b.period, %(now)s::timestamptz, 'UTC')
            WHERE b.organization_id = ANY(%(orgs)s) AND b.api_key_id IS NULL
              AND coalesce(s.spent, 0) <> (SELECT coalesce(sum(u.cost), 0) FROM metering_usagerecord u
                                            WHERE u.organization_id = b.organization_id AND NOT u.test
                                              AND u.created_at >= date_trunc(b.period, %(now)s::timestamptz, 'UTC'))""",
    ),
    (
        # A grant drawn by usage while one before it in burn order (priority, soonest expiry, oldest) was
        # live throughout: that one still holds credit now, and remaining only falls.
        "no grant drawn while one before it in burn order held credit",
        """SELECT count(*) FROM payments_grantallocation a
             JOIN payments_creditgrant g ON g.id = a.grant_id
             JOIN payments_transfer t ON t.id = a.transfer_id AND t.kind = 'usage'
            WHERE a.organization_id = ANY(%(orgs)s) AND a.created_at >= %(since)s AND a.amount > 0
              AND EXISTS (SELECT 1 FROM payments_creditgrant h
                           WHERE h.organization_id = g.organization_id AND h.id <> g.id AND h.remaining > 0
                             AND h.created_at <= %(since)s AND (h.expires_at IS NULL OR h.expires_at > %(now)s)
                             AND (h.priority, coalesce(h.expires_at, 'infinity'), h.created_at, h.id)
                                 < (g.priority, coalesce(g.expires_at, 'infinity'), g.created_at, g.id))""",
    ),
]


def money_checks(orgs: list[int], *, since: datetime, now: datetime) -> list[dict[str, Any]]:
    from django.db import connection

    out = []
    with connection.cursor() as cursor:
        for name, sql in MONEY_CHECKS:
            cursor.execute(sql, {"orgs": orgs, "since": since, "now": now})
            out.append({"name": name, "violations": cursor.fetchone()[0]})
    return out


def _totals(orgs: list[int], now: datetime) -> tuple[Decimal, Decimal]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_TOTALS_SQL, {"orgs": orgs, "now": now})
        remaining, spent = cursor.fetchone()
    return remaining, spent


@dataclass
class Probe:
    """One credits cell's figures and checks, called by the HTTP cell around its window (as a positional probe)."""

    organization_ids: list[int]
    gunicorn: Any
    service_slug: str
    unit_price: Decimal
    _start: tuple[Decimal, Decimal] = (Decimal(0), Decimal(0))
    _refused: dict[str, float] = field(default_factory=dict)
    _since: datetime | None = None

    def before_warmup(self) -> None:
        return None

    def before_measure(self) -> None:
        from django.utils import timezone

        self.gunicorn.wait_idle()
        self._since = timezone.now()
        self._start = _totals(self.organization_ids, self._since)
        self._refused = refusals_read(self.gunicorn.url, self.service_slug)

    def after_measure(self) -> dict[str, Any]:
        """Once the window's requests are all answered (the caller waited for idle workers)."""
        from django.db import connection
        from django.utils import timezone

        assert self._since is not None
        now = timezone.now()
        refused = refusals_read(self.gunicorn.url, self.service_slug)
        unit_cost = _round_money(Fraction(self.unit_price))  # one request of the per-unit service
        with connection.cursor() as cursor:
            cursor.execute(_WINDOW_SQL, {"orgs": self.organization_ids, "since": self._since, "unit_cost": unit_cost})
            records, cost, mispriced, drawn = cursor.fetchone()
        remaining, spent = _totals(self.organization_ids, now)
        oracle = _round_money(records * Fraction(self.unit_price))
        checks = [
            {"name": "each record costs the per-unit price (Fraction oracle)", "violations": mispriced, "records": records},
            {
                "name": "window's usage cost == records x unit price (Fraction oracle)",
                "violations": int(cost != oracle),
                "cost": str(cost),
                "oracle": str(oracle),
            },
            {
                "name": "budgets' spend moved by the window's usage cost",
                "violations": int(spent - self._start[1] != cost),
                "moved": str(spent - self._start[1]),
            },
            {
                "name": "grants' remaining fell by the window's usage draw, which is its usage cost",
                "violations": int(self._start[0] - remaining != drawn or drawn != cost),
                "drawn": str(drawn),
                "fell": str(self._start[0] - remaining),
            },
            *money_checks(self.organization_ids, since=self._since, now=now),
        ]
        return {
            "records": records,
            "cost": str(cost),
            "drawn_from_grants": str(drawn),
            "budget_refused": int(refused.get("budget_exceeded", 0) - self._refused.get("budget_exceeded", 0)),
            "insufficient_balance": int(refused.get("insufficient_balance", 0) - self._refused.get("insufficient_balance", 0)),
            "checks": checks,
            "ok": all(check["violations"] == 0 for check in checks),
        }


def probe_for(*, credits: CreditsData, mode: str, gunicorn) -> Probe:
    data = credits.data
    tenants = [data.hot] if mode == "hot" else data.spread
    return Probe(
        organization_ids=[t.organization_id for t in tenants],
        gunicorn=gunicorn,
        service_slug=data.service_slug,
        unit_price=data.unit_price,
    )


# --- the summary -------------------------------------------------------------------------------------------


def credit_rows(rows: list[dict], cells: list[dict]) -> list[dict]:
    """Per wallet mode and client count: the per-unit case's throughput, the credits case's and its ratio
    (medians of the same run), and the credits figures summed over the repeats."""
    by_key = {(r["case"], r["mode"], r["clients"]): r for r in rows}
    out = []
    for mode, clients in sorted({(r["mode"], r["clients"]) for r in rows if r["case"] == CASE}):
        base, row = by_key.get(("http", mode, clients)), by_key[(CASE, mode, clients)]
        runs = [c[CASE] for c in cells if (c["case"], c["mode"], c["clients"]) == (CASE, mode, clients)]
        out.append(
            {
                "mode": mode,
                "clients": clients,
                "per_unit": base["throughput"] if base else None,
                "per_unit_runs": base["throughput_runs"] if base else [],
                "credits": row["throughput"],
                "credits_runs": row["throughput_runs"],
                "ratio": row["throughput"] / base["throughput"] if base and base["throughput"] else None,
                "error_rate": row["error_rate"],
                "p50_ms": (base["p50_ms"] if base else None, row["p50_ms"]),
                "records": sum(r["records"] for r in runs),
                "cost": str(sum((Decimal(r["cost"]) for r in runs), Decimal(0))),
                "budget_refused": sum(r["budget_refused"] for r in runs),
                "statuses_402": sum(
                    int(c.get("statuses", {}).get("402", 0) or c.get("statuses", {}).get(402, 0))
                    for c in cells
                    if (c["case"], c["mode"], c["clients"]) == (CASE, mode, clients)
                ),
                "windows": len(runs),
                "windows_ok": sum(1 for r in runs if r["ok"]),
                "failed_checks": sorted({c["name"] for r in runs for c in r["checks"] if c["violations"]}),
            }
        )
    return out


def aims(entries: list[dict], max_error_rate: float) -> list[dict]:
    """The aim at 16 clients, and every window's money checks, in the shape of run.aims()'s rows."""
    out = []
    for entry in entries:
        if entry["clients"] == 16:
            ratio = entry["ratio"]
            invalid = entry["error_rate"] > max_error_rate
            out.append(
                {
                    "aim": f"(2g)/(2) throughput, 16 clients, {entry['mode']} >= {AIM_VS_PER_UNIT:.1f}x",
                    "value": ratio,
                    "target": AIM_VS_PER_UNIT,
                    "ok": None if invalid or ratio is None else ratio >= AIM_VS_PER_UNIT,
                    "invalid": invalid,
                    "text": "n/a (no per-unit cell)" if ratio is None else f"{ratio:.2f}x",
                }
            )
        out.append(
            {
                "aim": f"(2g) money checks, {entry['mode']}, {entry['clients']} clients",
                "value": entry["windows_ok"],
                "target": entry["windows"],
                "ok": entry["windows_ok"] == entry["windows"],
                "invalid": False,
                "text": f"{entry['windows_ok']}/{entry['windows']} windows",
            }
        )
    return out


def all_ok(cells: list[dict]) -> bool:
    return all(c[CASE]["ok"] for c in cells if c["case"] == CASE and CASE in c)


def print_credits(entries: list[dict], args) -> None:
    print(
        f"\nCredits and budgets: POST usage/ per-unit (2) vs (2g), from organizations with 3 live credit grants and a "
        f"hard monthly budget, same clients and cells (medians of {args.repeat}; aim: >= {AIM_VS_PER_UNIT:.1f}x at 16 clients)"
    )
    print(f"  {'wallet':<7} {'clients':>7} {'per-unit/s':>11} {'credits/s':>10} {'ratio':>6}  {'p50 ms (2)/(2g)':>16}  verdict")
    for e in entries:
        ratio = e["ratio"]
        verdict = "" if e["clients"] != 16 or ratio is None else ("met" if ratio >= AIM_VS_PER_UNIT else "NOT met")
        per_unit = f"{e['per_unit']:>11,.0f}" if e["per_unit"] else f"{'-':>11}"
        p50 = "/".join(f"{v:.2f}" if v is not None else "-" for v in e["p50_ms"])
        print(
            f"  {e['mode']:<7} {e['clients']:>7} {per_unit} {e['credits']:>10,.0f} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>6}  {p50:>16}  {verdict}"
        )
        print(
            f"    runs: per-unit {e['per_unit_runs']}, credits {e['credits_runs']}; {e['records']:,} events charged "
            f"({e['cost']} drawn from grants and counted against the budgets); refused by the budget: {e['budget_refused']} "
            f"(HTTP 402s: {e['statuses_402']}); money checks held in {e['windows_ok']}/{e['windows']} windows"
            + (f"; FAILED: {', '.join(e['failed_checks'])}" if e["failed_checks"] else "")
        )
