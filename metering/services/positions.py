"""Usage positions: an organization's usage of a service in the current period (calendar month, UTC),
for the prices that depend on it (docs/pricing.md). Lock order (billing_site/locks.py): a position
row comes before the wallet.

Two ways to take a position:
- locked (`position_lock`, inside a transaction): the row is locked, the event priced at its
  position, charged, and the position advanced, all before the commit — holds' captures, batches,
  test keys, capped keys, and the hot path when it cannot settle otherwise;
- optimistic (the hot path, metering/services/usage_sql.py): the event is priced at the position this
  process last saw, and the debit's one statement advances the position only if it still lies in the
  range of positions that cost the same (`pricing.cost_at`). Outside it, nothing is written and the
  event is priced again at the position the statement reports.

A position row is created at the first positional event of the period, starting from the period's
usage so far as the daily rollups count it (usage that was priced per unit before the price changed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection

if TYPE_CHECKING:
    from metering.services.events import PricedEvent

_ROLLUP_SO_FAR = """(SELECT COALESCE(sum(r.quantity), 0) FROM metering_usagerollup r
  WHERE r.organization_id = %(org)s AND r.service_id = %(service)s AND r.test = %(test)s
    AND r.day >= %(period)s AND r.day < (%(period)s::date + interval '1 month'))"""

# The key's row, and a new one starting from the period's usage so far.
_ROW = "organization_id = %(org)s AND service_id = %(service)s AND period = %(period)s AND test = %(test)s"
_INSERT = "INSERT INTO metering_usageposition AS p (organization_id, service_id, period, test, used, free_until)"
_ON_KEY = "ON CONFLICT (organization_id, service_id, period, test)"

# Creates the row when missing and locks it (a no-op update takes the row lock and answers the newest version).
_POSITION_LOCK_SQL = f"""
{_INSERT} VALUES (%(org)s, %(service)s, %(period)s, %(test)s, {_ROLLUP_SO_FAR}, 0)
{_ON_KEY} DO UPDATE SET used = p.used
RETURNING used, free_until
"""
_POSITION_ENSURE_SQL = f"""
WITH ins AS (
    {_INSERT} VALUES (%(org)s, %(service)s, %(period)s, %(test)s, {_ROLLUP_SO_FAR}, 0)
    {_ON_KEY} DO NOTHING
    RETURNING used, free_until
)
SELECT used, free_until FROM ins
UNION ALL
SELECT used, free_until FROM metering_usageposition WHERE {_ROW}
"""
_POSITION_ADVANCE_SQL = f"UPDATE metering_usageposition SET used = used + %(units)s WHERE {_ROW}"
# The free units a plan grants start where the usage is now, or extend what is left of earlier ones.
_POSITION_GRANT_SQL = f"""
{_INSERT} VALUES (%(org)s, %(service)s, %(period)s, false, {_ROLLUP_SO_FAR}, {_ROLLUP_SO_FAR} + %(units)s)
{_ON_KEY} DO UPDATE SET free_until = GREATEST(p.free_until, p.used) + %(units)s
RETURNING used, free_until
"""
# Free units taken back (an upgrade refunds the rest of the old plan): never below what is used already.
_POSITION_REDUCE_SQL = f"""
UPDATE metering_usageposition SET free_until = GREATEST(used, free_until - %(units)s)
 WHERE {_ROW} AND free_until > used
"""


def period_of(moment: datetime) -> date:
    """The period (the first day of the calendar month, UTC) an aware moment falls in."""
    return moment.astimezone(UTC).date().replace(day=1)


def period_bounds(period: date) -> tuple[datetime, datetime]:
    """The period's first moment and the next period's (UTC): [start, end)."""
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass(frozen=True, slots=True)
class PositionKey:
    organization_id: int
    service_id: int
    period: date
    test: bool

    def params(self) -> dict[str, Any]:
        return {"org": self.organization_id, "service": self.service_id, "period": self.period, "test": self.test}


@dataclass(frozen=True, slots=True)
class Position:
    used: int
    free_until: int


def position_lock(key: PositionKey) -> Position:
    """Lock the position row (creating it when missing) and answer it. Inside the caller's transaction,
    before the wallet's lock."""
    with connection.cursor() as cursor:
        cursor.execute(_POSITION_LOCK_SQL, key.params())
        used, free_until = cursor.fetchone()
    return Position(used, free_until)


def position_take(priced: PricedEvent, *, organization_id: int, now: datetime, test: bool) -> PricedEvent:
    """The locked path's step: lock the event's position row (before the wallet's), price the event at
    it and move the position on past its units — inside the caller's transaction, which charges it."""
    key = PositionKey(organization_id, priced.service_id, period_of(now), test)
    position = position_lock(key)
    priced = priced.at(position=position.used, free_until=position.free_until)
    position_advance(key, units=priced.units)
    return priced


def position_advance(key: PositionKey, *, units: int) -> None:
    """Move a locked position on by `units` (the caller priced them at its old value)."""
    if units:
        with connection.cursor() as cursor:
            cursor.execute(_POSITION_ADVANCE_SQL, {**key.params(), "units": units})


def position_ensure(key: PositionKey) -> Position:
    """The position row as this statement sees it, created when missing (no lock kept)."""
    with connection.cursor() as cursor:
        # A twin creating the row at the same moment makes ours do nothing while its row is not yet in
        # our snapshot; the next statement sees it.
        for _ in range(3):
            cursor.execute(_POSITION_ENSURE_SQL, key.params())
            row = cursor.fetchone()
            if row is not None:
                return Position(*row)
    raise RuntimeError("a usage position row neither inserted nor found")


def position_grant(*, organization_id: int, service_id: int, period: date, units: int) -> Position:
    """Make the next `units` units of the service free this period (a plan's included quantity), after
    any free units still left. Live usage only; inside the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            _POSITION_GRANT_SQL,
            {"org": organization_id, "service": service_id, "period": period, "test": False, "units": units},
        )
        used, free_until = cursor.fetchone()
    positions_seen.forget(organization_id)
    return Position(used, free_until)


def position_reduce(*, organization_id: int, service_id: int, period: date, units: int) -> None:
    """Take back up to `units` of the free units left of the service this period (never the ones used).
    Live usage only; inside the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            _POSITION_REDUCE_SQL,
            {"org": organization_id, "service": service_id, "period": period, "test": False, "units": units},
        )
    positions_seen.forget(organization_id)


class _PositionsSeen:
    """The last position this process saw per key: the hot path's first guess. A stale guess costs a
    retry, never a wrong price (the statement checks it)."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._seen: dict[PositionKey, Position] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: PositionKey) -> Position | None:
        return self._seen.get(key)

    def set(self, key: PositionKey, position: Position) -> None:
        with self._lock:
            if len(self._seen) >= self.max_entries and key not in self._seen:
                self._seen.clear()
            self._seen[key] = position

    def forget(self, organization_id: int) -> None:
        with self._lock:
            for key in [key for key in self._seen if key.organization_id == organization_id]:
                del self._seen[key]


positions_seen = _PositionsSeen()
