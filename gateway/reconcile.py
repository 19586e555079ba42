"""The periodic reconciler: recovers what a crash or a lost message left behind.

- a RUNNING task whose lease expired lost its worker: a new attempt is dispatched
  (or the task fails after MAX_RECOVERIES); but a task whose job runs on a remote backend lost
  its poller, not its job: the job is polled again (reattached), its lost collect message sent
  again, or, when its worker died during the submission, the job is adopted by name (a new
  attempt only when the backend has no such job) (gateway/remote.py);
- a QUEUED task nobody claimed within DISPATCH_TIMEOUT lost its message: a new attempt;
- a RETRY_WAIT task past due lost its countdown message: it is requeued;
- an open gate past its deadline gets its on_timeout.

Several reconcilers may run at once: each candidate is handled in its own transaction under
the row lock (SKIP LOCKED), its condition checked again, and each move has a deterministic
transition id, so a move made by one is a no-op for the others.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_append

from . import dbscope
from .choices import TaskState
from .dispatch import dispatch_on_commit
from .engine import after_terminal, task_transition
from .models import TaskInstance
from .remote import SUBMITTING, is_remote, remote_adopt, remote_poll
from .worker import task_requeue

log = logging.getLogger(__name__)
BATCH = 500


def _locked(task_id: int) -> TaskInstance | None:
    return TaskInstance.objects.select_for_update(skip_locked=True).filter(id=task_id).first()


def _kill_orphan(task: TaskInstance) -> None:
    """Stop a lost attempt's process where this host can (the local executor's pid is
    checked against its start time, so a reused pid is never touched)."""
    if not task.external:
        return
    from executors.base import JobHandle
    from executors.registry import get_executor

    try:
        handle = JobHandle(task.external["backend"], task.external["external_id"], task.external["data"])
        get_executor(handle.backend).cancel(handle)
    except Exception:  # best effort: the new attempt runs in its own work directory anyway
        log.warning("could not stop the lost attempt of task %s", task.id, exc_info=True)


def recover_lost_workers(now) -> int:
    count = 0
    ids = TaskInstance.objects.filter(state=TaskState.RUNNING, lease_expires_at__lt=now).values_list("id", flat=True)[:BATCH]
    for task_id in list(ids):
        with transaction.atomic():
            task = _locked(task_id)
            if task is None or task.state != TaskState.RUNNING or not task.lease_expires_at or task.lease_expires_at >= now:
                continue
            if is_remote(task.external) and task.external.get("attempt") == task.attempt:
                if task.external["phase"] != SUBMITTING:
                    continue  # a dead poller, not a dead job: reattach_remote_jobs
                adopted = remote_adopt(task)
                if adopted != "absent":
                    if adopted == "adopted":
                        audit_append(event="task.recovered", tenant_id=task.tenant_id, obj=task,
                                     data={"reason": "job adopted after its worker was lost", "attempt": task.attempt})
                        count += 1
                    continue
            else:
                _kill_orphan(task)
            reason = f"worker {task.worker} lost (lease expired)"
            if task.recoveries >= settings.GATEHOUSE_ENGINE["MAX_RECOVERIES"]:
                task_transition(task, TaskState.FAILED, transition_id=f"recover:{task.id}:{task.attempt}", reason=reason)
                after_terminal(task)
            else:
                previous = task.attempt
                if task_transition(
                    task,
                    TaskState.QUEUED,
                    transition_id=f"recover:{task.id}:{previous}",
                    reason=reason,
                    attempt=previous + 1,
                    recoveries=task.recoveries + 1,
                    lease_expires_at=None,
                    worker="",
                ):
                    dispatch_on_commit([(task.id, task.attempt)])
            audit_append(event="task.recovered", tenant_id=task.tenant_id, obj=task, data={"reason": reason, "attempt": task.attempt})
            count += 1
    return count


def reattach_remote_jobs(now) -> int:
    """Remote jobs whose lease expired: their poller is gone; poll them here (one query per
    cluster or queue), or send their lost collect message again."""
    counts = remote_poll(expired_before=now)
    return counts.get("running", 0) + counts.get("finished", 0) + counts.get("collect_resent", 0)


def redispatch_lost_messages(now) -> int:
    cutoff = now - timedelta(seconds=settings.GATEHOUSE_ENGINE["DISPATCH_TIMEOUT_SECONDS"])
    count = 0
    ids = TaskInstance.objects.filter(state=TaskState.QUEUED, state_changed_at__lt=cutoff).values_list("id", flat=True)[:BATCH]
    for task_id in list(ids):
        with transaction.atomic():
            task = _locked(task_id)
            if task is None or task.state != TaskState.QUEUED or task.state_changed_at >= cutoff:
                continue
            previous = task.attempt
            if task_transition(
                task,
                TaskState.QUEUED,
                transition_id=f"redispatch:{task.id}:{previous}",
                reason=f"attempt {previous} was not claimed in time",
                attempt=previous + 1,  # a held task (gateway/dispatch.py, the window) gets its message now
            ):
                dispatch_on_commit([(task.id, task.attempt)])
                audit_append(event="task.redispatched", tenant_id=task.tenant_id, obj=task, data={"attempt": task.attempt})
                count += 1
    return count


def requeue_overdue_retries(now) -> int:
    grace = timedelta(seconds=settings.GATEHOUSE_ENGINE["RECONCILE_INTERVAL_SECONDS"])
    rows = TaskInstance.objects.filter(state=TaskState.RETRY_WAIT, not_before__lt=now - grace).values_list("id", "attempt")[:BATCH]
    return sum(1 for task_id, attempt in list(rows) if task_requeue(task_id, attempt))


@dbscope.system_scope()  # every tenant's tasks and gates, from whichever process calls it
def reconcile(now=None) -> dict[str, int]:
    from approvals.services import gates_time_out
    from audit.export_jobs import export_jobs_expire, export_jobs_recover

    now = now or timezone.now()
    return {
        "lost_workers": recover_lost_workers(now),
        "remote_reattached": reattach_remote_jobs(now),
        "lost_messages": redispatch_lost_messages(now),
        "overdue_retries": requeue_overdue_retries(now),
        "gate_timeouts": gates_time_out(now),
        "audit_exports": export_jobs_recover(now),
        "audit_exports_expired": export_jobs_expire(now),
    }
