"""What a worker does with one dispatch message: claim the attempt, run it, record the end; then
the run's held tasks, if it has any (gateway/dispatch.py, the window), the same way.

Exactly once per attempt: the claim moves QUEUED -> RUNNING only if the row still holds the
attempt named in the message, under the row lock, so a redelivered or duplicated message
finds the task already RUNNING (or at a later attempt) and does nothing. A held task is claimed
by the same guarded move (SKIP LOCKED picks it, so two workers draining one run take different
tasks), and a message later sent for it finds it taken.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from executors.base import (
    Collected,
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    OutputRequest,
    StagedInput,
)
from executors.credentials import CredentialsError

from audit.services import audit_append

from . import remote, worker_sql
from .artefacts import ArtefactError
from .choices import TaskState
from .dispatch import dispatch_held, dispatch_on_commit, dispatch_window, held_tasks, retry_on_commit
from .engine import after_terminal, task_transition
from .models import Artefact, TaskInstance, TaskTransition
from .placement import UNREAD, placement_check
from .spec import TaskSpec
from .storage import get_store, tenant_key

log = logging.getLogger(__name__)


def _engine(name: str):
    return settings.GATEHOUSE_ENGINE[name]


def task_claim(task_id: int, attempt: int) -> TaskInstance | None:
    if worker_sql.enabled():
        return worker_sql.task_claim(task_id, attempt)  # the same, in one statement
    with transaction.atomic():
        task = TaskInstance.objects.select_for_update().filter(id=task_id).first()
        if task is None or task.state != TaskState.QUEUED or task.attempt != attempt:
            return None
        claimed = _claim_locked(task)
        if claimed is not None:
            dispatch_held(task.run_id, 1)  # the message taken is replaced by a held task's (gateway/dispatch.py)
        return claimed


def task_claim_held(run_id) -> TaskInstance | None:
    """Claim the run's first held task (gateway/dispatch.py, the window) at its current attempt;
    None when it has none left. Workers draining one run take different tasks (SKIP LOCKED where
    the database has it; SQLite runs one writer at a time)."""
    if worker_sql.enabled():
        return worker_sql.task_claim_held(run_id)  # the same, in one statement
    with transaction.atomic():
        task = held_tasks(run_id).first()
        return None if task is None else _claim_locked(task)


def _claim_locked(task: TaskInstance) -> TaskInstance | None:
    """QUEUED -> RUNNING for the locked row's current attempt, leased to this worker."""
    now = timezone.now()
    moved = task_transition(
        task,
        TaskState.RUNNING,
        transition_id=f"claim:{task.id}:{task.attempt}",
        worker=f"{socket.gethostname()}:{os.getpid()}",
        lease_expires_at=now + timedelta(seconds=_engine("LEASE_SECONDS")),
        started_at=now,
    )
    return task if moved else None


@dataclass
class Outcome:
    status: JobStatus
    outputs: list[tuple[str, str, int, str]] = field(default_factory=list)  # name, digest, size, media type
    handle: JobHandle | None = None  # the backend's job, once submitted
    submitted_at: str = ""
    # The attempt did not run and failed nothing: it waits (credentials unavailable) with this reason.
    wait_reason: str = ""
    # A remote job was submitted and runs without this worker ("submitted"), or the attempt went stale.
    detached: str = ""


class _Heartbeat:
    """Renews the lease while the task runs; notices a cancellation (the row left RUNNING)."""

    def __init__(self, task: TaskInstance, attempt: int):
        self.task_id, self.attempt = task.id, attempt
        self.handle: JobHandle | None = None
        self.stop = False
        self._recorded = False

    def beat(self) -> None:
        fields = {"lease_expires_at": timezone.now() + timedelta(seconds=_engine("LEASE_SECONDS"))}
        if self.handle is not None and not self._recorded:
            fields["external"] = {"backend": self.handle.backend, "external_id": self.handle.external_id, "data": dict(self.handle.data)}
        updated = TaskInstance.objects.filter(
            id=self.task_id, state=TaskState.RUNNING, attempt=self.attempt
        ).update(**fields)
        self._recorded = self._recorded or "external" in fields
        if not updated:
            self.stop = True

    def should_cancel(self) -> bool:
        return self.stop


def _stage_inputs(task: TaskInstance, spec: TaskSpec, staging: Path) -> list[StagedInput]:
    """Fetch each declared input from the store (digest checked) into a staging directory."""
    staged = []
    store = get_store()
    for index, item in enumerate(spec.inputs):
        artefact = (
            Artefact.objects.filter(run_id=task.run_id, task__key=item.ref.task, name=item.ref.name)
            .order_by("-attempt")
            .first()
        )
        if artefact is None:
            raise ExecutorError("input_missing", f"input {item.ref} was not produced")
        target = staging / f"{index}"
        store.copy_to(tenant_key(task.tenant_id), artefact.digest, target)
        staged.append(StagedInput(path=item.path, source=str(target)))
    return staged


def _store_outputs(task: TaskInstance, collected: Collected, *, declared: bool) -> list[tuple[str, str, int, str]]:
    store = get_store()
    tenant = tenant_key(task.tenant_id)
    results = []
    for name, path, media_type in [
        ("stdout", collected.stdout_path, "text/plain"),
        ("stderr", collected.stderr_path, "text/plain"),
    ] + ([(o.name, o.path, o.media_type) for o in collected.outputs] if declared else []):
        if not path or not os.path.exists(path):
            continue
        if name in ("stdout", "stderr") and os.path.getsize(path) == 0:
            continue  # an empty log is not kept
        blob = store.put_file(tenant, path)
        results.append((name, blob.digest, blob.size, media_type))
    return results


def task_workdir(task: TaskInstance, attempt: int) -> Path:
    return Path(_engine("WORKDIR_ROOT")) / str(task.run_id) / f"{task.key}.{attempt}"


def task_job_request(task: TaskInstance, spec: TaskSpec, attempt: int, *, inputs=(), workdir: str | None = None
                     ) -> JobRequest:
    """What the backend runs for one attempt (the same for submission, adoption and collection)."""
    return JobRequest(
        job_key=f"{task.run_id}/{task.key}/{attempt}",
        argv=tuple(spec.run.argv("{script}")),
        env=dict(spec.env),
        workdir=workdir or str(task_workdir(task, attempt)),
        timeout=spec.timeout,
        inputs=tuple(inputs),
        outputs=tuple(OutputRequest(name=o.name, path=o.path, media_type=o.media_type) for o in spec.outputs),
        script=spec.run.script if spec.run else None,
        resources=dict(spec.resources),
        container=spec.container,
        labels={"run_id": str(task.run_id), "task_id": task.key, "attempt": str(attempt)},
    )


def task_run(task: TaskInstance, attempt: int, *, removals: list[Path] | None = None) -> Outcome:
    """Run a claimed attempt on its backend and keep what it produced; or, on a remote backend,
    submit it and return at once (`Outcome.detached`): the job runs without holding this worker.
    The attempt's work directory is removed before it returns, or with `removals`, appended to it
    for the caller to remove."""
    spec = TaskSpec.from_dict(task.spec)
    workdir = task_workdir(task, attempt)
    staging = workdir.parent / f".{task.key}.{attempt}.inputs"
    heartbeat = _Heartbeat(task, attempt)
    detached = False
    try:
        # Placement again at dispatch: the tenant's backend must still exist, be enabled and be cleared
        # for the task's label (its ceiling may have been lowered since the run was submitted). The
        # claim statement read which configuration the tenant has now (worker_sql); the ORM claim did not.
        backend = placement_check(task, configuration=getattr(task, "claimed_configuration", UNREAD))
        try:
            # The tenant's backend as configured now, with its credentials read now (never stored).
            executor = remote.build_executor(kind=backend.kind, config=backend.config, tenant_id=task.tenant_id,
                                             backend=backend.name, task=task)
        except CredentialsError as exc:
            if exc.retryable:  # the store did not answer: nothing runs, the attempt waits
                return Outcome(JobStatus(JobState.UNKNOWN, None, str(exc)),
                               wait_reason=f"waiting_for_credentials: {exc}"[:500])
            raise
        # The run's directory, as before; a staging directory only for a task with inputs.
        (staging if spec.inputs else staging.parent).mkdir(parents=True, exist_ok=True)
        inputs = _stage_inputs(task, spec, staging)
        request = task_job_request(task, spec, attempt, inputs=inputs, workdir=str(workdir))
        if not executor.synchronous:
            result = remote.remote_submit(task, attempt, executor, backend, request)
            detached = result == "submitted"
            return Outcome(JobStatus(JobState.PENDING), detached=result)
        handle = executor.submit(request)
        submitted_at = timezone.now().isoformat()
        heartbeat.handle = handle
        status = executor.wait(
            handle,
            timeout=spec.timeout,
            should_cancel=heartbeat.should_cancel,
            heartbeat=heartbeat.beat,
            interval=_engine("HEARTBEAT_SECONDS"),
        )
        if status.state == JobState.CANCELLED and heartbeat.stop:
            audit_append(
                event="executor.cancelled", tenant_id=task.tenant_id, object_type="task", object_id=str(task.id),
                label=task.classification,
                data={"run": str(task.run_id), "task": task.key, "attempt": attempt, "backend": handle.backend,
                      "external_id": handle.external_id, "reason": status.reason[:300]},
            )
        collected = executor.collect(handle, request)
        ok = status.state == JobState.SUCCEEDED
        if ok and collected.missing:
            status = JobStatus(JobState.FAILED, status.exit_code, "missing outputs: " + ", ".join(collected.missing))
            ok = False
        return Outcome(status, _store_outputs(task, collected, declared=ok), handle, submitted_at)
    except (ExecutorError, ArtefactError) as exc:
        return Outcome(JobStatus(JobState.FAILED, None, f"{exc.code}: {exc}"))
    finally:
        done = [] if _engine("KEEP_WORKDIRS") or detached else [workdir]  # a remote job's is removed once collected
        if spec.inputs:
            done.append(staging)
        if removals is None:
            for path in done:
                shutil.rmtree(path, ignore_errors=True)
        else:
            removals.extend(done)


def task_finish(task_id: int, attempt: int, outcome: Outcome) -> str:
    """Record the end of an attempt: artefacts, the new state, and what follows from it."""
    succeeded = not outcome.wait_reason and outcome.status.state == JobState.SUCCEEDED and worker_sql.enabled()
    if succeeded and not transaction.get_connection().in_atomic_block:
        # Most successful ends are one statement committed by itself (one round trip, no BEGIN or
        # COMMIT of their own); it changes nothing and says so when a gate opens or the run may
        # close, which the transaction below does with it (gateway/worker_sql.py).
        result = worker_sql.task_finish_succeeded(task_id, attempt, outcome, alone=True)
        if result is not None:
            return result
    with transaction.atomic():
        if outcome.wait_reason:
            return _task_wait(task_id, attempt, outcome.wait_reason)
        if succeeded:
            return worker_sql.task_finish_succeeded(task_id, attempt, outcome)  # the same, in one statement
        task = TaskInstance.objects.select_for_update().defer("spec").filter(id=task_id).first()
        if task is None or task.state != TaskState.RUNNING or task.attempt != attempt:
            return "superseded"  # cancelled or recovered meanwhile: this attempt's result is dropped
        Artefact.objects.bulk_create(
            [
                Artefact(
                    tenant_id=task.tenant_id,
                    run_id=task.run_id,
                    task=task,
                    attempt=attempt,
                    name=name,
                    digest=digest,
                    size=size,
                    media_type=media_type,
                    classification=task.classification,
                )
                for name, digest, size, media_type in outcome.outputs
            ]
        )
        if outcome.handle is not None:
            # Recorded with the attempt's end: a synchronous backend submits and finishes in one
            # worker call, and the entry keeps the submission's own time.
            audit_append(
                event="executor.submitted", tenant_id=task.tenant_id, object_type="task", object_id=str(task.id),
                label=task.classification,
                data={"run": str(task.run_id), "task": task.key, "attempt": attempt, "backend": outcome.handle.backend,
                      "external_id": outcome.handle.external_id, "submitted_at": outcome.submitted_at,
                      "worker": task.worker},
            )
        status = outcome.status
        if status.state == JobState.SUCCEEDED:
            task_transition(
                task, TaskState.SUCCEEDED, transition_id=f"finish:{task.id}:{attempt}", exit_code=status.exit_code
            )
            after_terminal(task)
            return "succeeded"
        spec = TaskSpec.from_dict(task.spec)
        failures = task.failures + 1
        if failures <= spec.retries.count:
            delay = spec.retries.delay(failures)
            task_transition(
                task,
                TaskState.RETRY_WAIT,
                transition_id=f"finish:{task.id}:{attempt}",
                reason=status.reason,
                failures=failures,
                exit_code=status.exit_code,
                not_before=timezone.now() + timedelta(seconds=delay),
            )
            retry_on_commit(task.id, attempt, delay)
            return "retry"
        task_transition(
            task,
            TaskState.FAILED,
            transition_id=f"finish:{task.id}:{attempt}",
            reason=status.reason,
            failures=failures,
            exit_code=status.exit_code,
        )
        after_terminal(task)
        return "failed"


def _task_wait(task_id: int, attempt: int, reason: str) -> str:
    """The attempt could not start for a reason that waiting cures (the credential store did not
    answer): RETRY_WAIT with that reason, no failure counted, the next attempt after a back-off
    that doubles with each wait (CREDENTIALS_RETRY_SECONDS up to CREDENTIALS_RETRY_MAX_SECONDS)."""
    task = TaskInstance.objects.select_for_update().defer("spec").filter(id=task_id).first()
    if task is None or task.state != TaskState.RUNNING or task.attempt != attempt:
        return "superseded"
    kind = reason.split(":", 1)[0]
    waits = TaskTransition.objects.filter(task_id=task.id, to_state=TaskState.RETRY_WAIT,
                                          reason__startswith=kind + ":").count()
    delay = min(float(settings.GATEHOUSE_ENGINE.get("CREDENTIALS_RETRY_MAX_SECONDS", 300.0)),
                float(settings.GATEHOUSE_ENGINE.get("CREDENTIALS_RETRY_SECONDS", 5.0)) * 2 ** min(waits, 16))
    task_transition(task, TaskState.RETRY_WAIT, transition_id=f"finish:{task.id}:{attempt}", reason=reason,
                    not_before=timezone.now() + timedelta(seconds=delay), lease_expires_at=None)
    retry_on_commit(task.id, attempt, delay)
    return kind


def task_requeue(task_id: int, attempt: int) -> bool:
    """Start the next attempt of a task waiting for its retry (from the countdown message or
    the reconciler; whichever comes second finds the move already made)."""
    with transaction.atomic():
        task = TaskInstance.objects.select_for_update().filter(id=task_id).first()
        if task is None or task.state != TaskState.RETRY_WAIT or task.attempt != attempt:
            return False
        if task_transition(
            task, TaskState.QUEUED, transition_id=f"requeue:{task.id}:{attempt}", attempt=attempt + 1, not_before=None
        ):
            dispatch_on_commit([(task.id, task.attempt)])
            return True
    return False


_remover: tuple[int, ThreadPoolExecutor | None] = (0, None)
_remover_lock = threading.Lock()


def _remove_meanwhile(paths: list[Path]) -> Future | None:
    """Remove `paths` (an attempt's work directories) in a thread of this process, while this one
    records the attempt's end: the removal's file-system waits overlap the finish's round trip to
    the database instead of adding to it. The caller waits for the result before it returns, so a
    directory is gone when its message is acknowledged, as before."""
    global _remover
    if not paths:
        return None
    with _remover_lock:
        pid, pool = _remover
        if pool is None or pid != os.getpid():  # a forked pool child starts its own
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatehouse-workdirs")
            _remover = (os.getpid(), pool)
    return pool.submit(lambda: [shutil.rmtree(path, ignore_errors=True) for path in paths])


#: Messages a worker sends for a run's held tasks when its drain's time is up: its own place in the
#: queue, handed on (each message a real task, none a duplicate).
HAND_ON = 1


def task_execute(task_id: int, attempt: int) -> str:
    """The whole life of one dispatch message: its attempt; then, while DRAIN_SECONDS have not
    passed, the run's held tasks one after another (gateway/dispatch.py, the window: each claimed
    like a message's, so exactly once); when the time is up with tasks still held, HAND_ON of them
    gets a message and waits its turn in the queue like any other (other runs' messages come first).
    The claim of a message's attempt also sent one held task a message in its place (worker_sql)."""
    task = task_claim(task_id, attempt)
    if task is None:
        return "stale"  # a redelivered message: the attempt was claimed (and its job, if any, recorded) before
    result = _execute_claimed(task)
    if not dispatch_window():
        return result  # every task gets a message; tasks held before the window was closed: the reconciler's
    run_id = task.run_id
    deadline = time.monotonic() + float(_engine("DRAIN_SECONDS"))
    while True:
        if time.monotonic() >= deadline:
            dispatch_held(run_id, HAND_ON)
            break
        task = task_claim_held(run_id)
        if task is None:
            break
        _execute_claimed(task)
    return result


def _execute_claimed(task: TaskInstance) -> str:
    attempt = task.attempt
    removals: list[Path] = []
    outcome = task_run(task, attempt, removals=removals)
    removing = _remove_meanwhile(removals)
    try:
        if outcome.detached:
            return outcome.detached
        return task_finish(task.id, attempt, outcome)
    finally:
        if removing is not None:
            removing.result()
