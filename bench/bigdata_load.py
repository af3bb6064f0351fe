"""The big-data bench's fixtures and loader: organizations, keys and services made through the real
services, then usage records with their ledger postings bulk-loaded with COPY.

What a loaded chunk writes, in ONE transaction, so that an interrupted load leaves nothing half-done:

- its organizations' wallet rows are locked first (`SELECT … FOR UPDATE`, in id order: the lock order
  of `billing_site/locks.py`, wallet before API key), so no debit can interleave with the postings;
- per organization, one `adjustment` transfer (counter account `adjustments`) funding exactly what the
  chunk's live usage of that organization costs, then one `usage` transfer (counter `revenue`) per live
  record, each with its two balanced entries and `balance_after` the running sum from the wallet's
  balance: the chunk nets to zero, so the wallet's `balance` (the sum of its entries) is unchanged and
  the wallet guard (payments migration 0005) is never asked to allow anything;
- the usage records (2% of the large organization's are test-mode: priced, no transfer), with the
  prices, quantities, costs and request hashes `metering.services.events.event_price` gives;
- the daily rollups and the API keys' `spent`, computed by SQL from the rows just copied (the rollup
  with the app's own upsert), so they agree with the records by construction.

The triggers stay on: the balanced-transfer check runs over every copied entry, and the immutable
tables only ever see INSERTs. Ids are reserved from each table's sequence before the COPY (nothing
else writes to a bench database while it loads; a concurrent writer would collide on a primary key and
the chunk would roll back whole).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

SLUG_PREFIX = "bench-bigdata-"
LARGE_SLUG = "bench-bigdata-large"
SMALL_SLUG = "bench-bigdata-{:05d}"
STAFF_EMAIL = "bench-bigdata-staff@bench.invalid"
OWNER_EMAIL = "bench-bigdata-owner@bench.invalid"  # owns the many small organizations nobody signs in to
LARGE_OWNER_EMAIL = "bench-bigdata-large@bench.invalid"
SMALL_OWNER_EMAIL = "bench-bigdata-small@bench.invalid"  # owns only the measured small organization
OPENING_FUNDS = Decimal("1000")
TEST_SHARE = 0.02  # of the large organization's records: test mode
UNITS = 10**12  # amounts travel as integers of 1e-12 (numeric(28,12)) inside the loader
VARIANTS_PER_SERVICE = 24

# (slug, calc method, general prices, one quantity mapping per variant index)
SERVICES: tuple[tuple[str, str, dict[str, Decimal], Callable[[int], dict[str, int]]], ...] = (
    (
        "bigdata-llm",
        "TOKENS",
        {"input_price": Decimal("2.5"), "output_price": Decimal("10")},
        lambda i: {"input_tokens": 150 + 97 * i, "output_tokens": 20 + 31 * i},
    ),
    ("bigdata-translate", "CHAR_COUNT", {"unit_price": Decimal("0.02")}, lambda i: {"characters": 80 + 113 * i}),
    ("bigdata-moderation", "REQUEST", {"unit_price": Decimal("0.0004")}, lambda i: {}),
)
SERVICE_WEIGHTS = (0.7, 0.2, 0.1)


@dataclass(frozen=True)
class Variant:
    """One priced event shape, as a COPY text fragment from service_id to hold_id, and its cost."""

    copy_fragment: str
    cost: int  # in 1e-12


@dataclass(frozen=True)
class Fixtures:
    large_id: int
    small_id: int  # the measured small organization
    organization_ids: list[int]  # large first
    live_keys: dict[int, list[int]]  # organization id → its live keys
    test_key: int  # the large organization's test key
    staff_id: int
    large_owner_id: int
    small_owner_id: int
    variants: list[Variant]


def money_text(amount: int) -> str:
    """An integer of 1e-12 units as numeric text."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    return f"{sign}{amount // UNITS}.{amount % UNITS:012d}"


def _units(value: Decimal | None) -> str:
    return "\\N" if value is None else format(value, "f")


def ensure_fixtures(*, small_organizations: int, quiet: bool = False) -> Fixtures:
    """Everything but the usage, made through the services; fast when it all exists."""
    from django.db import transaction

    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, organization_create
    from metering.models import Price, Service
    from metering.services import UsageEvent, price_create, service_create
    from metering.services.events import event_price
    from payments.ledger import wallet_adjust
    from payments.models import LedgerEntry

    started = time.monotonic()
    users = {}
    for email, is_staff in ((STAFF_EMAIL, True), (OWNER_EMAIL, False), (LARGE_OWNER_EMAIL, False), (SMALL_OWNER_EMAIL, False)):
        user = User.objects.filter(email=email).first()
        if user is None:
            user = (
                User.objects.create_superuser(email=email, password=None)
                if is_staff
                else User.objects.create_user(email=email, password=None)
            )
        users[email] = user
    staff = users[STAFF_EMAIL]

    for slug, method, prices, _ in SERVICES:
        service = Service.objects.filter(slug=slug).first() or service_create(slug=slug, name=slug, calc_method=method)
        if not Price.objects.filter(service=service, organization__isnull=True).exists():
            price_create(
                service=service,
                organization_id=None,
                effective_from=datetime(2000, 1, 1, tzinfo=UTC),
                created_by_id=staff.pk,
                **dict[str, Any](prices),
            )

    wanted = [LARGE_SLUG, *(SMALL_SLUG.format(i) for i in range(small_organizations))]
    organizations = {o.slug: o for o in Organization.objects.filter(slug__in=wanted)}
    missing = [slug for slug in wanted if slug not in organizations]
    if missing:
        print(f"bigdata: creating {len(missing)} organizations, their keys and opening funds (once)", flush=True)
    for slug in missing:
        owner = users[
            LARGE_OWNER_EMAIL if slug == LARGE_SLUG else SMALL_OWNER_EMAIL if slug == SMALL_SLUG.format(0) else OWNER_EMAIL
        ]
        with transaction.atomic():
            organization = organization_create(name=slug, owner=owner)
            if organization.slug != slug:
                raise SystemExit(f"bigdata: wanted the slug {slug}, got {organization.slug}")
            for index in range(3 if slug == LARGE_SLUG else 1):
                api_key_create(organization=organization, name=f"bench live {index}", created_by=owner)
            if slug == LARGE_SLUG:
                api_key_create(organization=organization, name="bench test", mode="test", created_by=owner)
        organizations[slug] = organization
    funded = set(
        LedgerEntry.objects.filter(organization__slug__in=wanted, account="wallet")
        .values_list("organization_id", flat=True)
        .distinct()
    )
    for organization in organizations.values():
        if organization.pk not in funded:
            wallet_adjust(
                organization_id=organization.pk,
                amount=OPENING_FUNDS,
                reason="bench bigdata opening funds",
                created_by_id=staff.pk,
            )

    live_keys: dict[int, list[int]] = {}
    test_key = None
    for key_id, organization_id, mode in (
        ApiKey.objects.filter(organization__slug__in=wanted).order_by("id").values_list("id", "organization_id", "mode")
    ):
        if mode == "test":
            test_key = key_id
        else:
            live_keys.setdefault(organization_id, []).append(key_id)
    assert test_key is not None, "the large organization has a test key"

    large = organizations[LARGE_SLUG]
    variants = []
    for slug, _, _, quantities in SERVICES:
        for index in range(VARIANTS_PER_SERVICE):
            event = UsageEvent(service=slug, idempotency_key="variant", data=quantities(index))
            priced = event_price(event, organization_id=large.pk)
            q = priced.quantities
            fragment = "\t".join(
                [
                    str(priced.service_id),
                    str(q.quantity),
                    "\\N" if q.input_tokens is None else str(q.input_tokens),
                    "\\N" if q.output_tokens is None else str(q.output_tokens),
                    _units(priced.prices.get("input_price")),
                    _units(priced.prices.get("output_price")),
                    _units(priced.prices.get("unit_price")),
                    format(priced.cost, "f"),
                    priced.request_hash,
                    "{}",  # metadata
                    "\\N",  # user_id
                    "\\N",  # hold_id
                ]
            )
            variants.append(Variant(copy_fragment=fragment, cost=int(priced.cost * UNITS)))
    if not quiet:
        print(f"bigdata: fixtures ready in {time.monotonic() - started:.1f}s", flush=True)
    return Fixtures(
        large_id=large.pk,
        small_id=organizations[SMALL_SLUG.format(0)].pk,
        organization_ids=[organizations[slug].pk for slug in wanted],
        live_keys=live_keys,
        test_key=test_key,
        staff_id=staff.pk,
        large_owner_id=users[LARGE_OWNER_EMAIL].pk,
        small_owner_id=users[SMALL_OWNER_EMAIL].pk,
        variants=variants,
    )


def loaded_records(fixtures: Fixtures) -> int:
    """How many usage records the bench organizations have, from their daily rollups (exact: nothing
    drops records in a bench database)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(events), 0) FROM metering_usagerollup WHERE organization_id = ANY(%s)",
            [fixtures.organization_ids],
        )
        return int(cursor.fetchone()[0])


# Columns in the order the loader writes them (a Variant's fragment covers service_id … hold_id).
USAGE_COPY = (
    "COPY metering_usagerecord (id, organization_id, api_key_id, test, service_id, quantity, input_tokens, output_tokens,"
    " input_price, output_price, unit_price, cost, request_hash, metadata, user_id, hold_id, idempotency_key, transfer_id,"
    " balance_after, created_at) FROM STDIN"
)
TRANSFER_COPY = "COPY payments_transfer (id, organization_id, kind, reference, created_by_id, memo, created_at) FROM STDIN"
ENTRY_COPY = "COPY payments_ledgerentry (id, transfer_id, organization_id, account, amount, balance_after, created_at) FROM STDIN"

_ROLLUP_SOURCE = """SELECT organization_id, service_id, (created_at AT TIME ZONE 'UTC')::date, test, count(*), sum(quantity),
       sum(coalesce(input_tokens, 0)), sum(coalesce(output_tokens, 0)), sum(cost), 0
  FROM metering_usagerecord WHERE id BETWEEN %(first)s AND %(last)s GROUP BY 1, 2, 3, 4"""
_SPEND_SQL = """UPDATE accounts_apikey k SET spent = k.spent + s.total
  FROM (SELECT api_key_id, sum(cost) AS total FROM metering_usagerecord
         WHERE id BETWEEN %(first)s AND %(last)s AND NOT test GROUP BY api_key_id) s
 WHERE k.id = s.api_key_id"""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _reserve(cursor, table: str, count: int) -> int:
    """The first of `count` consecutive ids taken from `table`'s sequence (0 when none are wanted)."""
    if count == 0:
        return 0
    cursor.execute(
        "SELECT setval(pg_get_serial_sequence(%s, 'id'), nextval(pg_get_serial_sequence(%s, 'id')) + %s - 1) - %s + 1",
        [table, table, count, count],
    )
    return cursor.fetchone()[0]


@dataclass(frozen=True)
class ChunkPlan:
    """The chunk's events, oldest first: (microseconds since the epoch, organization id, key id, test, variant)."""

    events: list[tuple[int, int, int, bool, int]]


def plan_chunk(fixtures: Fixtures, *, count: int, large_share: float, window: tuple[datetime, datetime], seed: int) -> ChunkPlan:
    rng = random.Random(seed)
    start = (window[0] - EPOCH) // timedelta(microseconds=1)
    span = (window[1] - window[0]) // timedelta(microseconds=1)
    small = fixtures.organization_ids[1:]
    per_service = VARIANTS_PER_SERVICE
    services = rng.choices(range(len(SERVICES)), weights=SERVICE_WEIGHTS, k=count)
    events = []
    for service in services:
        if rng.random() < large_share:
            organization = fixtures.large_id
            test = rng.random() < TEST_SHARE
        else:
            organization = small[rng.randrange(len(small))]
            test = False
        key = fixtures.test_key if test else rng.choice(fixtures.live_keys[organization])
        events.append((start + rng.randrange(span), organization, key, test, service * per_service + rng.randrange(per_service)))
    events.sort()
    return ChunkPlan(events=events)


def load_chunk(plan: ChunkPlan, fixtures: Fixtures) -> dict[str, float]:
    """Write one planned chunk in one transaction (see the module docstring); answers seconds per phase."""
    from django.db import connection, transaction

    phases: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases[name] = round(now - clock, 2)
        clock = now

    events = plan.events
    variants = fixtures.variants
    organizations = sorted({organization for _, organization, _, _, _ in events})
    funding: dict[int, int] = {}
    first_seen: dict[int, int] = {}
    for micros, organization, _, test, variant_index in events:
        if not test:
            funding[organization] = funding.get(organization, 0) + variants[variant_index].cost
            first_seen.setdefault(organization, micros)
    live = sum(1 for event in events if not event[3])

    with transaction.atomic(durable=True):
        cursor = connection.cursor().cursor  # the psycopg cursor, inside Django's transaction
        cursor.execute(
            "SELECT organization_id, balance FROM payments_wallet WHERE organization_id = ANY(%s)"
            " ORDER BY organization_id FOR UPDATE",
            [organizations],
        )
        balances = {organization: int(balance * UNITS) for organization, balance in cursor.fetchall()}
        first_record = _reserve(cursor, "metering_usagerecord", len(events))
        next_transfer = _reserve(cursor, "payments_transfer", len(funding) + live)
        next_entry = _reserve(cursor, "payments_ledgerentry", 2 * (len(funding) + live))

        transfers: list[str] = []
        entries: list[str] = []
        records: list[str] = []
        for organization, amount in funding.items():
            stamp = _timestamp(first_seen[organization] - 1_000_000)
            balances[organization] += amount
            transfers.append(
                f"{next_transfer}\t{organization}\tadjustment\tbench-bigdata funding\t{fixtures.staff_id}\t"
                f"bench bigdata: funds the usage loaded with it\t{stamp}\n"
            )
            entries.append(
                f"{next_entry}\t{next_transfer}\t{organization}\twallet\t{money_text(amount)}\t"
                f"{money_text(balances[organization])}\t{stamp}\n"
                f"{next_entry + 1}\t{next_transfer}\t{organization}\tadjustments\t{money_text(-amount)}\t\\N\t{stamp}\n"
            )
            next_transfer += 1
            next_entry += 2
        record_id = first_record
        for micros, organization, key, test, variant_index in events:
            variant = variants[variant_index]
            stamp = _timestamp(micros)
            if test:
                transfer_field, balance_field = "\\N", "\\N"
            else:
                balances[organization] -= variant.cost
                balance_field = money_text(balances[organization])
                cost = money_text(variant.cost)
                transfer_field = str(next_transfer)
                transfers.append(f"{next_transfer}\t{organization}\tusage\tusage:bd-{record_id}\t\\N\t\t{stamp}\n")
                entries.append(
                    f"{next_entry}\t{next_transfer}\t{organization}\twallet\t-{cost}\t{balance_field}\t{stamp}\n"
                    f"{next_entry + 1}\t{next_transfer}\t{organization}\trevenue\t{cost}\t\\N\t{stamp}\n"
                )
                next_transfer += 1
                next_entry += 2
            records.append(
                f"{record_id}\t{organization}\t{key}\t{'t' if test else 'f'}\t{variant.copy_fragment}\tbd-{record_id}\t"
                f"{transfer_field}\t{balance_field}\t{stamp}\n"
            )
            record_id += 1
        if any(balance < 0 for balance in balances.values()):
            raise AssertionError("bigdata: a wallet would go below zero")
        lap("generate")
        for name, statement, lines in (
            ("copy transfers", TRANSFER_COPY, transfers),
            ("copy entries", ENTRY_COPY, entries),
            ("copy records", USAGE_COPY, records),
        ):
            with cursor.copy(statement) as copy:
                for block in range(0, len(lines), 5000):
                    copy.write("".join(lines[block : block + 5000]))
            lap(name)
        from metering.services.usage_sql import _rollup_upsert  # the app's own upsert: one encoding of the rollup

        span = {"first": first_record, "last": record_id - 1}
        cursor.execute(_rollup_upsert(_ROLLUP_SOURCE), span)
        cursor.execute(_SPEND_SQL, span)
        lap("rollups and spend")
    lap("commit (deferred foreign-key checks)")
    return phases


def _timestamp(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=micros)).isoformat()


def load(
    fixtures: Fixtures, *, count: int, chunk: int, large_share: float, days: int, seed: int
) -> Iterator[tuple[int, float, dict[str, float]]]:
    """Load `count` records in chunks; yields (records so far, seconds so far, the chunk's phases)."""
    now = datetime.now(UTC).replace(microsecond=0)
    window = (now - timedelta(days=days), now - timedelta(minutes=1))
    started = time.monotonic()
    done = 0
    while done < count:
        size = min(chunk, count - done)
        plan = plan_chunk(fixtures, count=size, large_share=large_share, window=window, seed=seed + done)
        phases = load_chunk(plan, fixtures)
        done += size
        yield done, time.monotonic() - started, phases


def vacuum_analyze() -> float:
    """What autovacuum would do after such a load, done now so every size is measured settled."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "VACUUM (ANALYZE) metering_usagerecord, metering_usagerollup, payments_transfer, payments_ledgerentry,"
            " payments_wallet, accounts_apikey"
        )
    return time.monotonic() - started
