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


def ensure(*, spread_count: int) -> BenchData:
    """Make whatever is missing; fast when everything exists (a handful of queries)."""
    from django.db import connection, transaction

    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_digest, organization_create
    from metering import selectors
    from metering.calculators import measure
    from metering.models import CalcMethod, Price, Service
    from metering.pricing import strategy_for
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

    wanted = [HOT_SLUG, *(SPREAD_SLUG.format(i) for i in range(spread_count))]
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
    funding = {slug: HOT_FUNDING if slug == HOT_SLUG else SPREAD_FUNDING for slug in wanted}
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

    hot = tenant(HOT_SLUG)
    priced = selectors.priced_service_get(slug=SERVICE_SLUG, organization_id=hot.organization_id)
    cost = strategy_for(priced.calc_method).cost(priced.calc_method, measure(priced.calc_method, {}), priced.prices)
    assert priced.prices.unit_price is not None  # the bench service is priced per request (UNIT_PRICE)
    data = BenchData(
        hot=hot,
        spread=[tenant(SPREAD_SLUG.format(i)) for i in range(spread_count)],
        service_slug=SERVICE_SLUG,
        service_id=priced.service_id,
        calc_method=priced.calc_method,
        unit_price=priced.prices.unit_price,
        cost=cost,
    )
    print(f"bench: setup ready in {time.monotonic() - started:.1f}s (1 hot + {spread_count} spread organizations)", flush=True)
    return data


def write_key_files(data: BenchData) -> dict[str, str]:
    """One secret per line, for wrk's scripts."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = {}
    for mode, tenants in (("hot", [data.hot]), ("spread", data.spread)):
        path = RESULTS_DIR / f".wrk-keys-{mode}.txt"
        path.write_text("".join(t.secret + "\n" for t in tenants))
        path.chmod(0o600)
        paths[mode] = str(path)
    return paths


# --- The money invariants (docs/contract.md §2), on the bench organizations only ----------------------------------

_CHECKS: list[tuple[str, str]] = [
    (
        "wallet balance == sum of its ledger entries",
        """SELECT count(*) FROM payments_wallet w
             LEFT JOIN (SELECT organization_id, sum(amount) AS total FROM payments_ledgerentry
                         WHERE account = 'wallet' AND organization_id = ANY(%(orgs)s) GROUP BY organization_id) e
               ON e.organization_id = w.organization_id
            WHERE w.organization_id = ANY(%(orgs)s) AND w.balance <> coalesce(e.total, 0)""",
    ),
    (
        "each wallet entry's balance_after == running sum (id order = lock order)",
        """SELECT count(*) FROM (
             SELECT balance_after, sum(amount) OVER (PARTITION BY organization_id ORDER BY id) AS running
               FROM payments_ledgerentry WHERE account = 'wallet' AND organization_id = ANY(%(orgs)s)) x
            WHERE balance_after <> running""",
    ),
    (
        "every transfer's entries sum to zero",
        """SELECT count(*) FROM (SELECT transfer_id FROM payments_ledgerentry WHERE organization_id = ANY(%(orgs)s)
                                  GROUP BY transfer_id HAVING sum(amount) <> 0 OR count(*) < 2) x""",
    ),
    (
        "each live usage record == its transfer's wallet entry (cost, balance_after)",
        """SELECT count(*) FROM metering_usagerecord u
             LEFT JOIN payments_ledgerentry e ON e.transfer_id = u.transfer_id AND e.account = 'wallet'
            WHERE u.organization_id = ANY(%(orgs)s) AND NOT u.test AND u.cost > 0
              AND (e.id IS NULL OR -e.amount <> u.cost OR e.balance_after <> u.balance_after)""",
    ),
    (
        "daily rollups == their usage records (events, cost)",
        """SELECT count(*) FROM (
             SELECT organization_id, service_id, created_at::date AS day, test, count(*) AS events, sum(cost) AS cost
               FROM metering_usagerecord WHERE organization_id = ANY(%(orgs)s)
              GROUP BY 1, 2, 3, 4) u
             FULL JOIN (SELECT * FROM metering_usagerollup WHERE organization_id = ANY(%(orgs)s)) r
               ON r.organization_id = u.organization_id AND r.service_id = u.service_id AND r.day = u.day AND r.test = u.test
            WHERE u.events IS DISTINCT FROM r.events OR u.cost IS DISTINCT FROM r.cost""",
    ),
    (
        "each API key's spent == its live usage",
        """SELECT count(*) FROM accounts_apikey k
             LEFT JOIN (SELECT api_key_id, sum(cost) AS total FROM metering_usagerecord
                         WHERE organization_id = ANY(%(orgs)s) AND NOT test GROUP BY api_key_id) u ON u.api_key_id = k.id
            WHERE k.organization_id = ANY(%(orgs)s) AND k.spent <> coalesce(u.total, 0)""",
    ),
]


def verify(data: BenchData) -> dict[str, Any]:
    """Answers {ok, checks: [{name, violations}], seconds, rows}."""
    return verify_organizations(data.organization_ids)


def verify_organizations(orgs: list[int]) -> dict[str, Any]:
    """The checks of `verify` on any organizations (the soak's own)."""
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
