"""Write paths for runs: submit and cancel. Each is one atomic function that checks, writes,
audits and leaves side effects to after commit."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction

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
    workflow_labels(workflow)  # every classification must be a label: label_invalid otherwise
    return workflow


def run_submit(*, tenant: Tenant, actor, source: bytes | str, filename: str = "<submitted>") -> Run:
    """Validate a workflow and start a run of it: every task is created in topological order,
    the roots are queued (or opened, for gates), and their dispatch is sent after commit."""
    workflow = workflow_parse(source, filename=filename, tenant=tenant)
    labels = workflow_labels(workflow)
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
            TaskInstance(
                tenant=tenant,
                run=run,
                key=spec.id,
                kind=spec.kind,
                spec=spec.to_dict(),
                dependants=list(dependants.get(spec.id, ())),
                needs_remaining=len(spec.needs),
                backend=backends.get(spec.id, ""),  # gates run on no backend
                classification=format_label(labels.tasks[spec.id]),  # at least what it reads
            )
            for spec in (workflow.task(key) for key in workflow.topological_order())
        ]
        rows = TaskInstance.objects.bulk_create(rows, batch_size=1000)
        audit_append(
            event="run.submitted",
            tenant=tenant,
            actor=actor,
            obj=run,
            data={"name": run.name, "spec_digest": run.spec_digest, "tasks": len(rows)},
        )
        make_ready([r for r in rows if r.needs_remaining == 0])
    return run


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


