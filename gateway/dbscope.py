"""How a process binds its database connection to a tenant, for row-level security (gateway/rls.py).

PostgreSQL decides what the application role sees from one session setting, `gatehouse.tenant`:

    '*'          every tenant, and the platform rows that belong to none (tenant_id NULL)
    '<id>'       that tenant's rows only
    '' or unset  nothing

Every process has a scope, settings.GATEHOUSE_DB_SCOPE (environment variable of the same name):

- "system": workers, the reconciler, the audit sequencer, management commands. Their work spans
  tenants by design; each new connection is set to '*'.
- "request" (the default, so a process that forgets to say sees nothing): the web server. Each
  new connection is set to ''. The caller's tenant is bound in ONE place, when
  gateway.selectors.membership_for resolves the caller's membership (bind_tenant), and the
  connection is set back to '' when the request finishes, so a persistent connection never
  carries one tenant's scope into the next request.

Code that must see across tenants from a request says so with `with system_scope():` for just
that work: the audit sequencer (it places every tenant's entries; an export runs it first), the
reconciler, a platform auditor reading every tenant's log (audit/api/views.py) and an audit
entry that belongs to no tenant (a failed login: PostgreSQL applies the read policy to the row
an INSERT ... RETURNING gives back, and only '*' sees tenant_id NULL).

The setting is a guard against a forgotten filter, not against code running in the process:
anything that can run SQL as the application role can also set it. Nothing here runs on SQLite.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

log = logging.getLogger(__name__)

SETTING = "gatehouse.tenant"
ALL = "*"
NONE = ""
REQUEST = "request"
SYSTEM = "system"
SCOPES = (REQUEST, SYSTEM)

_process_scope: str | None = None  # set_process_scope(); otherwise settings.GATEHOUSE_DB_SCOPE


def process_scope() -> str:
    if _process_scope is not None:
        return _process_scope
    from django.conf import settings

    return getattr(settings, "GATEHOUSE_DB_SCOPE", REQUEST)


def _initial() -> str:
    return ALL if process_scope() == SYSTEM else NONE


def _postgresql(connection) -> bool:
    return connection.vendor == "postgresql"


def _set(connection, value: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_catalog.set_config(%s, %s, false)", [SETTING, value])
    # Inside a transaction the change is undone if it rolls back: then the value is not known.
    committed = connection.get_autocommit() and not connection.in_atomic_block
    connection.gatehouse_scope = value if committed else None


def _known(connection) -> str | None:
    return getattr(connection, "gatehouse_scope", None)


def set_process_scope(scope: str) -> None:
    """Make this process a "system" or "request" process (Celery workers call it at start);
    connections already open take the new scope at once."""
    global _process_scope
    if scope not in SCOPES:
        raise ValueError(f"database scope must be one of {SCOPES}, not {scope!r}")
    _process_scope = scope
    for connection in connections.all(initialized_only=True):
        if _postgresql(connection) and connection.connection is not None:
            _set(connection, _initial())


def on_connection_created(sender, connection, **kwargs) -> None:
    """Every new connection starts in its process's scope, whatever the role's defaults say."""
    if _postgresql(connection):
        _set(connection, _initial())


def bind_tenant(tenant_id: int, using: str = DEFAULT_DB_ALIAS) -> None:
    """Narrow a request's connection to the caller's tenant. Called by membership_for only.
    System processes stay at '*': a worker acting for one tenant still works across them; so
    does a request inside a system_scope block, until the block ends."""
    connection = connections[using]
    if process_scope() != REQUEST or not _postgresql(connection) or getattr(connection, "gatehouse_wide", 0):
        return
    value = str(int(tenant_id))
    if connection.connection is not None and _known(connection) == value:
        return
    _set(connection, value)


def current(using: str = DEFAULT_DB_ALIAS) -> str | None:
    """The connection's scope as the database has it (None on other databases)."""
    connection = connections[using]
    if not _postgresql(connection):
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(pg_catalog.current_setting(%s, true), '')", [SETTING])
        return cursor.fetchone()[0]


def _transaction_failed(connection) -> bool:
    from psycopg.pq import TransactionStatus

    raw = connection.connection
    return raw is None or raw.info.transaction_status == TransactionStatus.INERROR


@contextmanager
def system_scope(using: str = DEFAULT_DB_ALIAS):
    """Every tenant for the duration of the block, then the scope before it. For work that spans
    tenants by design; in a system process (already '*') it costs nothing."""
    connection = connections[using]
    if not _postgresql(connection) or process_scope() == SYSTEM:
        yield
        return
    previous = _known(connection) if connection.connection is not None else None
    if previous is None:
        previous = current(using)
    if previous == ALL:
        yield
        return
    _set(connection, ALL)
    connection.gatehouse_wide = getattr(connection, "gatehouse_wide", 0) + 1
    try:
        yield
    finally:
        connection.gatehouse_wide -= 1
        # A failed transaction cannot run the reset, and needs none: its rollback undoes the
        # change. Otherwise set the previous scope back, whatever happened in the block.
        if not _transaction_failed(connection):
            _set(connection, previous)


def reset(using: str = DEFAULT_DB_ALIAS) -> None:
    """Back to the process's scope (request_started/request_finished). A connection whose scope
    cannot be reset is closed rather than handed to the next request."""
    connection = connections[using]
    if not _postgresql(connection) or connection.connection is None:
        return
    initial = _initial()
    if _known(connection) == initial:
        return
    try:
        _set(connection, initial)
    except DatabaseError:
        log.warning("could not reset the database scope of connection %r: closing it", using, exc_info=True)
        connection.close()


def on_request_boundary(sender, **kwargs) -> None:
    for connection in connections.all(initialized_only=True):
        reset(connection.alias)
