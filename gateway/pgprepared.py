"""Django cursors whose statements PostgreSQL prepares once per connection.

Django's own cursors bind on the client and so can never be prepared. The hot statements (the
worker's claim and finish, gateway/worker_sql.py; the audit append, audit/services.py) run once per
task or action and are long, so they go through a server-side-binding psycopg cursor executed with
``prepare=True``: PostgreSQL parses and plans each once per connection, and each execution sends its
parameters only. Everything else of Django's cursor stays: the health check, connection and thread
checks, the time zone loader, execute wrappers, the query log and error translation.
"""
from __future__ import annotations

from functools import lru_cache

from django.db.backends.utils import CursorWrapper

__all__ = ["prepared_cursor"]


class _Prepared:
    def _execute(self, sql, params, *ignored_wrapper_args):
        self.db.validate_no_broken_transaction()
        with self.db.wrap_database_errors:
            return self.cursor.execute(sql, params, prepare=True)


class _PreparedCursor(_Prepared, CursorWrapper):
    pass


@lru_cache(maxsize=1)
def _prepared_debug_cursor_class() -> type:
    from django.db.backends.postgresql.base import CursorDebugWrapper  # imported on PostgreSQL only

    def execute(self, sql, params=None):
        # Logged as written, its parameters beside it: a prepared statement has no text with the
        # values in it for Django's last_executed_query.
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)

    return type("_PreparedDebugCursor", (_Prepared, CursorDebugWrapper), {"execute": execute})


def prepared_cursor(db, *, dollar_placeholders: bool = False):
    """A Django cursor on connection ``db`` (PostgreSQL) whose ``execute(sql, params)`` prepares.

    ``dollar_placeholders``: the statements use PostgreSQL's ``$n`` placeholders (psycopg's
    RawCursor); otherwise psycopg's ``%s`` (Django's ServerBindingCursor)."""
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg import RawCursor
    from psycopg.pq import Format

    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    raw = db.connection
    if raw.prepare_threshold is None:
        # Django's default (OPTIONS prepare_threshold unset) turns psycopg's prepared statements off
        # altogether, even for an explicit prepare=True. Django's own cursors bind on the client and
        # are never prepared whatever this says, so with an unreachable threshold exactly the
        # statements executed with prepare=True are.
        raw.prepare_threshold = 2**31 - 1
    with db.wrap_database_errors:
        cursor = (RawCursor if dollar_placeholders else ServerBindingCursor)(raw)
    if db.timezone != raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
        register_tzloader(db.timezone, cursor)  # as Django's create_cursor does
    return (_prepared_debug_cursor_class() if db.queries_logged else _PreparedCursor)(cursor, db)
