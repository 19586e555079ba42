"""Remote jobs (``slurm``, ``batch``) without a worker slot.

A backend whose executor is not ``synchronous`` runs its jobs elsewhere, so no worker waits for
them. The life of such an attempt, each step crash-safe:

1. **Submit** (`remote_submit`, in the worker that claimed the attempt): the row is marked
   ``external.phase = "submitting"`` (committed) before anything leaves, then the job is submitted,
   then ONE transaction stores the handle in ``TaskInstance.external`` (phase ``submitted``) with
   the ``executor.submitted`` entry, and the worker returns: its pool slot is free. A worker that
   dies between the submission and that commit leaves ``submitting`` and a lease; when the lease
   expires the reconciler **adopts** the job by its name (``executor.lookup(request)``), never
   submitting again, and starts a new attempt only when the backend has no such job.
2. **Poll** (`remote_poll`, a Celery beat task or ``manage.py remote_poll --loop``): for every open
   remote task, grouped by the executor's ``poll_group`` (a cluster, a queue), ONE ``poll_many``
   per group and round, under a PostgreSQL advisory lock per group (``pg_try_advisory_lock``: of
   several pollers one polls a group, the others skip it). It renews the leases of the jobs still
   running and, for each finished job, moves the row to ``collecting`` and sends a collect message
   after commit. A job UNKNOWN for longer than ``REMOTE_UNKNOWN_SECONDS`` is confirmed with
   ``reattach`` and, still unknown, is LOST.
3. **Collect** (`remote_collect`, a Celery task): outputs collected and stored, then the engine's
   ``task_finish`` with the same ``finish:<task>:<attempt>`` transition id (a repeated collect is a
   no-op). COMPLETED -> success; FAILED, NODE_FAIL, OUT_OF_MEMORY, TIMEOUT, LOST -> a failure with
   its reason (retries per the task's spec); preempted -> a new attempt that counts no failure;
   cancelled outside Gatehouse -> CANCELLED with the reason.
4. **Dead poller**: the reconciler sees an expired lease on a task with a remote handle and polls
   (reattaches) those jobs itself, or sends their lost collect message again; it never starts a new
   attempt for a job that may still run.
5. **Cancel**: moving a task with a remote job to CANCELLED (engine.task_transition) sends a cancel
   message after commit; `remote_cancel` calls ``executor.cancel(handle)`` and audits
   ``executor.cancelled``. The poller re-sends it for a cancelled task whose job was not stopped.

The executor is built from the tenant's backend (its kind and config, stored with the handle so
a later change of configuration does not orphan a running job) and the tenant's credentials for
that backend, read at each use through ``credentials_get`` (audited) and never stored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.services import audit_append
from executors.base import ExecutorError, JobHandle, JobState, JobStatus
from executors.tracker import NOT_QUERIED

from .choices import TaskState
from .dispatch import collect_on_commit, dispatch_on_commit
from .models import TaskInstance

log = logging.getLogger(__name__)

SUBMITTING, SUBMITTED, COLLECTING, CANCELLED = "submitting", "submitted", "collecting", "cancelled"
#: Phases of a job that may be running on its backend.
LIVE_PHASES = (SUBMITTING, SUBMITTED, COLLECTING)
REMOTE_KINDS = frozenset({"slurm", "batch"})
CANCEL_SWEEP_LIMIT = 100


def _engine(name: str, default=None):
    return settings.GATEHOUSE_ENGINE.get(name, default)


def remote_lease() -> timedelta:
    """How long a poller's renewal holds: at least three poll rounds."""
    return timedelta(seconds=max(float(_engine("LEASE_SECONDS")), 3 * float(_engine("REMOTE_POLL_SECONDS", 5.0) or 0)))


def is_remote(external) -> bool:
    return isinstance(external, dict) and "phase" in external


def handle_of(external: dict) -> JobHandle:
    return JobHandle(external["backend"], external["external_id"], external.get("data") or {})


def status_to_dict(status: JobStatus) -> dict:
    return {"state": status.state.value, "exit_code": status.exit_code, "reason": status.reason,
            "interrupted": status.interrupted}


def status_from_dict(raw: dict) -> JobStatus:
    return JobStatus(JobState(raw["state"]), raw.get("exit_code"), raw.get("reason", ""),
                     interrupted=bool(raw.get("interrupted")))


# --------------------------------------------------------------------------- executors


def backend_credentials(*, tenant_id: int, backend: str, kind: str, task=None) -> dict | None:
    """The tenant's credentials for a backend, read now (audited, never stored), or None when the
    backend takes none: `local`, and a `slurm` backend for which none are set (Slurm's own
    authentication, munge). A `batch` backend always needs them: the worker's own AWS identity is
    never used for a tenant. Raises CredentialsUnavailable (the store did not answer: wait),
    CredentialsMissing or CredentialsRefused."""
    if kind not in REMOTE_KINDS:
        return None
    from executors.models import BackendCredentialSet

    if kind != "batch" and not BackendCredentialSet.objects.filter(tenant_id=tenant_id, backend=backend).exists():
        return None
    from executors.credentials import credentials_get

    from .models import Tenant

    return credentials_get(tenant=Tenant.objects.get(id=tenant_id), backend=backend, task=task)


def build_executor(*, kind: str, config: dict, tenant_id: int, backend: str, task=None):
    """The executor of a tenant's backend (registry instance per kind and config, credentials
    included in memory only). Raises CredentialsError or ExecutorError."""
    from executors.registry import get_executor

    from .storage import tenant_key

    config = dict(config or {})
    if kind == "batch":
        config.setdefault("tenant", tenant_key(tenant_id))
    credentials = backend_credentials(tenant_id=tenant_id, backend=backend, kind=kind, task=task)
    if credentials is not None:
        config["credentials"] = credentials
    try:
        return get_executor(kind, **config)
    except TypeError as exc:  # a key the executor does not take (names only, never values)
        raise ExecutorError("bad_config", f"backend {backend!r} ({kind}): {exc}") from exc


def _executor_of(task, external: dict):
    return build_executor(kind=external["kind"], config=external.get("config") or {}, tenant_id=task.tenant_id,
                          backend=external["backend_name"], task=task)


def _request_of(task, external: dict):
    from .spec import TaskSpec
    from .worker import task_job_request

    return task_job_request(task, TaskSpec.from_dict(task.spec), external["attempt"], workdir=external["workdir"])


# --------------------------------------------------------------------------- submit and adopt


def _crash_after_submit() -> bool:
    """Test profile only: the worker exits between the submission and its commit, as a crash there
    would (tests/integration/test_remote_slurm.py checks that recovery adopts the job)."""
    return settings.PROFILE == "test" and os.environ.get("GATEHOUSE_TEST_CRASH_AFTER_SUBMIT") == "1"


def _record_submitted(task: TaskInstance, handle: JobHandle, base: dict, submitted_at, *, adopted: bool) -> None:
    """The handle and its `executor.submitted` entry, in the caller's transaction (row locked)."""
    task.external = {**base, "phase": SUBMITTED, **handle.to_dict(), "submitted_at": submitted_at.isoformat()}
    task.lease_expires_at = timezone.now() + remote_lease()
    task.save(update_fields=["external", "lease_expires_at"])
    data = {"run": str(task.run_id), "task": task.key, "attempt": base["attempt"], "backend": handle.backend,
            "external_id": handle.external_id, "submitted_at": submitted_at.isoformat(), "worker": task.worker}
    if adopted:
        data["adopted"] = True
    audit_append(event="executor.submitted", tenant_id=task.tenant_id, object_type="task", object_id=str(task.id),
                 label=task.classification, data=data)


def remote_submit(task: TaskInstance, attempt: int, executor, backend, request) -> str:
    """Submit a claimed attempt and record its handle; returns "submitted" (the job runs, nothing
    waits for it) or "stale" (the attempt was cancelled or superseded: the job, if any, is
    stopped). ExecutorError from the submission propagates: the caller records the failure.

    The first attempt of a fan-out instance takes its queued siblings along as one job array
    (`_array_submit`)."""
    if _array_candidate(task, attempt, executor):
        return _array_submit(task, attempt, executor, backend, request)
    base = {"phase": SUBMITTING, "attempt": attempt, "kind": backend.kind, "backend_name": backend.name,
            "config": dict(backend.config), "workdir": request.workdir, "job_key": request.job_key}
    grace = float(_engine("LEASE_SECONDS")) + float(_engine("REMOTE_SUBMIT_GRACE_SECONDS", 60.0))
    marked = TaskInstance.objects.filter(id=task.id, state=TaskState.RUNNING, attempt=attempt).update(
        external=base, lease_expires_at=timezone.now() + timedelta(seconds=grace))
    if not marked:
        return "stale"
    handle = executor.submit(request)
    submitted_at = timezone.now()
    if _crash_after_submit():
        os._exit(137)
    with transaction.atomic():
        row = TaskInstance.objects.select_for_update().filter(id=task.id).first()
        external = row.external if row is not None else None
        if row is not None and row.state == TaskState.RUNNING and row.attempt == attempt and is_remote(external):
            if external.get("phase") == SUBMITTING and external.get("attempt") == attempt:
                _record_submitted(row, handle, base, submitted_at, adopted=False)
                return "submitted"
            if external.get("external_id") == handle.external_id:
                return "submitted"  # adopted meanwhile by recovery
    _stop(task, attempt, executor, handle, "the attempt was cancelled or superseded during its submission")
    return "stale"


# --------------------------------------------------------------------------- job arrays
#
# The instances of a foreach/matrix task (gateway/spec: keys "<group>[<i>]") are dispatched as
# ordinary tasks, one message each. The worker that claims the first attempt of one of them on a
# backend that submits arrays (`executor.submit_array`) also claims, in ONE transaction under row
# locks (SKIP LOCKED: a sibling another worker is claiming stays that worker's), every sibling
# still QUEUED at its first attempt for the same backend: each moves QUEUED -> RUNNING with the
# claim's own transition id (`claim:<task>:<attempt>`), so its own message later finds it taken
# and does nothing. After commit every member is marked `submitting` with the array's member
# list, the array is submitted (one sbatch / one SubmitJob, one rate-limit token), and one
# transaction records each member's own element handle and `executor.submitted` entry. From then
# on each member is an ordinary remote job: polled, collected, cancelled and retried alone (a
# retry is a single job). A worker lost during the submission leaves `submitting` members; the
# reconciler adopts each by looking the array up by name (`executor.lookup_array`), never
# submitting again.


def _array_candidate(task: TaskInstance, attempt: int, executor) -> bool:
    fanout = (task.spec or {}).get("fanout")
    return (attempt == 1 and isinstance(fanout, dict) and int(fanout.get("count", 1)) > 1
            and callable(getattr(executor, "submit_array", None)))


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_siblings(task: TaskInstance, backend, configuration) -> list[TaskInstance]:
    """The leader's queued siblings for the same backend, claimed (QUEUED -> RUNNING at attempt 1)
    in the caller's transaction; a sibling that fails its placement check stays queued (its own
    message meets the refusal, recorded as for any task)."""
    from .engine import task_transition
    from .placement import placement_check

    group = task.spec["fanout"]["group"]
    rows = (TaskInstance.objects.select_for_update(skip_locked=True)
            .filter(run_id=task.run_id, key__startswith=f"{group}[", state=TaskState.QUEUED, attempt=1,
                    backend=task.backend)
            .exclude(id=task.id).order_by("id"))
    now = timezone.now()
    claimed = []
    for row in rows:
        try:
            placed = placement_check(row, configuration=configuration)
        except ExecutorError:
            continue
        if (placed.name, placed.kind, dict(placed.config)) != (backend.name, backend.kind, dict(backend.config)):
            continue
        if task_transition(row, TaskState.RUNNING, transition_id=f"claim:{row.id}:1", worker=_worker_name(),
                           lease_expires_at=now + timedelta(seconds=float(_engine("LEASE_SECONDS"))),
                           started_at=now):
            claimed.append(row)
    return claimed


def _member_request(row: TaskInstance, staged: list):
    """The request of a claimed sibling, its inputs staged as the worker stages a task's."""
    from .spec import TaskSpec
    from .worker import _stage_inputs, task_job_request, task_workdir

    spec = TaskSpec.from_dict(row.spec)
    workdir = task_workdir(row, 1)
    staging = workdir.parent / f".{row.key}.1.inputs"
    (staging if spec.inputs else staging.parent).mkdir(parents=True, exist_ok=True)
    if spec.inputs:
        staged.append(staging)
    inputs = _stage_inputs(row, spec, staging)
    return task_job_request(row, spec, 1, inputs=inputs, workdir=str(workdir))


def _fail_members(rows: list[TaskInstance], reason: str) -> None:
    """Siblings claimed for an array that will not run in it: each attempt ends as a failed
    submission would (its retries apply)."""
    from .worker import Outcome, task_finish

    for row in rows:
        TaskInstance.objects.filter(id=row.id, state=TaskState.RUNNING, attempt=1).update(external=None)
        task_finish(row.id, 1, Outcome(JobStatus(JobState.FAILED, None, reason[:500])))


def _array_submit(task: TaskInstance, attempt: int, executor, backend, request) -> str:
    from .artefacts import ArtefactError
    from .placement import UNREAD

    grace = float(_engine("LEASE_SECONDS")) + float(_engine("REMOTE_SUBMIT_GRACE_SECONDS", 60.0))
    with transaction.atomic():
        leader = TaskInstance.objects.select_for_update().filter(
            id=task.id, state=TaskState.RUNNING, attempt=attempt).first()
        if leader is None:
            return "stale"
        siblings = _claim_siblings(leader, backend, getattr(task, "claimed_configuration", UNREAD))
    # Outside the transaction: inputs (digest-checked reads of the store) into each work dir.
    staged: list = []
    members: list[tuple[TaskInstance, object]] = [(task, request)]
    try:
        for row in siblings:
            try:
                members.append((row, _member_request(row, staged)))
            except (ExecutorError, ArtefactError) as exc:  # as the worker records a failed staging
                _fail_members([row], f"{exc.code}: {exc}")
            except OSError as exc:
                _fail_members([row], f"staging_failed: {exc}")
        members.sort(key=lambda member: member[0].spec["fanout"]["index"])
        with transaction.atomic():
            # Members cancelled since their claim drop out; the rest are marked `submitting`, each
            # with the array's member list (what adoption needs to find the array by its name).
            alive = {row.id for row in TaskInstance.objects.select_for_update().filter(
                id__in=[row.id for row, _ in members], state=TaskState.RUNNING, attempt=1).order_by("id")}
            members = [member for member in members if member[0].id in alive]
            ids = [row.id for row, _ in members]
            bases = {}
            for position, (row, req) in enumerate(members):
                bases[row.id] = {"phase": SUBMITTING, "attempt": 1, "kind": backend.kind,
                                 "backend_name": backend.name, "config": dict(backend.config),
                                 "workdir": req.workdir, "job_key": req.job_key,
                                 "array": {"members": ids, "index": position}}
                TaskInstance.objects.filter(id=row.id).update(
                    external=bases[row.id], lease_expires_at=timezone.now() + timedelta(seconds=grace))
        if task.id not in alive:
            _release(task, [row for row, _ in members if row.id != task.id])
            return "stale"
        try:
            handles = executor.submit_array([req for _, req in members])
        except ExecutorError as exc:
            _fail_members([row for row, _ in members if row.id != task.id], f"{exc.code}: {exc}")
            raise
    finally:
        for path in staged:
            shutil.rmtree(path, ignore_errors=True)
    submitted_at = timezone.now()
    if _crash_after_submit():
        os._exit(137)
    stale = []
    with transaction.atomic():
        rows = {row.id: row for row in TaskInstance.objects.select_for_update().filter(id__in=ids).order_by("id")}
        for (member, _), handle in zip(members, handles):
            row = rows.get(member.id)
            external = row.external if row is not None else None
            if (row is not None and row.state == TaskState.RUNNING and row.attempt == 1 and is_remote(external)
                    and external.get("phase") == SUBMITTING and external.get("array", {}).get("members") == ids):
                _record_submitted(row, handle, bases[member.id], submitted_at, adopted=False)
            elif not (is_remote(external) and external.get("external_id") == handle.external_id):
                stale.append((member, handle))  # cancelled meanwhile (adopted meanwhile: nothing to do)
    for member, handle in stale:
        _stop(member, 1, executor, handle, "the attempt was cancelled or superseded during its submission")
    return "stale" if any(member.id == task.id for member, _ in stale) else "submitted"


def _release(task: TaskInstance, rows: list[TaskInstance]) -> None:
    """The leader's attempt went stale before anything was submitted: the siblings it claimed are
    handed back as new attempts (QUEUED, no failure counted, dispatched after commit)."""
    from .engine import task_transition

    with transaction.atomic():
        for row in TaskInstance.objects.select_for_update().filter(
                id__in=[r.id for r in rows], state=TaskState.RUNNING, attempt=1).order_by("id"):
            if task_transition(row, TaskState.QUEUED, transition_id=f"release:{row.id}:1",
                               reason="released: the array it was claimed for was not submitted",
                               attempt=2, lease_expires_at=None, worker="", external=None):
                dispatch_on_commit([(row.id, row.attempt)])


def _adopt_array(task: TaskInstance, executor, external: dict):
    """The element handle of a submitting array member, looked up by the array's name (built from
    every member's request, in the submission's order), or None when the backend has no such array."""
    from .spec import TaskSpec
    from .worker import task_job_request, task_workdir

    members = {row.id: row for row in TaskInstance.objects.filter(id__in=external["array"]["members"])}
    requests = []
    for member_id in external["array"]["members"]:
        row = members.get(member_id)
        if row is None:
            return None
        # Every member was at its first attempt; its request is rebuilt as it was submitted.
        stored = row.external if isinstance(row.external, dict) and row.external.get("attempt") == 1 else {}
        requests.append(task_job_request(row, TaskSpec.from_dict(row.spec), 1,
                                         workdir=stored.get("workdir") or str(task_workdir(row, 1))))
    lookup = getattr(executor, "lookup_array", None)
    handles = lookup(requests) if lookup is not None else None
    return None if handles is None else handles[external["array"]["index"]]


def remote_adopt(task: TaskInstance) -> str:
    """Recovery of an attempt whose worker died during its submission (row locked by the caller,
    phase `submitting`, lease expired): the job found by name is adopted ("adopted"); "absent" when
    the backend has no such job (nothing runs: a new attempt may start); "unavailable" when the
    backend or the credentials cannot be asked now (the lease is extended; asked again later)."""
    external = task.external
    try:
        executor = _executor_of(task, external)
        if isinstance(external.get("array"), dict):
            handle = _adopt_array(task, executor, external)
        else:
            handle = executor.lookup(_request_of(task, external))
    except ExecutorError as exc:
        log.warning("cannot look up the job of task %s yet: %s", task.id, exc)
        task.lease_expires_at = timezone.now() + remote_lease()
        task.save(update_fields=["lease_expires_at"])
        return "unavailable"
    if handle is None:
        return "absent"
    _record_submitted(task, handle, external, timezone.now(), adopted=True)
    return "adopted"


# --------------------------------------------------------------------------- poll


@contextmanager
def _leader(group: str):
    """Whether this process polls `group` now: a PostgreSQL session advisory lock, tried, never
    waited for (another poller holds it: this one skips the group). Other databases have one
    process (the embedded default), so it always leads."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = int.from_bytes(hashlib.sha256(f"gatehouse-remote-poll|{group}".encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        got = cursor.fetchone()[0]
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _send_collect(task_id: int, attempt: int, external: dict, status: JobStatus, phases=(SUBMITTED,)) -> bool:
    now = timezone.now()
    with transaction.atomic():
        moved = TaskInstance.objects.filter(
            id=task_id, state=TaskState.RUNNING, attempt=attempt, external__phase__in=list(phases),
        ).update(external={**external, "phase": COLLECTING, "status": status_to_dict(status),
                           "remote_state": status.state.value, "collect_sent_at": now.isoformat()},
                 lease_expires_at=now + remote_lease())
        if moved:
            collect_on_commit(task_id, attempt, status_to_dict(status))
    return bool(moved)


def _statuses(executor, handles: list[JobHandle]) -> dict[str, JobStatus]:
    """One poll for the group; jobs this process never asked about yet (a fresh poller, a
    reattachment) are answered by one forced query (`reattach`), which covers them all."""
    statuses = executor.poll_many(handles)
    fresh = [h for h in handles if statuses[h.external_id].state == JobState.UNKNOWN
             and statuses[h.external_id].reason == NOT_QUERIED]
    if fresh:
        try:
            executor.reattach(fresh[0])
        except ExecutorError as exc:
            log.warning("reattach failed: %s", exc)
        statuses.update(executor.poll_many(fresh))
    return statuses


def _poll_group(executor, items: list, counts: Counter) -> None:
    now = timezone.now()
    bound = float(_engine("REMOTE_UNKNOWN_SECONDS", 600.0))
    handles = {task_id: handle_of(external) for task_id, _, _, external in items}
    try:
        statuses = _statuses(executor, list(handles.values()))
    except ExecutorError as exc:
        statuses = {h.external_id: JobStatus(JobState.UNKNOWN, None, f"{exc.code}: {exc}") for h in handles.values()}
    renew = []
    for task_id, _, attempt, external in items:
        handle = handles[task_id]
        status = statuses.get(handle.external_id) or JobStatus(JobState.UNKNOWN, None, "no answer")
        update = {}
        if status.state == JobState.UNKNOWN and status.reason != NOT_QUERIED:
            since = external.get("unknown_since")
            if since is None:
                update["unknown_since"] = now.isoformat()
            elif (now - datetime.fromisoformat(since)).total_seconds() > bound:
                try:
                    status = executor.reattach(handle)  # confirm: accounting, scontrol, DescribeJobs
                except ExecutorError as exc:
                    status = JobStatus(JobState.UNKNOWN, None, f"{exc.code}: {exc}")
                if not status.finished:
                    status = JobStatus(JobState.LOST, None, f"the backend could not say what became of job "
                                                            f"{handle.external_id} for {bound:g}s ({status.reason})")
        elif status.state != JobState.UNKNOWN and "unknown_since" in external:
            update["unknown_since"] = None
        if status.finished:
            if _send_collect(task_id, attempt, {**external, **update}, status):
                counts["finished"] += 1
            try:
                executor.tracker.untrack([handle.external_id])
            except AttributeError:
                pass
            continue
        renew.append(task_id)
        if status.state.value != external.get("remote_state"):
            update["remote_state"] = status.state.value
            update["remote_reason"] = status.reason[:300]
        if update:
            new = {k: v for k, v in {**external, **update}.items() if v is not None}
            TaskInstance.objects.filter(id=task_id, state=TaskState.RUNNING, attempt=attempt,
                                        external__phase=SUBMITTED).update(external=new)
    counts["running"] += TaskInstance.objects.filter(id__in=renew, state=TaskState.RUNNING).update(
        lease_expires_at=now + remote_lease())


_executors: dict[str, tuple[float, object]] = {}


def _poll_executor(task_stub, external: dict):
    """The executor to poll with, kept for the credentials' cache time so that a poll round does
    not read (and audit) the credentials of every backend every round."""
    key = json.dumps([task_stub.tenant_id, external["backend_name"], external["kind"], external.get("config")],
                     sort_keys=True, default=str)
    ttl = float(settings.GATEHOUSE_CREDENTIALS.get("CACHE_SECONDS", 0))
    cached = _executors.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    executor = _executor_of(task_stub, external)
    if ttl > 0:
        _executors[key] = (time.monotonic() + ttl, executor)
    return executor


class _Stub:
    """What building an executor needs of a task (its tenant; its run and key for the audit)."""

    def __init__(self, task_id: int, tenant_id: int, run_id, key: str):
        self.id, self.tenant_id, self.run_id, self.key = task_id, tenant_id, run_id, key


def remote_poll(*, task_ids=None, expired_before=None) -> dict[str, int]:
    """One poll round over every open remote job (or `task_ids`, or those whose lease expired
    before `expired_before`: the reconciler's reattachment). Returns counts."""
    counts: Counter = Counter()
    rows = TaskInstance.objects.filter(state=TaskState.RUNNING, external__phase__in=[SUBMITTED, COLLECTING])
    if task_ids is not None:
        rows = rows.filter(id__in=list(task_ids))
    if expired_before is not None:
        rows = rows.filter(lease_expires_at__lt=expired_before)
    groups: dict[str, list] = defaultdict(list)
    executors: dict[str, object] = {}
    now = timezone.now()
    for task_id, tenant_id, run_id, key, attempt, external in rows.values_list(
            "id", "tenant_id", "run_id", "key", "attempt", "external"):
        if not is_remote(external) or external.get("attempt") != attempt:
            continue
        if external["phase"] == COLLECTING:
            # Collect sent: resend only when its lease ran out (the message or its worker was lost).
            if expired_before is not None or TaskInstance.objects.filter(id=task_id, lease_expires_at__lt=now).exists():
                if _send_collect(task_id, attempt, external, status_from_dict(external["status"]), phases=(COLLECTING,)):
                    counts["collect_resent"] += 1
            continue
        try:
            executor = _poll_executor(_Stub(task_id, tenant_id, run_id, key), external)
        except ExecutorError as exc:  # credentials unavailable, backend misconfigured: ask again later
            log.warning("cannot poll the job of task %s now: %s", task_id, exc)
            TaskInstance.objects.filter(id=task_id, state=TaskState.RUNNING).update(
                lease_expires_at=now + remote_lease())
            counts["unavailable"] += 1
            continue
        group = getattr(executor, "poll_group", "") or f"{external['kind']}|{external['backend_name']}"
        executors.setdefault(group, executor)
        groups[group].append((task_id, tenant_id, attempt, external))
    for group, items in groups.items():
        with _leader(group) as leading:
            if not leading:
                counts["groups_skipped"] += 1
                continue
            counts["groups"] += 1
            _poll_group(executors[group], items, counts)
    if task_ids is None and expired_before is None:
        counts["cancelled"] += remote_cancel_sweep()
    return dict(counts)


def remote_poll_if_configured() -> dict[str, int]:
    """The beat task's round: nothing (one query) where no tenant has a remote backend."""
    from executors.models import TenantBackend

    if not TenantBackend.objects.filter(kind__in=sorted(REMOTE_KINDS)).exists():
        return {}
    return remote_poll()


# --------------------------------------------------------------------------- collect


def _cleanup(external: dict) -> None:
    if not _engine("KEEP_WORKDIRS") and external.get("workdir"):
        shutil.rmtree(external["workdir"], ignore_errors=True)


def _end_without_failure(task_id: int, attempt: int, status: JobStatus) -> str:
    """A job cancelled outside Gatehouse (CANCELLED, not retried) or preempted (a new attempt that
    counts no failure, at most MAX_RECOVERIES times)."""
    from .engine import after_terminal, task_transition

    with transaction.atomic():
        task = TaskInstance.objects.select_for_update().filter(id=task_id).first()
        if task is None or task.state != TaskState.RUNNING or task.attempt != attempt:
            return "superseded"
        external = {**task.external, "phase": CANCELLED if status.state == JobState.CANCELLED else "ended"}
        job = task.external.get("external_id")
        if status.state == JobState.CANCELLED:
            task_transition(task, TaskState.CANCELLED, transition_id=f"finish:{task.id}:{attempt}",
                            reason=f"job {job} was cancelled outside Gatehouse: {status.reason}",
                            external=external, exit_code=status.exit_code)
            after_terminal(task)
            return "cancelled"
        reason = f"interrupted: {status.reason}"
        if task.recoveries >= settings.GATEHOUSE_ENGINE["MAX_RECOVERIES"]:
            task_transition(task, TaskState.FAILED, transition_id=f"finish:{task.id}:{attempt}",
                            reason=f"{reason} (interrupted {task.recoveries + 1} times)", external=external)
            after_terminal(task)
            return "failed"
        if task_transition(task, TaskState.QUEUED, transition_id=f"finish:{task.id}:{attempt}", reason=reason,
                           attempt=attempt + 1, recoveries=task.recoveries + 1, lease_expires_at=None, worker="",
                           external=external):
            dispatch_on_commit([(task.id, task.attempt)])
        return "requeued"


def remote_collect(task_id: int, attempt: int, raw_status: dict) -> str:
    """A finished remote job: collect and store its outputs, then finish the attempt through the
    engine (transition id `finish:<task>:<attempt>`; a repeat finds it done)."""
    from .artefacts import ArtefactError
    from .worker import Outcome, _store_outputs, task_finish

    task = TaskInstance.objects.filter(id=task_id).first()
    external = task.external if task is not None else None
    if (task is None or task.state != TaskState.RUNNING or task.attempt != attempt or not is_remote(external)
            or external.get("attempt") != attempt or external.get("phase") not in (SUBMITTED, COLLECTING)):
        return "stale"
    status = status_from_dict(raw_status)
    if status.state == JobState.CANCELLED or status.interrupted:
        result = _end_without_failure(task_id, attempt, status)
        _cleanup(external)
        return result
    outputs = []
    if status.state == JobState.TIMED_OUT:
        status = JobStatus(JobState.TIMED_OUT, status.exit_code, f"timed out: {status.reason}")
    elif status.state == JobState.LOST:
        status = JobStatus(JobState.LOST, None, f"lost: {status.reason}")
    try:
        if status.state != JobState.LOST:  # a lost job left nothing to collect
            executor = _executor_of(task, external)
            collected = executor.collect(handle_of(external), _request_of(task, external))
            ok = status.state == JobState.SUCCEEDED
            if ok and collected.missing:
                status = JobStatus(JobState.FAILED, status.exit_code, "missing outputs: " + ", ".join(collected.missing))
                ok = False
            outputs = _store_outputs(task, collected, declared=ok)
    except ExecutorError as exc:
        if getattr(exc, "retryable", False):
            # Credentials unavailable: the lease runs out and the collect is sent again; nothing is lost.
            log.warning("cannot collect task %s yet: %s", task_id, exc)
            return "waiting_for_credentials"
        status = JobStatus(JobState.FAILED, status.exit_code, f"{exc.code}: {exc}")
    except ArtefactError as exc:
        status = JobStatus(JobState.FAILED, status.exit_code, f"{exc.code}: {exc}")
    result = task_finish(task_id, attempt, Outcome(status, outputs))
    _cleanup(external)
    return result


# --------------------------------------------------------------------------- cancel


def _stop(task, attempt: int, executor, handle: JobHandle, reason: str) -> None:
    """Cancel a job on its backend and audit it (outside any transaction: a remote call)."""
    executor.cancel(handle)
    with transaction.atomic():
        audit_append(event="executor.cancelled", tenant_id=task.tenant_id, object_type="task",
                     object_id=str(task.id), label=task.classification,
                     data={"run": str(task.run_id), "task": task.key, "attempt": attempt, "backend": handle.backend,
                           "external_id": handle.external_id, "reason": reason[:300]})


def remote_cancel(task_id: int, attempt: int) -> str:
    """Stop the remote job of a cancelled task (after the cancellation's commit)."""
    task = TaskInstance.objects.filter(id=task_id).first()
    external = task.external if task is not None else None
    if task is None or not is_remote(external) or external.get("attempt") != attempt:
        return "nothing"
    if task.state != TaskState.CANCELLED:
        return "not_cancelled"
    if external.get("phase") not in (SUBMITTED, COLLECTING):
        return "nothing"  # submitting: the submitting worker stops it when it records the job
    executor = _executor_of(task, external)
    _stop(task, attempt, executor, handle_of(external), task.reason or "cancelled")
    TaskInstance.objects.filter(id=task_id, state=TaskState.CANCELLED, external__phase__in=[SUBMITTED, COLLECTING]) \
        .update(external={**external, "phase": CANCELLED})
    _cleanup(external)
    return "cancelled"


def remote_cancel_sweep() -> int:
    """Cancelled tasks whose job was not stopped yet (a lost message, the backend or Vault down):
    try again."""
    cutoff = timezone.now() - timedelta(seconds=float(_engine("REMOTE_POLL_SECONDS", 5.0) or 0) * 2)
    rows = TaskInstance.objects.filter(state=TaskState.CANCELLED, external__phase__in=[SUBMITTED, COLLECTING],
                                       state_changed_at__lt=cutoff).values_list("id", "external")[:CANCEL_SWEEP_LIMIT]
    done = 0
    for task_id, external in list(rows):
        try:
            done += remote_cancel(task_id, external.get("attempt")) == "cancelled"
        except ExecutorError as exc:
            log.warning("cannot cancel the job of task %s yet: %s", task_id, exc)
    return done
