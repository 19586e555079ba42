"""audit_append: the one way into the audit log.

It writes in the caller's transaction: if the audit write fails, the action fails with it
(fail closed); when the action rolls back, so does its entry. A denial, which changes nothing
else, is recorded in a transaction of its own so it is durable whatever the request does next.
The sequencer (audit.sequencer) later places committed entries in the hash-chained, Merkle-
tree log; nothing here takes a lock, so concurrent actions never queue on the log.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from gateway.pgprepared import prepared_cursor

from . import context
from .events import EVENTS
from .models import AuditEntry, AuditPending

# Keys whose values are never stored in clear, wherever they appear in `data`.
SENSITIVE_KEYS = frozenset({"password", "secret", "token", "secret_id", "private_key", "api_key", "credentials"})


def hmac_value(value: str | bytes) -> str:
    """A keyed HMAC of a sensitive value: comparable across entries, not reversible."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return "hmac-sha256:" + hmac.new(settings.GATEHOUSE_AUDIT_HMAC_KEY, raw, hashlib.sha256).hexdigest()


def _scrub(value: Any) -> Any:
    """JSON-safe copy with sensitive keys HMAC'd and floats refused (the log is canonical JSON)."""
    if isinstance(value, Mapping):
        return {
            str(k): (hmac_value(str(v)) if str(k).lower() in SENSITIVE_KEYS and v is not None else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, float):
        raise ValueError("audit data must not hold floats (canonical JSON); pass a string")
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _actor_snapshot(actor) -> dict | None:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None
    membership = getattr(actor, "membership", None)
    return {
        "id": actor.pk,
        "username": actor.get_username(),
        "roles": sorted(membership.roles) if membership else [],
        "groups": sorted(membership.groups) if membership else [],
        "clearance": _clearance_snapshot(actor, membership),
        "auth": context.current().auth_method,
    }


def _clearance_snapshot(actor, membership) -> list[dict] | None:
    """The clearances the actor held when they acted (read once per user object, i.e. per request)."""
    if membership is None:
        return None
    cached = getattr(actor, "_audit_clearance_snapshot", None)
    if cached is None:
        from gateway.models import Clearance

        cached = [
            {"policy": p, "max_level": lvl, "compartments": sorted(c), "releasability": sorted(r), "status": st,
             "revision": rev}
            for p, lvl, c, r, st, rev in Clearance.objects.filter(user_id=actor.pk, tenant_id=membership.tenant_id)
            .order_by("policy").values_list("policy", "max_level", "compartments", "releasability", "status", "revision")
        ]
        actor._audit_clearance_snapshot = cached
    return cached


def _entry(*, event, tenant_id, actor, object_type, object_id, label, outcome, error_code, data, secrets) -> AuditEntry:
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    if outcome not in ("success", "denied", "error"):
        raise ValueError(f"unknown outcome {outcome!r}")
    payload = _scrub(data or {})
    for name, secret in (secrets or {}).items():
        payload[name] = hmac_value(secret)
    now = timezone.now()
    body = {
        "event": event,
        "actor": _actor_snapshot(actor),
        "object": {"type": object_type, "id": object_id} if object_type or object_id else None,
        "label": label or None,
        "outcome": outcome,
        "error": error_code or None,
        "where": context.current().as_dict(),
        "data": payload,
    }
    # Positional, in the model's field order (id, at, tenant, actor, event, object_type, object_id,
    # label, outcome, body): Django's fast path, a third of the keyword path's cost on every append.
    return AuditEntry(None, now, tenant_id, actor.pk if body["actor"] else None, event, object_type, str(object_id),
                      label or "", outcome, body)


def audit_append(
    *,
    event: str,
    tenant=None,
    tenant_id=None,
    actor=None,
    obj: Any = None,
    object_type: str = "",
    object_id: str = "",
    label: str = "",
    outcome: str = "success",
    error_code: str = "",
    data: dict | None = None,
    secrets: Mapping[str, str] | None = None,
) -> AuditEntry:
    """Record one action inside the caller's transaction (or its own, outside one)."""
    if obj is not None:
        object_type = object_type or type(obj).__name__.lower()
        object_id = object_id or str(obj.pk)
        label = label or getattr(obj, "classification", "") or ""
    entry = _entry(
        event=event, tenant_id=tenant.pk if tenant is not None else tenant_id, actor=actor,
        object_type=object_type, object_id=object_id, label=label, outcome=outcome,
        error_code=error_code, data=data, secrets=secrets,
    )
    _insert(entry)
    return entry


def _platform_scope(entries: list[AuditEntry]):
    """Entries of no tenant (failed logins, anonymous callers) are platform rows: under row-level
    security only the system scope reads them, and INSERT ... RETURNING reads the new row back
    (gateway/dbscope.py). Entries of a tenant are written in the caller's scope, which must cover it."""
    from gateway import dbscope

    return dbscope.system_scope() if any(e.tenant_id is None for e in entries) else nullcontext()


_INSERT_PG = None


def _kept_cursor(conn):
    """A prepared-statement cursor kept on the connection for appends, for as long as that
    connection lives (and as long as Django keeps or does not keep its query log): a new cursor per
    append (Django's wrapper, psycopg's cursor and its adapters) cost a sixth of an append's CPU
    time. A new one is made whenever Django's health check is due."""
    kept = getattr(conn, "_gatehouse_audit_cursor", None)
    if (kept is not None and kept[0] is conn.connection and (conn.health_check_done or not conn.health_check_enabled)
            and kept[1] == conn.queries_logged and not kept[2].cursor.closed):
        return kept[2]
    cursor = prepared_cursor(conn)
    conn._gatehouse_audit_cursor = (conn.connection, conn.queries_logged, cursor)
    return cursor


def _insert(entry: AuditEntry) -> None:
    """Entry and queue row in ONE prepared statement on PostgreSQL (atomic by itself, so no
    savepoint: inside an action's transaction this is one round trip instead of four)."""
    global _INSERT_PG
    conn = connections[DEFAULT_DB_ALIAS]  # one lookup (the `connection` proxy looks it up on every use)
    if conn.vendor != "postgresql":
        with transaction.atomic():
            entry.save(force_insert=True)
            AuditPending.objects.create(entry=entry)
        return
    if _INSERT_PG is None:
        e, q = AuditEntry._meta.db_table, AuditPending._meta.db_table
        # Every parameter typed in the statement rather than inferred from its place. psycopg
        # prepares one statement per set of parameter types it sends, and it sends an integer in
        # the narrowest type that holds it: a few statements per connection at most.
        _INSERT_PG = (
            f'WITH e AS (INSERT INTO "{e}" (at, tenant_id, actor_id, event, object_type, object_id, label, outcome, body) '
            f"VALUES (%s::timestamptz, %s::bigint, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text, "
            f"%s::text::jsonb) RETURNING id) "
            f'INSERT INTO "{q}" (entry_id) SELECT id FROM e RETURNING entry_id'
        )
    # An entry of no tenant is a platform row: only the system scope may read it back (RETURNING).
    with _platform_scope([entry]) if entry.tenant_id is None else nullcontext():
        cursor = _kept_cursor(conn)
        cursor.execute(_INSERT_PG, [
            entry.at, entry.tenant_id, entry.actor_id, entry.event, entry.object_type, entry.object_id,
            entry.label, entry.outcome, json.dumps(entry.body),
        ])
        entry.id = cursor.fetchone()[0]


def audit_entries_cte(source: str, *, events: tuple[str, ...], name: str = "audit") -> str:
    """Two data-modifying CTEs for a PostgreSQL statement that makes a change and audits it in the
    same round trip (gateway/worker_sql.py): insert one entry, and its queue row, for each row of the
    CTE `source`, in the order of its `ord` column.

    `source` yields: ord, tenant_id (never NULL: an entry of no tenant is a platform row, see
    _platform_scope), event, object_type, object_id (text), label, data (jsonb). The statement must
    bind %(audit_at)s (the entries' time) and %(audit_where)s (audit_where_json()). The body is the
    one `_entry` builds for an action of no actor with outcome success, so entries written either
    way are the same. `events` lists the events the source may yield (checked here, as `_entry`
    does), and `data` must hold no sensitive key (nothing is scrubbed in SQL)."""
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown audit event(s) {unknown!r}")
    e, q = AuditEntry._meta.db_table, AuditPending._meta.db_table
    return (
        f'{name} AS (INSERT INTO "{e}" (at, tenant_id, actor_id, event, object_type, object_id, label, outcome, body) '
        f"SELECT %(audit_at)s, s.tenant_id, NULL, s.event, s.object_type, s.object_id, s.label, 'success', "
        f"jsonb_build_object('event', s.event, 'actor', NULL, 'object', CASE WHEN s.object_type <> '' OR "
        f"s.object_id <> '' THEN jsonb_build_object('type', s.object_type, 'id', s.object_id) END, "
        f"'label', NULLIF(s.label, ''), 'outcome', 'success', 'error', NULL, 'where', %(audit_where)s::jsonb, "
        f"'data', s.data) FROM {source} s ORDER BY s.ord RETURNING id), "
        f'{name}_queued AS (INSERT INTO "{q}" (entry_id) SELECT id FROM {name})'
    )


def audit_data_json(data: dict) -> str:
    """`data` as audit_append stores it (sensitive keys HMAC'd, floats refused), as JSON text."""
    return json.dumps(_scrub(data))


def audit_where_json() -> str:
    """The `where` of the entries written now (audit_entries_cte's %(audit_where)s)."""
    return _where_json(context.current())


@lru_cache(maxsize=64)
def _where_json(where: context.Where) -> str:
    # Where is frozen: one text per context (a worker's context changes with each Celery task,
    # and is read by both of the task's statements).
    return json.dumps(where.as_dict())


def audit_append_many(records: list[dict]) -> list[AuditEntry]:
    """Several entries in one round trip each for entries and queue (bulk engine moves)."""
    if not records:
        return []
    entries = [
        _entry(
            event=r["event"], tenant_id=r.get("tenant_id"), actor=r.get("actor"),
            object_type=r.get("object_type", ""), object_id=str(r.get("object_id", "")), label=r.get("label", ""),
            outcome=r.get("outcome", "success"), error_code=r.get("error_code", ""), data=r.get("data"),
            secrets=r.get("secrets"),
        )
        for r in records
    ]
    if connection.vendor != "postgresql":
        with transaction.atomic():
            entries = AuditEntry.objects.bulk_create(entries)
            AuditPending.objects.bulk_create([AuditPending(entry_id=e.id) for e in entries])
        return entries
    e, q = AuditEntry._meta.db_table, AuditPending._meta.db_table
    for start in range(0, len(entries), 1000):
        chunk = entries[start:start + 1000]
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"] * len(chunk))
        params = [v for x in chunk for v in (x.at, x.tenant_id, x.actor_id, x.event, x.object_type, x.object_id,
                                              x.label, x.outcome, json.dumps(x.body))]
        with _platform_scope(chunk), connection.cursor() as cursor:
            cursor.execute(
                f'WITH e AS (INSERT INTO "{e}" (at, tenant_id, actor_id, event, object_type, object_id, label, outcome, body) '
                f'VALUES {rows} RETURNING id) INSERT INTO "{q}" (entry_id) SELECT id FROM e RETURNING entry_id',
                params,
            )
            # One INSERT ... VALUES draws its ids in row order, so sorted ids match the chunk.
            for entry, (entry_id,) in zip(chunk, sorted(cursor.fetchall())):
                entry.id = entry_id
    return entries
