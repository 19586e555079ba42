"""The worker's hot path on PostgreSQL: the claim in ONE statement, the end of a successful
attempt in one statement, committed by itself when nothing else follows from it (no gate opens,
the run cannot close), else inside a transaction with what follows.

What they do is exactly what the ORM path in gateway/worker.py and gateway/engine.py does
(`task_claim`, `task_finish` with `task_transition` and `after_terminal`); only the number of
round trips changes (a fan-out task's went from 15 to 2, plus nothing per task for Django's health
check or for placement: bench/profile_engine.py). Both statements are prepared once per connection.
The ORM path stays the reference and the fallback on every other database, and for everything off
the hot path (failures, retries, gates, closing the run).

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
- locking order: the task's row (the claim's UPDATE; the finish's SELECT ... FOR UPDATE, before
  anything changes), then its dependants in increasing id (SELECT ... ORDER BY id FOR UPDATE, which
  reads the task's locked row, so it comes second), then, in the same transaction and through the
  ORM, the run row last when the run may close;
- atomicity: a finish committed by itself is one statement (all of it or nothing); when the locked
  dependants show that a gate opens or the run may close, that statement changes nothing and the
  finish is made again in a transaction with the gate's opening or the run's close;
- side effects after commit: readied tasks are dispatched with dispatch_on_commit, the first
  DISPATCH_WINDOW of them; the rest are held, numbered in id order in the same statement as the
  ORM path numbers them (engine.make_ready), and claimed later by `task_claim_held`;
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
import re
import socket
import uuid
from collections import namedtuple
from contextlib import nullcontext
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, InterfaceError, OperationalError, connection, connections, transaction
from gateway.pgprepared import prepared_cursor
from django.utils import timezone

from audit.services import audit_data_json, audit_entries_cte, audit_where_json
from executors.models import BackendConfiguration

from .choices import TASK_TERMINAL
from .dispatch import dispatch_on_commit, dispatch_window
from .models import Artefact, TaskInstance, TaskTransition
from .realtime import events as live

_TASK = TaskInstance._meta.db_table
_HISTORY = TaskTransition._meta.db_table
_FIELDS = [f for f in TaskInstance._meta.concrete_fields]
_JSON_COLUMNS = {"spec", "dependants", "external"}
_CONFIGURATION = BackendConfiguration._meta.db_table

# A task's identity and state as a live message needs them (gateway/realtime/events.task_states).
Moved = namedtuple("Moved", "tenant_id classification run_id key state")


def enabled() -> bool:
    return connection.vendor == "postgresql"


class _Statement:
    """A statement written with %(name)s placeholders, converted once to PostgreSQL's own $n
    placeholders: psycopg converts a query's placeholders on every execution, and caches the result
    only for statements shorter than 4 kB (these are longer: the conversion, a regular-expression
    pass over the whole text, cost about as much client CPU as the rest of the execution)."""

    _PLACEHOLDER = re.compile(r"%\((\w+)\)s")

    def __init__(self, sql: str):
        names: list[str] = []

        def number(match: re.Match) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.sql = self._PLACEHOLDER.sub(number, sql)
        if "%" in self.sql:
            raise ValueError("a statement may hold no % but its %(name)s placeholders")
        self.names = tuple(names)

    def params(self, values: dict) -> list:
        return [values[name] for name in self.names]


def _prepared_cursor():
    """A prepared-statement cursor on the default connection (gateway/pgprepared.py); these two
    statements run once per task and are long (CTEs, audit bodies), so PostgreSQL parses and plans
    them once per connection instead of once per task (after five executions PostgreSQL keeps one
    generic plan, made again as the connection's executions double, so that one made on nearly empty
    tables, with sequential scans, does not stay: gateway/pgprepared.py). psycopg's RawCursor takes
    their $n placeholders as they are."""
    return prepared_cursor(connections[DEFAULT_DB_ALIAS], dollar_placeholders=True)


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


def _first_held(run: str, *, lock: str = "") -> str:
    """The id of the run's first held task that no other transaction has locked (the partial index
    task_held_by_run): dispatch.held_tasks in SQL. `lock` names the row to lock when the subquery
    also reads a CTE (FOR UPDATE cannot lock a WITH query's rows)."""
    return (f'(SELECT q.id FROM "{_TASK}" q WHERE q.run_id = {run} AND q.state = \'QUEUED\' AND q.held '
            f"ORDER BY q.id LIMIT 1 FOR UPDATE{lock} SKIP LOCKED)")


# A message's claim also sends one of the run's held tasks (if it has any) a message: taking a
# message from the queue replaces it there, so the run keeps DISPATCH_WINDOW messages queued while
# tasks are held and a worker that becomes free finds one (gateway/dispatch.py). The held row is
# picked with SKIP LOCKED (a drainer claiming it keeps it) after the claimed row is locked.
_SEND_HELD = (
    f'n AS (UPDATE "{_TASK}" SET held = false WHERE id = {_first_held("(SELECT t.run_id FROM t)", lock=" OF q")} '
    "AND state = 'QUEUED' AND held RETURNING id, attempt), "
)


def _claim_statement(which: str, *, send_held: bool) -> _Statement:
    return _Statement(
        f'WITH t AS (UPDATE "{_TASK}" SET state = \'RUNNING\', reason = \'\', state_changed_at = %(now)s::timestamptz, '
        "worker = %(worker)s::text, lease_expires_at = %(lease)s::timestamptz, started_at = %(now)s, held = false "
        f"WHERE {which} "
        f"RETURNING {', '.join(f.column for f in _FIELDS)}), "
        f"h AS ({_history('t', 'claim', repr('QUEUED'), 'RUNNING')}), "
        "s AS (SELECT 1 AS ord, t.tenant_id, 'task.transition' AS event, 'task' AS object_type, t.id::text AS object_id, "
        f"t.classification AS label, {_transition_data('t', 'RUNNING', 'claim')} AS data FROM t), "
        f"{_SEND_HELD if send_held else ''}"
        f"{audit_entries_cte('s', events=('task.transition',))} "
        f"SELECT {', '.join('t.' + f.column for f in _FIELDS)}, "
        # Which backend configuration the tenant has as of this statement (gateway/placement.py).
        f"(SELECT c.id || ':' || c.revision || ':' || c.digest FROM \"{_CONFIGURATION}\" c "
        "WHERE c.tenant_id = t.tenant_id), "
        + ("(SELECT n.id FROM n), (SELECT n.attempt FROM n) " if send_held else "NULL::bigint, NULL::integer ")
        + "FROM t"
    )


# The attempt a message names.
_CLAIM = _claim_statement("id = %(id)s::bigint AND state = 'QUEUED' AND attempt = %(attempt)s::integer",
                          send_held=True)
# The run's first held task that no other worker is claiming (gateway/dispatch.py, the window):
# SKIP LOCKED, so that workers draining one run take different tasks without waiting on each other.
_CLAIM_HELD = _claim_statement(f"id = {_first_held('%(run)s::uuid')} AND state = 'QUEUED' AND held", send_held=False)


_worker = (None, "")


def _worker_name() -> str:
    """`host:pid` of this process (TaskInstance.worker), looked up once per process."""
    global _worker
    pid = os.getpid()
    if _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}")
    return _worker[1]


def _claim_row(params: dict, statement: _Statement):
    # Inside a caller's transaction the statement gets a savepoint, so that a refused history
    # row (its transition id was recorded before) leaves that transaction usable.
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), _prepared_cursor() as cursor:
        cursor.execute(statement.sql, statement.params(params))
        return cursor.fetchone()


def _claim_checking_health(params: dict, statement: _Statement):
    """The claim, as the kept connection's health check. With CONN_HEALTH_CHECKS, Django checks a
    kept connection with its own `SELECT 1` round trip before the first statement of each task
    (gateway.celery runs close_old_connections around every task); here the claim itself is the
    check: when it fails on a connection that is no longer usable, the connection is replaced and
    the claim sent again, once. That is safe: the claim matches only a QUEUED row at this attempt
    and its transition id is unique, so if the lost statement had in fact committed, the repeated
    one claims nothing and the message is stale (the reconciler recovers the attempt when its lease
    expires), as it would be without the repeat; no attempt can be claimed twice."""
    conn = connection
    if conn.connection is None or not conn.health_check_enabled or conn.health_check_done or conn.in_atomic_block:
        return _claim_row(params, statement)
    conn.health_check_done = True  # Django would have sent its check now; this statement is the check
    try:
        return _claim_row(params, statement)
    except (OperationalError, InterfaceError):
        if conn.is_usable():
            raise  # the statement failed, not the connection
        conn.close()
    return _claim_row(params, statement)  # on a new connection


def task_claim(task_id: int, attempt: int) -> TaskInstance | None:
    """QUEUED -> RUNNING for exactly this attempt, with its history row and audit entry: one
    statement, so one round trip and one commit. Returns the claimed row (spec included: the run
    needs it and the finish does not read it again), or None when the message is stale."""
    return _claim(_CLAIM, id=task_id, attempt=attempt)


def task_claim_held(run_id) -> TaskInstance | None:
    """The same move for the run's first held task (its current attempt) that no other worker is
    claiming; None when the run has none left."""
    return _claim(_CLAIM_HELD, run=run_id)


def _claim(statement: _Statement, **key) -> TaskInstance | None:
    now = timezone.now()
    params = {
        **key, "now": now,
        "worker": _worker_name(),
        "lease": now + timedelta(seconds=settings.GATEHOUSE_ENGINE["LEASE_SECONDS"]),
        "audit_at": now, "audit_where": audit_where_json(),
    }
    try:
        row = _claim_checking_health(params, statement)
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "table_name", None) != _HISTORY:
            raise
        return None  # the claim's transition id exists: the move was made before
    if row is None:
        return None
    values = [json.loads(v) if f.column in _JSON_COLUMNS and isinstance(v, str) else v for f, v in zip(_FIELDS, row)]
    task = TaskInstance.from_db(connection.alias, [f.attname for f in _FIELDS], values)
    # The tenant's backend configuration key as the claim saw it: placement_check at dispatch
    # reads the configuration again only when it changed (gateway/placement.py).
    task.claimed_configuration = row[len(_FIELDS)]
    if row[len(_FIELDS) + 1] is not None:
        dispatch_on_commit([(row[len(_FIELDS) + 1], row[len(_FIELDS) + 2])])  # the held task sent in its place
    live.task_states([task])  # live updates, after commit (gateway/realtime)
    return task


# The end of a successful attempt. The dependants are decremented in the same statement, and the
# plain tasks whose needs all succeeded are queued for their first attempt (engine.make_ready);
# readiness is read from `d`, the dependants' rows as locked (the newest versions), so the UPDATE
# of `u`, which re-reads them under the same locks, agrees with it.
#
# Locking order: `l` locks the attempt's row first, `d` then locks the dependants in id order (it
# reads `k`, which reads `l`, so it runs after it), and only then do `t` and `u` change them.
#
# Alone (%(alone)s true): the statement is then the whole change, committed by itself (autocommit,
# one round trip), and that is right only when nothing else follows from it in the same
# transaction: no gate opens (engine.make_ready) and a dependant stays open, so the run cannot
# close (engine.run_close_if_done). Whether that holds is read from the locked dependants (`g`);
# when it does not, the statement changes nothing (`t` and `u` need `g.go`, everything else is
# made from them) and says so, and the caller does it all again in a transaction.
_READY = "(x.needs_remaining = 1 AND x.state = 'PENDING' AND x.kind = 'task' AND x.attempt = 0)"
_GATE_READY = "(x.needs_remaining = 1 AND x.state = 'PENDING' AND x.kind = 'gate')"
_TERMINAL = ", ".join(f"'{state}'" for state in sorted(TASK_TERMINAL))
_FINISH = _Statement(
    f'WITH l AS (SELECT id, run_id, dependants FROM "{_TASK}" '
    "WHERE id = %(id)s::bigint AND state = 'RUNNING' AND attempt = %(attempt)s::integer FOR UPDATE), "
    # The dependants' ids, one lookup by (run, key) each on the unique index: a scalar subquery
    # per key, so that no plan reads the run's every task per finish (a fan-in task has
    # thousands of siblings, and a fresh table has no statistics to tell the planner so).
    f'k AS (SELECT (SELECT y.id FROM "{_TASK}" y WHERE y.run_id = l.run_id AND y.key = k.key) AS id '
    "FROM l, jsonb_array_elements_text(l.dependants) AS k(key)), "
    f'd AS (SELECT x.id, x.state, {_READY} AS ready, {_GATE_READY} AS gate_ready FROM "{_TASK}" x '
    "WHERE x.id = ANY (ARRAY(SELECT k.id FROM k)) ORDER BY x.id FOR UPDATE), "
    # The readied tasks numbered in id order: those past the dispatch window are held (no message;
    # gateway/dispatch.py), the first WINDOW are sent.
    "n AS (SELECT d.id, count(*) FILTER (WHERE d.ready) OVER (ORDER BY d.id) AS nth FROM d), "
    "g AS (SELECT NOT %(alone)s::boolean OR (NOT coalesce(bool_or(d.gate_ready), false) "
    f"AND coalesce(bool_or(d.state NOT IN ({_TERMINAL})), false)) AS go FROM d), "
    f"t AS (UPDATE \"{_TASK}\" z SET state = 'SUCCEEDED', reason = '', state_changed_at = %(now)s::timestamptz, "
    # The row by its primary key (a scalar subquery): joined to `l`, the planner may instead
    # scan every RUNNING task (task_inflight_by_state) when its statistics say there are few.
    "finished_at = %(now)s, lease_expires_at = NULL, exit_code = %(exit_code)s::integer "
    "WHERE z.id = (SELECT l.id FROM l) AND (SELECT g.go FROM g) AND z.state = 'RUNNING' "
    "AND z.attempt = %(attempt)s::integer "
    "RETURNING z.id, z.tenant_id, z.run_id, z.key, z.classification, z.dependants, z.worker, z.attempt), "
    f'a AS (INSERT INTO "{Artefact._meta.db_table}" (id, tenant_id, run_id, task_id, attempt, name, digest, size, media_type, '
    "classification, created_at) SELECT o.id, t.tenant_id, t.run_id, t.id, t.attempt, o.name, o.digest, o.size, "
    "o.media_type, t.classification, %(now)s FROM t, unnest(%(a_ids)s::uuid[], %(a_names)s::text[], "
    "%(a_digests)s::text[], %(a_sizes)s::bigint[], %(a_types)s::text[]) AS o(id, name, digest, size, media_type)), "
    f'u AS (UPDATE "{_TASK}" x SET needs_remaining = x.needs_remaining - 1, '
    "state = CASE WHEN d.ready THEN 'QUEUED' ELSE x.state END, "
    "attempt = CASE WHEN d.ready THEN 1 ELSE x.attempt END, "
    "reason = CASE WHEN d.ready THEN '' ELSE x.reason END, "
    "state_changed_at = CASE WHEN d.ready THEN %(now)s ELSE x.state_changed_at END, "
    "held = CASE WHEN d.ready THEN %(window)s::integer > 0 AND n.nth > %(window)s::integer ELSE x.held END "
    "FROM d JOIN n ON n.id = d.id, g WHERE x.id = d.id AND g.go "
    "RETURNING x.id, x.tenant_id, x.run_id, x.key, x.classification, x.state, x.attempt, d.ready, d.gate_ready, "
    "x.held), "
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
    "SELECT g.go, l.id, t.run_id, u.id, u.state, u.ready, u.gate_ready, t.tenant_id, t.classification, t.key, "
    "u.tenant_id, u.classification, u.key, u.held FROM g LEFT JOIN l ON true LEFT JOIN t ON true LEFT JOIN u ON true "
    "ORDER BY u.id"
)


def task_finish_succeeded(task_id: int, attempt: int, outcome, *, alone: bool = False) -> str | None:
    """RUNNING -> SUCCEEDED for this attempt, with its artefacts, history, audit entries and the
    propagation to its dependants. Returns "superseded" when the attempt is no longer the task's
    running one, else "succeeded".

    Called inside the finish's transaction; or, with `alone`, outside any, as one statement
    committed by itself: then it returns None, having changed nothing, when the end of this attempt
    needs more in the same transaction (a gate opens, or the run may close), and the caller calls
    it again inside one."""
    from .engine import make_ready, run_close_if_done

    if alone and connection.in_atomic_block:
        raise RuntimeError("the statement alone is its own transaction: call it outside one")
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
        "submitted": submitted, "audit_at": now, "audit_where": audit_where_json(), "alone": alone,
        "window": dispatch_window(),
    }
    with _prepared_cursor() as cursor:
        cursor.execute(_FINISH.sql, _FINISH.params(params))
        rows = cursor.fetchall()
    go, locked = rows[0][0], rows[0][1]
    if locked is None:
        return "superseded"  # cancelled or recovered meanwhile: this attempt's result is dropped
    if not go:
        return None  # alone, and more follows in the same transaction: nothing was changed
    rows = [row[2:] for row in rows]
    run_id, tenant_id, classification, key = rows[0][0], rows[0][5], rows[0][6], rows[0][7]
    dependants = [row[1:5] for row in rows if row[1] is not None]  # id, state, ready, gate_ready
    dispatch_on_commit((row[1], 1) for row in rows if row[1] is not None and row[3] and not row[11])
    # Live updates, after commit (gateway/realtime), from what the statement returned: the
    # attempt's end, then the tasks it readied, as the ORM path sends them.
    live.task_states([Moved(tenant_id, classification, run_id, key, "SUCCEEDED"),
                      *(Moved(row[8], row[9], run_id, row[10], row[2]) for row in rows if row[1] is not None and row[3])])
    gates = [dep_id for dep_id, _, _, gate_ready in dependants if gate_ready]
    if gates:
        # Rare (a gate whose needs all succeeded): the ORM path opens it; its row is locked already.
        make_ready(list(TaskInstance.objects.filter(id__in=gates).order_by("id")))
    still_open = any(gate_ready or state not in TASK_TERMINAL for _, state, _, gate_ready in dependants)
    if not still_open:
        run_close_if_done(run_id)
    return "succeeded"


__all__ = ["enabled", "task_claim", "task_claim_held", "task_finish_succeeded"]
