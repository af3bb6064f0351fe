"""Statements whose parameters travel apart from the SQL text (server-side binding).

Django's psycopg cursors bind on the client: every parameter is quoted into the statement's text, so
a batch's arrays of a thousand values are formatted in Python and parsed back by PostgreSQL. A
server-bound cursor sends them as protocol parameters (binary where psycopg has a binary dumper) and
lets psycopg prepare a statement it has sent `prepare_threshold` times. It is still Django's cursor
wrapper: errors come out as `django.db` exceptions, it joins the current transaction, and tests count
its queries like any other.

Server-side binding has rules Django's ORM does not follow (no parameters in DDL, one statement per
execute, typed placeholders), so only hand-written statements use it, never the ORM.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper

_BOUND_CURSOR: Any = ServerBindingCursor  # psycopg's server-binding Cursor with Django's mixin; the stubs type it apart


def server_bound_cursor() -> CursorWrapper:
    """A cursor on the default connection whose statements are bound on the server."""
    connection.ensure_connection()
    connection.validate_thread_sharing()
    cursor = _BOUND_CURSOR(connection.connection)
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)
