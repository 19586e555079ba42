"""Write paths for runs: submit and cancel. Each is one atomic function that checks, writes,
audits and leaves side effects to after commit."""
from __future__ import annotations

import json

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.services import audit_append
from executors.backends import tenant_backend_names
from executors.registry import known_backends

from .clearances import labels_register, require_clearance, workflow_labels
from .labels import format_label
from .placement import placement_plan
from .selectors import visible_to
from .choices import RUN_TERMINAL, TASK_TERMINAL, TaskKind, TaskState
from .engine import lock_tasks, make_ready, run_close_if_done, task_transition
from .errors import Conflict, ErrorCode, GatehouseError, NotFound
from .models import Run, TaskInstance, Tenant
from .spec import Limits, SpecError, Workflow, parse_workflow


def spec_limits() -> Limits:
    return Limits(**settings.GATEHOUSE_SPEC_LIMITS)


def workflow_parse(source: bytes | str, *, filename: str = "<submitted>", tenant: Tenant | None = None) -> Workflow:
    """Parse and validate a workflow file, or raise GatehouseError(spec_invalid) with every issue.
    A task may name a backend of `tenant` (executors/backends.py), or without a tenant any executor."""
    return _workflow_parse(source, filename=filename, tenant=tenant)[0]


def _workflow_parse(source: bytes | str, *, filename: str, tenant: Tenant | None):
    """workflow_parse, and the labels it checked (gateway.clearances.workflow_labels)."""
    try:
        workflow = parse_workflow(source, filename=filename, limits=spec_limits())
    except SpecError as exc:
        raise GatehouseError(
            ErrorCode.SPEC_INVALID,
            f"The workflow file has {len(exc.issues)} error(s).",
            detail=[
                {"code": i.code, "message": i.message, "line": i.line, "task": i.task_id, "path": i.path}
                for i in exc.issues
            ],
        ) from exc
    backends = known_backends() if tenant is None else tenant_backend_names(tenant.id)
    unknown = [t for t in workflow.tasks if t.kind == TaskKind.TASK and t.backend_given and t.backend not in backends]
    if unknown:
        raise GatehouseError(
            ErrorCode.UNKNOWN_BACKEND,
            "Some tasks name a backend this gateway does not have.",
            detail=[{"task": t.id, "line": t.line, "backend": t.backend} for t in unknown],
        )
    return workflow, workflow_labels(workflow)  # every classification must be a label: label_invalid otherwise


def run_submit(*, tenant: Tenant, actor, source: bytes | str, filename: str = "<submitted>") -> Run:
    """Validate a workflow and start a run of it: every task is created in topological order,
    the roots are queued (or opened, for gates), and their dispatch is sent after commit."""
    workflow, labels = _workflow_parse(source, filename=filename, tenant=tenant)
    # Nobody creates what they could not read.
    require_clearance(actor, tenant.id, labels.all(), what="The workflow")
    backends = placement_plan(tenant=tenant, workflow=workflow, labels=labels)  # no_backend_for_label otherwise
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    dependants = workflow.dependants()
    with transaction.atomic():
        labels_register(tenant.id, labels.all())
        run = Run.objects.create(
            tenant=tenant,
            submitter=actor,
            name=workflow.name,
            spec_source=text,
            spec_digest=workflow.digest,
            classification=format_label(labels.run),
        )
        rows = [
            (spec.id, spec.kind, spec.to_dict(), list(dependants.get(spec.id, ())), len(spec.needs),
             backends.get(spec.id, ""),  # gates run on no backend
             format_label(labels.tasks[spec.id]))  # at least what it reads
            for spec in (workflow.task(key) for key in workflow.topological_order())
        ]
        roots = _tasks_create(tenant, run, rows)
        audit_append(
            event="run.submitted",
            tenant=tenant,
            actor=actor,
            obj=run,
            data={"name": run.name, "spec_digest": run.spec_digest, "tasks": len(rows)},
        )
        make_ready(roots)
    return run


_TASK_COLUMNS = ("key", "kind", "spec", "dependants", "needs_remaining", "backend", "classification")

# A run's task rows in one INSERT: the rows travel as one JSON array (one parameter, parsed by the
# server) instead of an array per column, each value converted by Django and quoted by the driver
# one at a time (a 2,002-task run: about 300 ms before, about 50 ms with this, rows built). Rows are inserted
# in the array's order (ORDER BY its ordinality), so their ids grow in topological order, which the
# engine's locking order relies on (gateway/engine.py). Every other column gets what the model's
# defaults give a new row (bulk_create of TaskInstance(...)): NULL where the model allows it.
_INSERT_TASKS = (
    f'INSERT INTO "{TaskInstance._meta.db_table}" (tenant_id, run_id, key, kind, spec, dependants, needs_remaining, '
    "backend, classification, state, reason, attempt, held, failures, recoveries, state_changed_at, worker) "
    "SELECT %(tenant)s, %(run)s, r.v->>0, r.v->>1, r.v->2, r.v->3, (r.v->>4)::integer, r.v->>5, r.v->>6, "
    "%(state)s, '', 0, false, 0, 0, %(now)s, '' FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS r(v, n) "
    "ORDER BY r.n RETURNING key, id"
)


def _one_statement_insert() -> bool:
    return connection.vendor == "postgresql"


def _tasks_create(tenant: Tenant, run: Run, rows: list[tuple]) -> list[TaskInstance]:
    """Insert a run's tasks (`rows`: _TASK_COLUMNS, in topological order); return its roots (the
    tasks that need nothing) as saved, ids included."""
    now = timezone.now()
    if not _one_statement_insert():
        tasks = [TaskInstance(tenant=tenant, run=run, state_changed_at=now, **dict(zip(_TASK_COLUMNS, row)))
                 for row in rows]
        return [t for t in TaskInstance.objects.bulk_create(tasks, batch_size=1000) if t.needs_remaining == 0]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_TASKS, {"tenant": tenant.id, "run": run.id, "state": TaskState.PENDING, "now": now,
                                       "rows": json.dumps(rows, separators=(",", ":"))})
        ids = dict(cursor.fetchall())
    roots = []
    for row in rows:
        if row[4] == 0:  # needs_remaining
            task = TaskInstance(id=ids[row[0]], tenant=tenant, run=run, state_changed_at=now,
                                **dict(zip(_TASK_COLUMNS, row)))
            task._state.adding, task._state.db = False, connection.alias  # as bulk_create leaves them
            roots.append(task)
    return roots


def run_cancel(*, run: Run, actor, reason: str = "cancelled") -> Run:
    """Cancel every open task of a run. Queued tasks never start (their message becomes a no-op);
    a running task's worker sees the cancellation at its next heartbeat and stops the process."""
    if actor is not None and not visible_to(run, actor):
        raise NotFound("No such run.")
    with transaction.atomic():
        open_ids = (
            TaskInstance.objects.filter(run_id=run.id).exclude(state__in=TASK_TERMINAL).values_list("id", flat=True)
        )
        tasks = lock_tasks(open_ids)
        locked_run = Run.objects.select_for_update().get(id=run.id)
        if locked_run.state in RUN_TERMINAL:
            raise Conflict(ErrorCode.RUN_FINISHED, f"The run is already {locked_run.state}.")
        locked_run.reason = reason
        locked_run.save(update_fields=["reason"])
        for task in tasks:
            if task.state in TASK_TERMINAL:
                continue
            task_transition(
                task, TaskState.CANCELLED, transition_id=f"cancel:{task.id}", reason=reason, actor=actor
            )
            if task.kind == TaskKind.GATE:
                from approvals.services import gate_close_cancelled

                gate_close_cancelled(task)
        audit_append(event="run.cancelled", tenant_id=run.tenant_id, actor=actor, obj=run, data={"reason": reason})
        run_close_if_done(run.id)
    run.refresh_from_db()
    return run


