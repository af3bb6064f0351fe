"""Statements whose parameters travel apart from the SQL text (server-side binding).

Django's psycopg cursors bind on the client: every parameter is quoted into the statement's text, so
a batch's arrays of a thousand values are formatted in Python and parsed back by PostgreSQL. A
server-bound cursor sends them as protocol parameters (binary where psycopg has a binary dumper) and
lets psycopg prepare a statement it has sent `prepare_threshold` times. It is still Django's cursor
wrapper: errors come out as `django.db` exceptions, it joins the current transaction, and tests count
its queries like any other.

Server-side binding has rules Django's ORM does not follow (no parameters in DDL, one statement per
execute, typed placeholders), so only hand-written statements use it, never the ORM.

`prepared_cursor()` goes one step further for the hot path's one statement: it prepares every
statement it runs, once per connection (psycopg names them per connection), so PostgreSQL stops
parsing and planning the debit's data-modifying CTE on every request (about 0.2 ms of its CPU, as
much as half of executing it). `DATABASE_PREPARED_STATEMENTS=false` turns it off, for a
transaction-mode pooler that does not track prepared statements (pgbouncer before 1.21).
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from django.conf import settings
from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper

_BOUND_CURSOR: Any = ServerBindingCursor  # psycopg's server-binding Cursor with Django's mixin; the stubs type it apart


def _wrapped(cursor: Any) -> CursorWrapper:
    connection.validate_thread_sharing()
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)


def server_bound_cursor() -> CursorWrapper:
    """A cursor on the default connection whose statements are bound on the server."""
    connection.ensure_connection()
    return _wrapped(_BOUND_CURSOR(connection.connection))


class PreparedCursor(psycopg.Cursor[Any]):
    """psycopg's server-binding cursor, preparing every statement it executes."""

    def execute(  # type: ignore[override]
        self, query: LiteralString, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> PreparedCursor:
        super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)
        return self

    def _send_query_prepared(self, name: bytes, pgq: Any, *, binary: bool | None = None) -> None:
        # psycopg records the query it sent except when it sends a prepared one's name; Django's query
        # log (DEBUG, the tests' query counts) reads it.
        self._query = pgq
        super()._send_query_prepared(name, pgq, binary=binary)


def prepared_cursor() -> CursorWrapper:
    """A cursor on the default connection whose statements are prepared on the server (a plain one
    when DATABASE_PREPARED_STATEMENTS is off)."""
    if not settings.DATABASE_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.ensure_connection()
    return _wrapped(PreparedCursor(connection.connection))
