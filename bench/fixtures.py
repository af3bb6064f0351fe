"""The bench's organizations, keys, service and money — made through the real services, idempotently —
and the check of the money invariants on them afterwards.

One hot organization (`bench-hot`) and N spread ones (`bench-spread-0000` …), each with one live
API key. Key secrets are shown once by `api_key_create`, so they are kept in a git-ignored file
under bench/results/ and reused while their digests still match; missing keys are made anew.
Wallets are funded by `wallet_adjust` (a ledger posting), never by writing balances.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.env import RESULTS_DIR

SLUG_PREFIX = "bench-"
HOT_SLUG = "bench-hot"
SPREAD_SLUG = "bench-spread-{:04d}"
SERVICE_SLUG = "bench-request"
UNIT_PRICE = Decimal("0.000001")  # per request: a tiny price, so funding lasts for any run
OWNER_EMAIL = "bench-owner@bench.invalid"
HOT_FUNDING = Decimal("1000000")
SPREAD_FUNDING = Decimal("10000")


@dataclass(frozen=True)
class Tenant:
    slug: str
    organization_id: int
    api_key_id: int
    secret: str


@dataclass(frozen=True)
class BenchData:
    hot: Tenant
    spread: list[Tenant]
    service_slug: str
    service_id: int
    calc_method: str
    unit_price: Decimal
    cost: Decimal  # of one event, as the app prices it

    @property
    def organization_ids(self) -> list[int]:
        return [self.hot.organization_id, *(t.organization_id for t in self.spread)]


def _keys_file(database: str) -> Path:
    return RESULTS_DIR / f".keys-{hashlib.sha256(database.encode()).hexdigest()[:12]}.json"


def ensure(*, spread_count: int, hot_slug: str = HOT_SLUG, spread_slug: str = SPREAD_SLUG) -> BenchData:
    """Make whatever is missing; fast when everything exists (a handful of queries). Another set of
    organizations (the credits case's, bench/credits.py) passes its own slugs."""
    from django.db import connection, transaction

    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_digest, organization_create
    from metering import selectors
    from metering.calculators import measure
    from metering.models import CalcMethod, Price, Service
    from metering.pricing import cost_at
    from metering.services import price_create, service_create
    from payments.ledger import wallet_adjust
    from payments.models import Wallet

    started = time.monotonic()
    owner = User.objects.filter(email=OWNER_EMAIL).first() or User.objects.create_user(email=OWNER_EMAIL, password=None)

    service = Service.objects.filter(slug=SERVICE_SLUG).first()
    if service is None:
        service = service_create(slug=SERVICE_SLUG, name="Bench request", calc_method=CalcMethod.REQUEST)
    if not service.active:
        raise SystemExit(f"bench: the service {SERVICE_SLUG} exists but is inactive; activate it or use another database.")
    if not Price.objects.filter(service=service, organization__isnull=True).exists():
        price_create(service=service, organization_id=None, effective_from=None, created_by_id=owner.pk, unit_price=UNIT_PRICE)

    wanted = [hot_slug, *(spread_slug.format(i) for i in range(spread_count))]
    organizations = {o.slug: o for o in Organization.objects.filter(slug__in=wanted)}
    missing = [slug for slug in wanted if slug not in organizations]
    if missing:
        print(f"bench: creating {len(missing)} organizations (once)", flush=True)
        with transaction.atomic():
            for slug in missing:
                organization = organization_create(name=slug, owner=owner)
                if organization.slug != slug:
                    raise SystemExit(f"bench: wanted the slug {slug}, got {organization.slug}")
                organizations[slug] = organization

    keys_file = _keys_file(connection.settings_dict["NAME"] + str(connection.get_connection_params().get("host")))
    try:
        secrets: dict[str, str] = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        secrets = {}
    live = {
        row["digest"]: row
        for row in ApiKey.objects.filter(
            organization__slug__in=wanted, revoked_at__isnull=True, expires_at__isnull=True, mode="live", spend_cap__isnull=True
        ).values("id", "digest", "organization__slug")
    }
    key_ids: dict[str, int] = {}
    for slug in wanted:
        secret = secrets.get(slug)
        row = live.get(api_key_digest(secret)) if secret else None
        if row is not None and row["organization__slug"] == slug:
            key_ids[slug] = row["id"]
    absent = [slug for slug in wanted if slug not in key_ids]
    if absent:
        print(f"bench: creating {len(absent)} API keys", flush=True)
        with transaction.atomic():
            for slug in absent:
                created = api_key_create(organization=organizations[slug], name="bench", created_by=owner)
                secrets[slug], key_ids[slug] = created.secret, created.api_key.pk
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        keys_file.write_text(json.dumps(secrets))
        keys_file.chmod(0o600)

    # Top up through the ledger whatever fell below half its funding.
    funding = {slug: HOT_FUNDING if slug == hot_slug else SPREAD_FUNDING for slug in wanted}
    balances = dict(Wallet.objects.filter(organization__slug__in=wanted).values_list("organization__slug", "balance"))
    low = [slug for slug in wanted if balances[slug] < funding[slug] / 2]
    if low:
        print(f"bench: funding {len(low)} wallets through the ledger", flush=True)
    for slug in low:
        wallet_adjust(
            organization_id=organizations[slug].pk,
            amount=funding[slug] - balances[slug],
            reason="bench funding",
            created_by_id=owner.pk,
        )

    def tenant(slug: str) -> Tenant:
        return Tenant(slug=slug, organization_id=organizations[slug].pk, api_key_id=key_ids[slug], secret=secrets[slug])

    hot = tenant(hot_slug)
    priced = selectors.priced_service_get(slug=SERVICE_SLUG, organization_id=hot.organization_id)
    cost = cost_at(priced.calc_method, measure(priced.calc_method, {}), priced.prices, start=0, free_until=0).cost
    assert priced.prices.unit_price is not None  # the bench service is priced per request (UNIT_PRICE)
    data = BenchData(
        hot=hot,
        spread=[tenant(spread_slug.format(i)) for i in range(spread_count)],
        service_slug=SERVICE_SLUG,
        service_id=priced.service_id,
        calc_method=priced.calc_method,
        unit_price=priced.prices.unit_price,
        cost=cost,
    )
    print(
        f"bench: setup ready in {time.monotonic() - started:.1f}s ({hot_slug} + {spread_count} spread organizations)", flush=True
    )
    return data


def write_key_files(data: BenchData, *, prefix: str = "") -> dict[str, str]:
    """One secret per line, for wrk's scripts."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = {}
    for mode, tenants in (("hot", [data.hot]), ("spread", data.spread)):
        path = RESULTS_DIR / f".wrk-keys-{prefix}{mode}.txt"
        path.write_text("".join(t.secret + "\n" for t in tenants))
        path.chmod(0o600)
        paths[mode] = str(path)
    return paths


# --- One high-volume organization (docs/contract.md §2.9), measured striped and single-row in the same run ---------

HIGH_VOLUME_SLUG = "bench-high-volume"


def ensure_high_volume(data: BenchData) -> tuple[BenchData, str]:
    """The bench's high-volume organization, with a live key and the hot wallet's funding: answers
    bench data whose `hot` tenant is that organization (and no spread ones), and its wrk key file.
    Its stripe count is set per cell by `high_volume_stripes_set`."""
    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_digest, organization_create
    from payments.ledger import wallet_adjust
    from payments.models import Wallet

    owner = User.objects.get(email=OWNER_EMAIL)
    organization = Organization.objects.filter(slug=HIGH_VOLUME_SLUG).first() or organization_create(
        name=HIGH_VOLUME_SLUG, owner=owner
    )
    keys_file = RESULTS_DIR / ".keys-high-volume.json"
    try:
        secret = json.loads(keys_file.read_text()).get(HIGH_VOLUME_SLUG)
    except (OSError, ValueError):
        secret = None
    api_key = (
        ApiKey.objects.filter(
            organization=organization, digest=api_key_digest(secret), revoked_at__isnull=True, spend_cap__isnull=True
        ).first()
        if secret
        else None
    )
    if api_key is None:
        created = api_key_create(organization=organization, name="bench", created_by=owner)
        secret, api_key = created.secret, created.api_key
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        keys_file.write_text(json.dumps({HIGH_VOLUME_SLUG: secret}))
        keys_file.chmod(0o600)
    balance = Wallet.objects.get(organization=organization).balance
    if balance < HOT_FUNDING / 2:
        wallet_adjust(
            organization_id=organization.pk, amount=HOT_FUNDING - balance, reason="bench funding", created_by_id=owner.pk
        )
    key_path = RESULTS_DIR / ".wrk-keys-high-volume.txt"
    key_path.write_text(secret + "\n")
    key_path.chmod(0o600)
    tenant = Tenant(slug=HIGH_VOLUME_SLUG, organization_id=organization.pk, api_key_id=api_key.pk, secret=secret)
    return BenchData(
        hot=tenant,
        spread=[],
        service_slug=data.service_slug,
        service_id=data.service_id,
        calc_method=data.calc_method,
        unit_price=data.unit_price,
        cost=data.cost,
    ), str(key_path)


def high_volume_stripes_set(data: BenchData, stripes: int) -> None:
    """Turn striping on (or off: 0) for the high-volume organization, through the staff service."""
    from payments.services import wallet_settings_update

    wallet_settings_update(organization_id=data.hot.organization_id, stripes=stripes)


# --- The money invariants (docs/contract.md §2), on the bench organizations only ----------------------------------

_CHECKS: list[tuple[str, str]] = [
    (
        "wallet balance (its row's + its stripes') == sum of its ledger entries",
        """SELECT count(*) FROM payments_wallet w
             LEFT JOIN (SELECT organization_id, sum(amount) AS total FROM payments_ledgerentry
                         WHERE account = 'wallet' AND organization_id = ANY(%(orgs)s) GROUP BY organization_id) e
               ON e.organization_id = w.organization_id
             LEFT JOIN (SELECT organization_id, sum(balance) AS total FROM payments_walletstripe
                         WHERE organization_id = ANY(%(orgs)s) GROUP BY organization_id) s
               ON s.organization_id = w.organization_id
            WHERE w.organization_id = ANY(%(orgs)s) AND w.balance + coalesce(s.total, 0) <> coalesce(e.total, 0)""",
    ),
    (
        "each wallet entry's balance_after == its row's running sum (id order = lock order)",
        """SELECT count(*) FROM (
             SELECT balance_after, sum(amount) OVER (PARTITION BY organization_id, stripe ORDER BY id) AS running
               FROM payments_ledgerentry WHERE account = 'wallet' AND organization_id = ANY(%(orgs)s)) x
            WHERE balance_after <> running""",
    ),
    (
        "every transfer's entries sum to zero",
        """SELECT count(*) FROM (SELECT transfer_id FROM payments_ledgerentry WHERE organization_id = ANY(%(orgs)s)
                                  GROUP BY transfer_id HAVING sum(amount) <> 0 OR count(*) < 2) x""",
    ),
    (
        # Usage is in the ledger exactly: the live records of a usage transfer cost what its wallet leg
        # moved (one record, or a whole batch's), and the last of them (the lowest balance after: the
        # batch only debits) shows the leg's balance after — on a single-row wallet; on a high-volume
        # one the record carries the organization's balance, the entry its row's.
        "live usage records == their transfer's wallet leg (Σ cost, last balance_after when single-row)",
        """SELECT count(*) FROM (
             SELECT u.organization_id, u.transfer_id, sum(u.cost) AS cost, min(u.balance_after) AS last_balance
               FROM metering_usagerecord u
              WHERE u.organization_id = ANY(%(orgs)s) AND NOT u.test AND u.cost > 0
              GROUP BY 1, 2) r
             LEFT JOIN payments_ledgerentry e ON e.transfer_id = r.transfer_id AND e.account = 'wallet'
            WHERE e.id IS NULL OR -e.amount <> r.cost
               OR (e.balance_after <> r.last_balance AND NOT EXISTS (
                     SELECT 1 FROM payments_ledgerentry x WHERE x.organization_id = r.organization_id AND x.stripe IS NOT NULL))""",
    ),
    (
        "daily rollups == their usage records (events, cost)",
        """SELECT count(*) FROM (
             SELECT organization_id, service_id, created_at::date AS day, test, count(*) AS events, sum(cost) AS cost
               FROM metering_usagerecord WHERE organization_id = ANY(%(orgs)s)
              GROUP BY 1, 2, 3, 4) u
             FULL JOIN (SELECT organization_id, service_id, day, test, sum(events) AS events, sum(cost) AS cost
                          FROM metering_usagerollup WHERE organization_id = ANY(%(orgs)s) GROUP BY 1, 2, 3, 4) r
               ON r.organization_id = u.organization_id AND r.service_id = u.service_id AND r.day = u.day AND r.test = u.test
            WHERE u.events IS DISTINCT FROM r.events OR u.cost IS DISTINCT FROM r.cost""",
    ),
    (
        "each API key's spent == its live usage",
        """SELECT count(*) FROM accounts_apikey k
             LEFT JOIN (SELECT api_key_id, sum(cost) AS total FROM metering_usagerecord
                         WHERE organization_id = ANY(%(orgs)s) AND NOT test GROUP BY api_key_id) u ON u.api_key_id = k.id
            WHERE k.organization_id = ANY(%(orgs)s)
              AND k.spent + (SELECT coalesce(sum(s.spent), 0) FROM accounts_apikeystripespend s WHERE s.api_key_id = k.id)
                  <> coalesce(u.total, 0)""",
    ),
]


def verify(data: BenchData) -> dict[str, Any]:
    """Answers {ok, checks: [{name, violations}], seconds, rows}."""
    return verify_organizations(data.organization_ids)


def verify_organizations(orgs: list[int]) -> dict[str, Any]:
    """The money invariants on these organizations: {ok, checks: [{name, violations}], seconds, rows}."""
    from django.db import connection

    started = time.monotonic()
    results = []
    with connection.cursor() as cursor:
        for name, sql in _CHECKS:
            cursor.execute(sql, {"orgs": orgs})
            results.append({"name": name, "violations": cursor.fetchone()[0]})
        cursor.execute(
            "SELECT (SELECT count(*) FROM payments_ledgerentry WHERE organization_id = ANY(%(orgs)s)),"
            "       (SELECT count(*) FROM metering_usagerecord WHERE organization_id = ANY(%(orgs)s))",
            {"orgs": orgs},
        )
        entries, records = cursor.fetchone()
    # The rollup check groups records by UTC day; the app's rollup day is also the UTC date of `now`.
    return {
        "ok": all(r["violations"] == 0 for r in results),
        "checks": results,
        "seconds": round(time.monotonic() - started, 1),
        "ledger_entries": entries,
        "usage_records": records,
    }


# --- Positional prices: a tiered service and a plan's allowance (docs/performance.md, "Pricing models") ---------

TIERED_SLUG = "bench-tiered"
PLAN_SERVICE_SLUG = "bench-plan-request"
PLAN_SLUG = "bench-plan"
# Each tier cheaper than the one before, around the per-unit price (UNIT_PRICE), so funding lasts as long.
TIER_RATES = ("0.000002", "0.0000015", "0.000001", "0.0000008", "0.0000005")
PLAN_ALLOWANCE = 1_000_000  # the plan's nominal monthly quantity; the bench grants each cell's free units itself


@dataclass(frozen=True)
class PositionalData:
    tiered_slug: str
    tiered_service_id: int
    plan_service_slug: str
    plan_service_id: int
    plan_id: int
    owner_id: int


def ensure_positional(data: BenchData) -> PositionalData:
    """The tiered service (a general tiered price; each cell lays out its own tiers, see
    `tiered_layout`) and the plan's service (a general per-unit price of UNIT_PRICE, included in the
    plan `bench-plan`), with every bench organization subscribed to that plan (active, this month).
    Made through the catalogue's services and the models (not the subscriptions services)."""
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import User
    from metering import selectors
    from metering.models import CalcMethod, Plan, PlanAllowance, Price, Service, Subscription, SubscriptionStatus
    from metering.services import price_create, service_create
    from metering.services.positions import period_of

    owner = User.objects.get(email=OWNER_EMAIL)
    tiered = Service.objects.filter(slug=TIERED_SLUG).first() or service_create(
        slug=TIERED_SLUG, name="Bench request, tiered", calc_method=CalcMethod.REQUEST
    )
    if not Price.objects.filter(service=tiered, organization__isnull=True, plan__isnull=True).exists():
        tiered_price_create(tiered.pk, boundaries=[1000 * (k + 1) for k in range(len(TIER_RATES) - 1)], owner_id=owner.pk)
    plan_service = Service.objects.filter(slug=PLAN_SERVICE_SLUG).first() or service_create(
        slug=PLAN_SERVICE_SLUG, name="Bench request, in a plan", calc_method=CalcMethod.REQUEST
    )
    if not Price.objects.filter(service=plan_service, organization__isnull=True, plan__isnull=True).exists():
        price_create(
            service=plan_service, organization_id=None, effective_from=None, created_by_id=owner.pk, unit_price=UNIT_PRICE
        )
    period = period_of(timezone.now())
    # Subscriptions and allowances are not among the models whose saves invalidate the price cache on
    # this branch: the writes are wrapped so every process prices the plan's service anew.
    with transaction.atomic(), selectors.PRICED_SERVICES.invalidating():
        plan, _ = Plan.objects.get_or_create(
            slug=PLAN_SLUG, defaults={"name": "Bench plan", "monthly_fee": Decimal(0), "public": False}
        )
        PlanAllowance.objects.update_or_create(plan=plan, service=plan_service, defaults={"quantity": PLAN_ALLOWANCE})
        orgs = data.organization_ids
        current = dict(
            Subscription.objects.filter(organization_id__in=orgs)
            .exclude(status=SubscriptionStatus.CANCELED)
            .values_list("organization_id", "plan_id")
        )
        foreign = [org for org, plan_id in current.items() if plan_id != plan.pk]
        if foreign:
            raise SystemExit(f"bench: {len(foreign)} bench organizations are subscribed to another plan than {PLAN_SLUG}")
        Subscription.objects.filter(organization_id__in=orgs, plan=plan).exclude(status=SubscriptionStatus.CANCELED).exclude(
            status=SubscriptionStatus.ACTIVE, period=period
        ).update(status=SubscriptionStatus.ACTIVE, period=period)
        Subscription.objects.bulk_create(
            [
                Subscription(organization_id=org, plan=plan, status=SubscriptionStatus.ACTIVE, period=period)
                for org in orgs
                if org not in current
            ]
        )
    return PositionalData(
        tiered_slug=TIERED_SLUG,
        tiered_service_id=tiered.pk,
        plan_service_slug=PLAN_SERVICE_SLUG,
        plan_service_id=plan_service.pk,
        plan_id=plan.pk,
        owner_id=owner.pk,
    )


def tiered_price_create(service_id: int, *, boundaries: list[int], owner_id: int) -> int:
    """A new general tiered price for the service, its tiers ending at `boundaries` (ascending, one
    fewer than TIER_RATES) and at TIER_RATES; answers its id. Staff's new price row, as the back office
    makes it: it takes effect now and every process prices with it from its next request."""
    from metering.models import PriceModel, Service
    from metering.services import price_create

    ends: list[int | None] = [*boundaries, None]
    price = price_create(
        service=Service.objects.get(pk=service_id),
        organization_id=None,
        effective_from=None,
        created_by_id=owner_id,
        model=PriceModel.TIERED,
        tiers=[{"up_to": end, "unit_price": rate} for end, rate in zip(ends, TIER_RATES, strict=True)],
    )
    return price.pk


def positions_read(service_id: int, organization_ids: list[int]) -> dict[int, tuple[int, int]]:
    """organization → (used, free_until) of its live position for the service this period (absent: none yet)."""
    from django.db import connection
    from django.utils import timezone

    from metering.services.positions import period_of

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT organization_id, used, free_until FROM metering_usageposition"
            " WHERE service_id = %s AND period = %s AND NOT test AND organization_id = ANY(%s)",
            [service_id, period_of(timezone.now()), organization_ids],
        )
        return {org: (used, free_until) for org, used, free_until in cursor.fetchall()}


def plan_grant(service_id: int, units: dict[int, int]) -> None:
    """Each organization's free units of the service end now, then its next `units[organization]` are
    free: a measured window starts with exactly those free units."""
    from django.db import transaction
    from django.utils import timezone

    from metering.services.positions import period_of, position_grant, position_reduce

    period = period_of(timezone.now())
    with transaction.atomic():
        for org, count in units.items():
            # every free unit left goes (never below what is used), then the window's are granted
            position_reduce(organization_id=org, service_id=service_id, period=period, units=2**62)
            position_grant(organization_id=org, service_id=service_id, period=period, units=count)


def _round_money(value: Fraction) -> Decimal:
    """Half-even to the money scale, computed on the Fraction (the oracle does not use the app's rounding)."""
    return Decimal(round(value * 10**12)).scaleb(-12)


def _tiered_oracle(tiers: list[dict[str, Any]], start: int, units: int) -> Fraction:
    total, low = Fraction(0), 0
    for tier in tiers:
        high = tier["up_to"]
        top = start + units if high is None else min(start + units, high)
        total += max(0, top - max(start, low)) * Fraction(tier["unit_price"])
        low = high if high is not None else low
    return total


def verify_positional(pos: PositionalData, organization_ids: list[int]) -> list[dict[str, Any]]:
    """The positional services' own checks on the bench organizations, as {name, violations, ...}:
    positions are unique and gapless and end at the position row; each tiered record costs what an
    exact Fraction oracle gives for the positions it took, under the tiers of its price row (read from
    metering_price, not from the record); each record of the plan's service costs the per-unit price
    of its units past the free ones."""
    from django.db import connection

    checks = []
    with connection.cursor() as cursor:
        for label, service_id in (("tiered", pos.tiered_service_id), ("plan", pos.plan_service_id)):
            cursor.execute(
                """SELECT count(*) FILTER (WHERE r.position IS NULL OR r.position <> r.expected), count(*)
                     FROM (SELECT u.position, COALESCE(lag(u.position + u.quantity) OVER w, p.used - sum(u.quantity) OVER all_)
                                  AS expected
                             FROM metering_usagerecord u
                             JOIN metering_usageposition p ON p.organization_id = u.organization_id AND p.service_id = u.service_id
                                  AND p.period = date_trunc('month', u.created_at AT TIME ZONE 'UTC')::date AND NOT p.test
                            WHERE u.service_id = %(service)s AND u.organization_id = ANY(%(orgs)s) AND NOT u.test
                           WINDOW w AS (PARTITION BY u.organization_id, p.period ORDER BY u.position),
                                  all_ AS (PARTITION BY u.organization_id, p.period)) r""",
                {"service": service_id, "orgs": organization_ids},
            )
            wrong, records = cursor.fetchone()
            checks.append(
                {
                    "name": f"{label}: each record's position follows the one before, no gap, no overlap, up to the position row",
                    "violations": wrong,
                    "records": records,
                }
            )
        cursor.execute(
            """SELECT u.position, u.quantity, u.cost, p.tiers::text
                 FROM metering_usagerecord u JOIN metering_price p ON p.id = (u.pricing->>'price_id')::bigint
                WHERE u.service_id = %(service)s AND u.organization_id = ANY(%(orgs)s) AND NOT u.test""",
            {"service": pos.tiered_service_id, "orgs": organization_ids},
        )
        tier_rows: dict[str, list[dict[str, Any]]] = {}
        wrong = charged = 0
        total, oracle = Decimal(0), Decimal(0)
        for position, quantity, cost, tiers_text in cursor.fetchall():
            tiers = tier_rows.setdefault(tiers_text, json.loads(tiers_text))
            expected = _round_money(_tiered_oracle(tiers, position, quantity))
            wrong += cost != expected
            charged += 1
            total += cost
            oracle += expected
        checks.append(
            {
                "name": "tiered: each record's cost == the Fraction oracle at its positions, under its price row's tiers",
                "violations": wrong,
                "records": charged,
                "charged": str(total),
                "oracle": str(oracle),
            }
        )
        cursor.execute(
            """SELECT u.position, u.quantity, u.cost, (u.pricing->>'free_until')::bigint, p.unit_price
                 FROM metering_usagerecord u JOIN metering_price p ON p.id = (u.pricing->>'price_id')::bigint
                WHERE u.service_id = %(service)s AND u.organization_id = ANY(%(orgs)s) AND NOT u.test""",
            {"service": pos.plan_service_id, "orgs": organization_ids},
        )
        wrong = records = free = 0
        for position, quantity, cost, free_until, unit_price in cursor.fetchall():
            chargeable = max(0, position + quantity - max(position, free_until))
            expected = _round_money(chargeable * Fraction(unit_price))
            wrong += cost != expected
            records += 1
            free += chargeable == 0
        checks.append(
            {
                "name": "plan: each record costs the per-unit price of its units past the free ones (Fraction oracle)",
                "violations": wrong,
                "records": records,
                "free": free,
            }
        )
    return checks
