"""Server-side prepared statements for the hot path's one statement.

Django's psycopg 3 backend binds parameters on the client and turns psycopg's automatic preparation
off (`prepare_threshold=None`, for connection poolers), so PostgreSQL parses and plans the debit's
data-modifying CTE on every request: about 0.2 ms of its CPU, as much as half of executing it. A
cursor from `prepared_cursor()` binds on the server and prepares every statement it runs, once per
connection (psycopg keeps the statement names per connection); it is still Django's cursor wrapper,
so query logging, execute wrappers and the mapping of psycopg's errors to `django.db` ones are kept.

Only statements that need no client-side quoting belong here (every parameter a plain value, each
used where PostgreSQL can infer its type). `DATABASE_PREPARED_STATEMENTS=false` turns it off, for a
transaction-mode pooler that does not track prepared statements (pgbouncer before 1.21).
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from django.conf import settings
from django.db import connection
from django.db.backends.utils import CursorWrapper


class PreparedCursor(psycopg.Cursor[Any]):
    """psycopg's server-side binding cursor, preparing every statement it executes."""

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
    """A Django cursor on the default connection whose statements are prepared on the server (or a
    plain one when DATABASE_PREPARED_STATEMENTS is off). Use it as a context manager, like `connection.cursor()`."""
    if not settings.DATABASE_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(PreparedCursor(connection.connection))
