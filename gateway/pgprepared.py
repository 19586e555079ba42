"""Django cursors whose statements PostgreSQL prepares once per connection.

Django's own cursors bind on the client and so can never be prepared. The hot statements (the
worker's claim and finish, gateway/worker_sql.py; the audit append, audit/services.py) run once per
task or action and are long, so they go through a server-side-binding psycopg cursor executed with
``prepare=True``: PostgreSQL parses and plans each once per connection, and each execution sends its
parameters only. Everything else of Django's cursor stays: the health check, connection and thread
checks, the time zone loader, execute wrappers, the query log and error translation.

Plans made while the tables were nearly empty are made again. After five executions PostgreSQL
keeps one generic plan per prepared statement, costed from the tables' size at that moment, and
makes it again only when a table's definition or statistics change. On a fresh database (or one
whose statistics autovacuum does not keep) the plan made on the first few rows stays for the
connection's life, even when it reads a whole table: measured, a task's finish that took 0.3 ms on
index lookups took 2-7 ms on sequential scans of 2,000-4,000 tasks, growing with the table. So each
time the number of prepared executions on a connection reaches a power of two from REPLAN_FROM to
REPLAN_UNTIL, the connection's plans are dropped (DISCARD PLANS: the statements stay prepared) and
made again from the tables as they are then: a connection's plans are never older than half of its
prepared executions, at the cost of a few plannings per doubling.
"""
from __future__ import annotations

import weakref
from functools import lru_cache

from django.db.backends.utils import CursorWrapper

__all__ = ["prepared_cursor", "replan_due", "REPLAN_FROM", "REPLAN_UNTIL"]

REPLAN_FROM = 64
REPLAN_UNTIL = 1 << 20

# Prepared executions per open connection (psycopg's, so a new connection starts at zero).
_executions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def replan_due(count: int) -> bool:
    """Whether a connection's plans are made again before its `count`-th prepared execution."""
    return REPLAN_FROM <= count <= REPLAN_UNTIL and count & (count - 1) == 0


def _count_execution(raw) -> None:
    count = _executions.get(raw, 0) + 1
    _executions[raw] = count
    if replan_due(count):
        raw.execute("DISCARD PLANS")  # allowed in a transaction; psycopg's statement names stay valid


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
        _count_execution(raw)
        cursor = (RawCursor if dollar_placeholders else ServerBindingCursor)(raw)
    if db.timezone != raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
        register_tzloader(db.timezone, cursor)  # as Django's create_cursor does
    return (_prepared_debug_cursor_class() if db.queries_logged else _PreparedCursor)(cursor, db)
