"""The worker's hot path on PostgreSQL: the claim in ONE statement, the end of a successful
attempt in one statement inside its transaction.

What they do is exactly what the ORM path in gateway/worker.py and gateway/engine.py does
(`task_claim`, `task_finish` with `task_transition` and `after_terminal`); only the number of
round trips changes (a fan-out task's went from 15 to 4: bench/profile_engine.py). The ORM path stays the reference and the
fallback on every other database, and for everything off the hot path (failures, retries, gates,
closing the run).

Guarantees kept, and where:

- exactly once per attempt: the claim's UPDATE matches `state = 'QUEUED' AND attempt = %s`;
  PostgreSQL re-checks that condition on the newest row version after waiting for a concurrent
  writer's lock (READ COMMITTED), so of two claims of one attempt only one matches;
- idempotent transition ids: the history rows are plain INSERTs on the unique transition id; a
  conflict fails the whole statement (one statement is atomic), so nothing is moved, which is what
  `task_transition` does when the id was recorded before;
- history and audit: each move writes its TaskTransition row and its `task.transition` entry (and
  the attempt's `executor.submitted`), with the same content and in the same order as the ORM
  path, and the entries' queue rows (audit.services.audit_entries_cte);
- locking order: the task's row (UPDATE), then its dependants in increasing id (SELECT ... ORDER BY
  id FOR UPDATE, which the UPDATE of the dependants waits for since it reads its rows), then, in
  the same transaction and through the ORM, the run row last when the run may close;
- side effects after commit: readied tasks are dispatched with dispatch_on_commit;
- row-level security: plain DML under the caller's scope (workers are the system scope), checked
  by the policies like any other statement.

Both commit synchronously. An asynchronous claim (synchronous_commit = off, about one WAL flush
saved per task) was considered and not done: the finish's synchronous commit would make a lost
claim rare and harmless in most cases (the row is back to QUEUED, the reconciler starts a new
attempt, the old attempt's heartbeat and finish find the row moved), but if the worker died with
the database (one machine), its unacknowledged message is redelivered and claims the SAME attempt
again, while the first execution may still run on a remote backend, unrecorded, in the same job
key and work directory. A durable claim makes that redelivery a no-op: no attempt runs twice.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from contextlib import nullcontext
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.services import audit_data_json, audit_entries_cte, audit_where_json

from .choices import TASK_TERMINAL
from .dispatch import dispatch_on_commit
from .models import Artefact, TaskInstance, TaskTransition

_TASK = TaskInstance._meta.db_table
_HISTORY = TaskTransition._meta.db_table
_FIELDS = [f for f in TaskInstance._meta.concrete_fields]
_JSON_COLUMNS = {"spec", "dependants", "external"}


def enabled() -> bool:
    return connection.vendor == "postgresql"


def _history(source: str, transition: str, from_state: str, to_state: str, attempt: str = "{s}.attempt") -> str:
    """INSERT ... SELECT of history rows from `source`, one per row (transition id `<kind>:<id>:<attempt>`)."""
    attempt = attempt.format(s=source)
    return (
        f'INSERT INTO "{_HISTORY}" (transition_id, tenant_id, task_id, from_state, to_state, attempt, reason, '
        f"actor_id, at) SELECT '{transition}:' || {source}.id || ':' || {attempt}, {source}.tenant_id, {source}.id, "
        f"{from_state}, '{to_state}', {attempt}, '', NULL, %(now)s FROM {source}"
    )


def _transition_data(source: str, to_state: str, transition: str, attempt: str = "{s}.attempt") -> str:
    """The `data` of a task.transition entry (engine.task_transition / _bulk_transition)."""
    attempt = attempt.format(s=source)
    return (
        f"jsonb_build_object('run', {source}.run_id::text, 'task', {source}.key, 'to', '{to_state}', "
        f"'attempt', {attempt}, 'transition', '{transition}:' || {source}.id || ':' || {attempt}, 'reason', '')"
    )


_CLAIM = (
    f'WITH t AS (UPDATE "{_TASK}" SET state = \'RUNNING\', reason = \'\', state_changed_at = %(now)s::timestamptz, '
    "worker = %(worker)s::text, lease_expires_at = %(lease)s::timestamptz, started_at = %(now)s "
    "WHERE id = %(id)s::bigint AND state = 'QUEUED' AND attempt = %(attempt)s::integer "
    f"RETURNING {', '.join(f.column for f in _FIELDS)}), "
    f"h AS ({_history('t', 'claim', repr('QUEUED'), 'RUNNING')}), "
    "s AS (SELECT 1 AS ord, t.tenant_id, 'task.transition' AS event, 'task' AS object_type, t.id::text AS object_id, "
    f"t.classification AS label, {_transition_data('t', 'RUNNING', 'claim')} AS data FROM t), "
    f"{audit_entries_cte('s', events=('task.transition',))} "
    f"SELECT {', '.join('t.' + f.column for f in _FIELDS)} FROM t"
)


def task_claim(task_id: int, attempt: int) -> TaskInstance | None:
    """QUEUED -> RUNNING for exactly this attempt, with its history row and audit entry: one
    statement, so one round trip and one commit. Returns the claimed row (spec included: the run
    needs it and the finish does not read it again), or None when the message is stale."""
    now = timezone.now()
    params = {
        "id": task_id, "attempt": attempt, "now": now,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "lease": now + timedelta(seconds=settings.GATEHOUSE_ENGINE["LEASE_SECONDS"]),
        "audit_at": now, "audit_where": audit_where_json(),
    }
    try:
        # Inside a caller's transaction the statement gets a savepoint, so that a refused history
        # row (its transition id was recorded before) leaves that transaction usable.
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            cursor.execute(_CLAIM, params)
            row = cursor.fetchone()
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "table_name", None) != _HISTORY:
            raise
        return None  # the claim's transition id exists: the move was made before
    if row is None:
        return None
    values = [json.loads(v) if f.column in _JSON_COLUMNS and isinstance(v, str) else v for f, v in zip(_FIELDS, row)]
    return TaskInstance.from_db(connection.alias, [f.attname for f in _FIELDS], values)


# The end of a successful attempt. The dependants are decremented in the same statement, and the
# plain tasks whose needs all succeeded are queued for their first attempt (engine.make_ready);
# readiness is read from `d`, the dependants' rows as locked (the newest versions), so the UPDATE
# of `u`, which re-reads them under the same locks, agrees with it.
_READY = "(x.needs_remaining = 1 AND x.state = 'PENDING' AND x.kind = 'task' AND x.attempt = 0)"
_GATE_READY = "(x.needs_remaining = 1 AND x.state = 'PENDING' AND x.kind = 'gate')"
_FINISH = (
    f'WITH t AS (UPDATE "{_TASK}" SET state = \'SUCCEEDED\', reason = \'\', state_changed_at = %(now)s::timestamptz, '
    "finished_at = %(now)s, lease_expires_at = NULL, exit_code = %(exit_code)s::integer "
    "WHERE id = %(id)s::bigint AND state = 'RUNNING' AND attempt = %(attempt)s::integer "
    "RETURNING id, tenant_id, run_id, key, classification, dependants, worker, attempt), "
    f'a AS (INSERT INTO "{Artefact._meta.db_table}" (id, tenant_id, run_id, task_id, attempt, name, digest, size, media_type, '
    "classification, created_at) SELECT o.id, t.tenant_id, t.run_id, t.id, t.attempt, o.name, o.digest, o.size, "
    "o.media_type, t.classification, %(now)s FROM t, unnest(%(a_ids)s::uuid[], %(a_names)s::text[], "
    "%(a_digests)s::text[], %(a_sizes)s::bigint[], %(a_types)s::text[]) AS o(id, name, digest, size, media_type)), "
    # The dependants' ids, one lookup by (run, key) each on the unique index: a scalar subquery
    # per key, so that no plan reads the run's every task per finish (a fan-in task has
    # thousands of siblings, and a fresh table has no statistics to tell the planner so).
    f'k AS (SELECT (SELECT y.id FROM "{_TASK}" y WHERE y.run_id = t.run_id AND y.key = k.key) AS id '
    "FROM t, jsonb_array_elements_text(t.dependants) AS k(key)), "
    f'd AS (SELECT x.id, {_READY} AS ready, {_GATE_READY} AS gate_ready FROM "{_TASK}" x '
    "WHERE x.id = ANY (ARRAY(SELECT k.id FROM k)) ORDER BY x.id FOR UPDATE), "
    f'u AS (UPDATE "{_TASK}" x SET needs_remaining = x.needs_remaining - 1, '
    "state = CASE WHEN d.ready THEN 'QUEUED' ELSE x.state END, "
    "attempt = CASE WHEN d.ready THEN 1 ELSE x.attempt END, "
    "reason = CASE WHEN d.ready THEN '' ELSE x.reason END, "
    "state_changed_at = CASE WHEN d.ready THEN %(now)s ELSE x.state_changed_at END "
    "FROM d WHERE x.id = d.id "
    "RETURNING x.id, x.tenant_id, x.run_id, x.key, x.classification, x.state, x.attempt, d.ready, d.gate_ready), "
    "r AS (SELECT * FROM u WHERE u.ready), "
    # One INSERT for the history rows, in the ORM path's order (the attempt's end, then the readied
    # tasks by id): rows of one INSERT ... ORDER BY draw their ids in that order.
    f'h AS (INSERT INTO "{_HISTORY}" (transition_id, tenant_id, task_id, from_state, to_state, attempt, reason, '
    "actor_id, at) SELECT y.transition_id, y.tenant_id, y.task_id, y.from_state, y.to_state, y.attempt, '', NULL, "
    "%(now)s FROM (SELECT -1::bigint AS ord, 'finish:' || t.id || ':' || t.attempt AS transition_id, t.tenant_id, "
    "t.id AS task_id, 'RUNNING' AS from_state, 'SUCCEEDED' AS to_state, t.attempt FROM t UNION ALL "
    "SELECT r.id, 'ready:' || r.id || ':1', r.tenant_id, r.id, 'PENDING', 'QUEUED', 1 FROM r) y ORDER BY y.ord), "
    "s AS ("
    "SELECT -2::bigint AS ord, t.tenant_id, 'executor.submitted' AS event, 'task' AS object_type, "
    "t.id::text AS object_id, t.classification AS label, %(submitted)s::jsonb || jsonb_build_object("
    "'run', t.run_id::text, 'task', t.key, 'attempt', t.attempt, 'worker', t.worker) AS data "
    "FROM t WHERE %(submitted)s::jsonb IS NOT NULL "
    "UNION ALL SELECT -1, t.tenant_id, 'task.transition', 'task', t.id::text, t.classification, "
    f"{_transition_data('t', 'SUCCEEDED', 'finish')} FROM t "
    "UNION ALL SELECT r.id, r.tenant_id, 'task.transition', 'task', r.id::text, r.classification, "
    f"{_transition_data('r', 'QUEUED', 'ready', attempt='1')} FROM r), "
    f"{audit_entries_cte('s', events=('executor.submitted', 'task.transition'))} "
    "SELECT t.run_id, u.id, u.state, u.ready, u.gate_ready FROM t LEFT JOIN u ON true ORDER BY u.id"
)


def task_finish_succeeded(task_id: int, attempt: int, outcome) -> str | None:
    """RUNNING -> SUCCEEDED for this attempt, with its artefacts, history, audit entries and the
    propagation to its dependants; called inside the finish's transaction. Returns "superseded"
    when the attempt is no longer the task's running one, else "succeeded"."""
    from .engine import make_ready, run_close_if_done

    now = timezone.now()
    handle = outcome.handle
    submitted = None
    if handle is not None:
        # executor.submitted's own fields (the row's run, task, attempt and worker are added in SQL),
        # scrubbed as audit_append scrubs `data`.
        submitted = audit_data_json({"backend": handle.backend, "external_id": handle.external_id,
                                     "submitted_at": outcome.submitted_at})
    outputs = outcome.outputs
    params = {
        "id": task_id, "attempt": attempt, "now": now, "exit_code": outcome.status.exit_code,
        "a_ids": [uuid.uuid4() for _ in outputs], "a_names": [o[0] for o in outputs],
        "a_digests": [o[1] for o in outputs], "a_sizes": [o[2] for o in outputs], "a_types": [o[3] for o in outputs],
        "submitted": submitted, "audit_at": now, "audit_where": audit_where_json(),
    }
    with connection.cursor() as cursor:
        cursor.execute(_FINISH, params)
        rows = cursor.fetchall()
    if not rows:
        return "superseded"  # cancelled or recovered meanwhile: this attempt's result is dropped
    run_id = rows[0][0]
    dependants = [(dep_id, state, ready, gate_ready) for _, dep_id, state, ready, gate_ready in rows if dep_id is not None]
    dispatch_on_commit((dep_id, 1) for dep_id, _, ready, _ in dependants if ready)
    gates = [dep_id for dep_id, _, _, gate_ready in dependants if gate_ready]
    if gates:
        # Rare (a gate whose needs all succeeded): the ORM path opens it; its row is locked already.
        make_ready(list(TaskInstance.objects.filter(id__in=gates).order_by("id")))
    still_open = any(gate_ready or state not in TASK_TERMINAL for _, state, _, gate_ready in dependants)
    if not still_open:
        run_close_if_done(run_id)
    return "succeeded"


__all__ = ["enabled", "task_claim", "task_finish_succeeded"]
