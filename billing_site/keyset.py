"""Keyset ("cursor") paging over rows listed newest first by (created_at, id): any page, and any chunk
of an export, costs what the first one does — no OFFSET, no COUNT, no server-side cursor.

The conditions are written so that PostgreSQL reads them as a range on an index that starts with
(…, created_at, id): `created_at <= t AND (created_at < t OR id < i)` (older than (t, i)) rather than
`created_at < t OR (created_at = t AND id < i)`, which is the same set but no index range, and makes
page 5,000 scan the 250,000 rows before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.db.models import Model, Q, QuerySet

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Row = TypeVar("_Row", bound=Model)


@dataclass(frozen=True)
class Position:
    """A row's place in the newest-first order; as text `<microseconds since 1970>.<id>`."""

    created_at: datetime
    id: int

    @classmethod
    def of(cls, row: Any) -> Position:
        return cls(created_at=row.created_at, id=row.pk)

    def encode(self) -> str:
        micros = (self.created_at - EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.id}"

    @classmethod
    def decode(cls, text: str | None) -> Position | None:
        """None for anything that is not a position (a bad cursor reads as no cursor)."""
        try:
            micros, row_id = (int(part) for part in (text or "").split("."))
            created_at = EPOCH + timedelta(microseconds=micros)
        except (TypeError, ValueError, OverflowError, OSError):
            return None
        return cls(created_at=created_at, id=row_id)


def older_than(rows: QuerySet[_Row], position: Position) -> QuerySet[_Row]:
    return rows.filter(created_at__lte=position.created_at).filter(Q(created_at__lt=position.created_at) | Q(id__lt=position.id))


def newer_than(rows: QuerySet[_Row], position: Position) -> QuerySet[_Row]:
    return rows.filter(created_at__gte=position.created_at).filter(Q(created_at__gt=position.created_at) | Q(id__gt=position.id))


@dataclass(frozen=True)
class KeysetPage:
    rows: list[Any]
    older: Position | None  # where the next (older) page starts, if there is one
    newer: Position | None  # where the previous (newer) page ends, if there is one


def keyset_page(
    rows: QuerySet[_Row], *, before: Position | None = None, after: Position | None = None, size: int = 50
) -> KeysetPage:
    """One page of `rows` (ordered newest first by the caller's queryset): the `size` just older than
    `before`, or the `size` just newer than `after`, or the newest."""
    if after is not None:
        chunk = list(newer_than(rows, after).order_by("created_at", "id")[: size + 1])
        page = list(reversed(chunk[:size]))
        return KeysetPage(
            rows=page,
            older=Position.of(page[-1]) if page else None,
            newer=Position.of(page[0]) if page and len(chunk) > size else None,
        )
    chunk = list((older_than(rows, before) if before is not None else rows)[: size + 1])
    page = chunk[:size]
    return KeysetPage(
        rows=page,
        older=Position.of(page[-1]) if len(chunk) > size else None,
        newer=Position.of(page[0]) if page and before is not None else None,
    )


def keyset_iterate(rows: QuerySet[_Row], *, chunk: int, first_chunk: int) -> Iterator[_Row]:
    """Every row of `rows` (ordered newest first), fetched a chunk per query, each chunk from where the
    last ended. No transaction stays open between chunks (a long download holds no snapshot back from
    vacuum), and the first row is out after one small query. A row committed while the walk runs is
    listed if it is older than where the walk is, as a snapshot taken then would."""
    position = None
    size = first_chunk
    while True:
        batch = list((older_than(rows, position) if position is not None else rows)[:size])
        yield from batch
        if len(batch) < size:
            return
        position = Position.of(batch[-1])
        size = chunk
