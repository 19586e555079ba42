"""The state machine of task instances and what one task's end does to the others.

One entry point moves a task: `task_transition`. It expects the task row locked by the
caller's transaction, checks the move against ALLOWED_TRANSITIONS, records it in the history
under a transition id (a second move with the same id is a no-op) and leaves side effects
(dispatch messages) to `transaction.on_commit`.

Locking order, everywhere: task rows in increasing id (rows are created in topological
order, so a task's dependants always have greater ids), then the run row last.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.db import connection
from django.db.models import F
from django.utils import timezone

from audit.services import audit_append, audit_append_many

from .choices import ALLOWED_TRANSITIONS, RUN_TERMINAL, TASK_TERMINAL, RunState, TaskKind, TaskState
from .dispatch import cancel_remote_on_commit, dispatch_on_commit, dispatch_window
from .models import Run, TaskInstance, TaskTransition
from .realtime import events as live


class InvalidTransition(Exception):
    def __init__(self, task: TaskInstance, to_state: str):
        super().__init__(f"task {task.key!r}: {task.state} -> {to_state} is not allowed")
        self.task = task
        self.to_state = to_state


def task_transition(
    task: TaskInstance,
    to_state: str,
    *,
    transition_id: str,
    reason: str = "",
    actor=None,
    save: bool = True,
    **fields,
) -> bool:
    """Move `task` (locked by the caller) to `to_state`. Returns False when `transition_id`
    was recorded before (the move already happened), True when this call made it."""
    if to_state not in ALLOWED_TRANSITIONS[task.state]:
        if TaskTransition.objects.filter(transition_id=transition_id).exists():
            return False
        raise InvalidTransition(task, to_state)
    if not _record(task, to_state, transition_id, fields.get("attempt", task.attempt), reason, actor):
        return False
    if task.held:
        fields.setdefault("held", False)  # held is a QUEUED task's waiting for a worker; any move ends it
    # A task cancelled while its job runs on a remote backend: that job is stopped after commit.
    remote_job = fields.get("external", task.external) if (
        to_state == TaskState.CANCELLED and task.state == TaskState.RUNNING) else None
    now = timezone.now()
    changed = {"state", "reason", "state_changed_at", *fields}
    task.state = to_state
    task.reason = reason
    task.state_changed_at = now
    if to_state in TASK_TERMINAL:
        task.finished_at = now
        task.lease_expires_at = None
        changed |= {"finished_at", "lease_expires_at"}
    for name, value in fields.items():
        setattr(task, name, value)
    if save:
        task.save(update_fields=sorted(changed))
    if isinstance(remote_job, dict) and remote_job.get("phase") in ("submitting", "submitted", "collecting"):
        cancel_remote_on_commit(task.id, remote_job.get("attempt", task.attempt))
    audit_append(
        event="task.transition", tenant_id=task.tenant_id, actor=actor, object_type="task", object_id=str(task.id),
        label=task.classification,
        data={"run": str(task.run_id), "task": task.key, "to": to_state, "attempt": task.attempt,
              "transition": transition_id, "reason": reason[:500]},
    )
    live.task_states([task])  # after commit, off this thread (gateway/realtime)
    return True


_INSERT_TRANSITION = None


def _record(task: TaskInstance, to_state: str, transition_id: str, attempt: int, reason: str, actor) -> bool:
    """Insert the history row unless its transition id exists: one statement, no savepoint.
    Returns whether this call inserted it."""
    global _INSERT_TRANSITION
    if _INSERT_TRANSITION is None:
        table = TaskTransition._meta.db_table
        _INSERT_TRANSITION = (
            f'INSERT INTO "{table}" (transition_id, tenant_id, task_id, from_state, to_state, attempt, reason, actor_id, at) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (transition_id) DO NOTHING RETURNING id"
        )
    actor_id = actor.pk if (actor is not None and actor.is_authenticated) else None
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_TRANSITION,
            [transition_id, task.tenant_id, task.id, task.state, to_state, attempt, reason, actor_id,
             connection.ops.adapt_datetimefield_value(timezone.now())],
        )
        return cursor.fetchone() is not None


def _bulk_transition(tasks: list[TaskInstance], to_state: str, *, id_prefix: str, reason: str, **fields) -> None:
    """The same move for many locked rows with one history insert and one update per field set.
    Used for fan-out: readying thousands of tasks must not cost thousands of round trips."""
    if not tasks:
        return
    now = timezone.now()
    history = []
    for task in tasks:
        if to_state not in ALLOWED_TRANSITIONS[task.state]:
            raise InvalidTransition(task, to_state)
        history.append(
            TaskTransition(
                transition_id=f"{id_prefix}:{task.id}:{fields.get('attempt', task.attempt)}",
                tenant_id=task.tenant_id,
                task=task,
                from_state=task.state,
                to_state=to_state,
                attempt=fields.get("attempt", task.attempt),
                reason=reason,
            )
        )
        task.state = to_state
        task.reason = reason
        task.state_changed_at = now
        task.held = False
        if to_state in TASK_TERMINAL:
            task.finished_at = now
        for name, value in fields.items():
            setattr(task, name, value)
    TaskTransition.objects.bulk_create(history)
    audit_append_many([
        {"event": "task.transition", "tenant_id": t.tenant_id, "object_type": "task", "object_id": t.id,
         "label": t.classification,
         "data": {"run": str(t.run_id), "task": t.key, "to": to_state, "attempt": h.attempt,
                  "transition": h.transition_id, "reason": reason[:500]}}
        for t, h in zip(tasks, history)
    ])
    update = {"state": to_state, "reason": reason, "state_changed_at": now, "held": False, **fields}
    if to_state in TASK_TERMINAL:
        update["finished_at"] = now
    TaskInstance.objects.filter(id__in=[t.id for t in tasks]).update(**update)
    live.task_states(tasks)


def make_ready(tasks: list[TaskInstance]) -> None:
    """Tasks whose needs have all succeeded: plain tasks are queued for their first attempt and
    dispatched after commit; gates open and wait for a decision without holding anything."""
    plain = [t for t in tasks if t.kind == TaskKind.TASK]
    gates = [t for t in tasks if t.kind == TaskKind.GATE]
    if plain:
        # Attempt numbers grow per task; a task readied for the first time gets attempt 1.
        first = sorted((t for t in plain if t.attempt == 0), key=lambda t: t.id)
        window = dispatch_window() or len(first)
        sent, held = first[:window], first[window:]
        _bulk_transition(sent, TaskState.QUEUED, id_prefix="ready", reason="", attempt=1)
        _bulk_transition(held, TaskState.QUEUED, id_prefix="ready", reason="", attempt=1, held=True)
        dispatch_on_commit((t.id, t.attempt) for t in sent)
    if gates:
        from approvals.services import gate_open

        for gate_task in gates:
            if task_transition(gate_task, TaskState.AWAITING_DECISION, transition_id=f"open:{gate_task.id}"):
                gate_open(gate_task)


def after_terminal(task: TaskInstance) -> None:
    """Propagate the end of `task` (locked, just moved to a terminal state) to its dependants,
    then close the run if nothing of it is still open."""
    if task.dependants:
        if task.state == TaskState.SUCCEEDED:
            # Lock the dependants in id order, then decrement; only the transaction that takes a
            # dependant to zero readies it (the lock makes the read-then-write safe).
            rows = list(
                TaskInstance.objects.select_for_update()
                .filter(run_id=task.run_id, key__in=task.dependants)
                .defer("spec", "dependants")  # a fan-in task's spec lists thousands of needs
                .order_by("id")
            )
            TaskInstance.objects.filter(id__in=[r.id for r in rows]).update(needs_remaining=F("needs_remaining") - 1)
            ready = []
            for row in rows:
                row.needs_remaining -= 1
                if row.needs_remaining == 0 and row.state == TaskState.PENDING:
                    ready.append(row)
            make_ready(ready)
            if any(row.state not in TASK_TERMINAL for row in rows):
                return  # a dependant is still open, so the run is too
        else:
            skip_descendants(task)
    run_close_if_done(task.run_id)


def skip_descendants(task: TaskInstance) -> None:
    """Everything downstream of a task that did not succeed is skipped, with the reason."""
    reason = f"{task.key} {task.state.lower()}"
    frontier = list(task.dependants)
    seen: set[str] = set()
    to_skip: list[TaskInstance] = []
    while frontier:
        rows = list(
            TaskInstance.objects.select_for_update()
            .filter(run_id=task.run_id, key__in=[k for k in frontier if k not in seen])
            .order_by("id")
        )
        seen.update(frontier)
        frontier = []
        for row in rows:
            if row.state == TaskState.PENDING:
                to_skip.append(row)
                frontier.extend(row.dependants)
    _bulk_transition(to_skip, TaskState.SKIPPED, id_prefix="skip", reason=f"upstream: {reason}")


def run_close_if_done(run_id) -> Run | None:
    """Give the run its final state once no task of it is open. Locks the run row (last)."""
    if TaskInstance.objects.filter(run_id=run_id).exclude(state__in=TASK_TERMINAL).exists():
        return None
    run = Run.objects.select_for_update().get(id=run_id)
    if run.state in RUN_TERMINAL:
        return run
    states = set(TaskInstance.objects.filter(run_id=run_id).values_list("state", flat=True).distinct())
    if states <= {TaskState.SUCCEEDED}:
        run.state, run.reason = RunState.SUCCEEDED, ""
    elif TaskState.FAILED in states:
        failed = TaskInstance.objects.filter(run_id=run_id, state=TaskState.FAILED).values_list("key", flat=True)
        run.state, run.reason = RunState.FAILED, "failed: " + ", ".join(sorted(failed)[:20])
    elif states & {TaskState.REJECTED, TaskState.EXPIRED}:
        gates = TaskInstance.objects.filter(
            run_id=run_id, state__in=[TaskState.REJECTED, TaskState.EXPIRED]
        ).values_list("key", "state")
        run.state = RunState.REJECTED
        run.reason = ", ".join(f"{k} {s.lower()}" for k, s in sorted(gates)[:20])
    else:
        run.state, run.reason = RunState.CANCELLED, run.reason or "cancelled"
    run.finished_at = timezone.now()
    run.save(update_fields=["state", "reason", "finished_at"])
    audit_append(event="run.finished", tenant_id=run.tenant_id, obj=run, data={"state": run.state, "reason": run.reason[:500]})
    live.run_state(run)
    return run


def lock_tasks(ids: Iterable[int]) -> list[TaskInstance]:
    return list(TaskInstance.objects.select_for_update().filter(id__in=list(ids)).order_by("id"))
