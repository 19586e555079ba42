"""The pyslurm driver of the ``slurm`` executor: Slurm's C API in the worker's process.

:class:`~executors.slurm.SlurmExecutor` uses it instead of the command-line tools when
:func:`~executors.slurm.choose_driver` says so: pyslurm is importable, its major.minor equals the
installed Slurm's (a pyslurm release builds against one Slurm series only), and the cluster is the
one this process's ``slurm.conf`` names, reached with this process's identity (no SSH login node,
no per-tenant JWT). Written against pyslurm 25.11's API:

* submit: ``pyslurm.JobSubmitDescription(**fields).submit()`` returns the job id. The fields come
  from :func:`executors.slurm.job_fields`, exactly what the CLI driver gives ``sbatch``, and the
  script is the same :func:`executors.slurm.batch_script`, kept next to Slurm's log as ``batch.sh``
  (pyslurm takes a script's path or its text; a path cannot be mistaken for either). The batch
  shell gets ``PATH`` and ``LANG`` only, as ``sbatch`` run by the CLI driver does (pyslurm adds
  the worker's ``SLURM_*`` variables, as ``sbatch`` does); the task runs under ``env -i`` anyway.
* track: :class:`PyslurmTracker`, one ``pyslurm.Jobs.load()`` per cluster per poll interval for
  every job of the process (the controller's whole job table, as ``squeue --states=all``). Records
  are normalised to the CLI parser's shape and mapped by the one
  :func:`executors.slurm.record_status`. A job missing from the table is ``UNKNOWN`` until
  confirmed, by the CLI tracker's rules (:mod:`executors.slurm_tracker`, same ``accounting``
  option; ``auto`` reads ``AccountingStorageType`` once through ``pyslurm.slurmctld.Config``):
  one ``pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=...))`` for all missing jobs of a refresh
  (a failure leaves them ``UNKNOWN`` and backs off), then ``pyslurm.Job.load(id)`` for what
  accounting does not know (``LOST`` once the controller answers "Invalid job id").
* cancel: ``pyslurm.Job(id).cancel()`` (pyslurm ignores a job that already finished or was
  forgotten). pyslurm addresses jobs by integer id only and a pending array element has no id of
  its own, so an array element is cancelled with ``scancel <array>_<index>``, as the CLI does.

pyslurm reports an exit status of 128 or more as the status minus 128 (its ``_get_exit_code``);
what it reports is what the task state carries.

The functions that shape data (:func:`submit_description`, :func:`job_records`) need no pyslurm;
``import pyslurm`` happens when a :class:`PyslurmDriver` is made. No Django.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .base import ExecutorError, JobState, JobStatus
from .slurm import SlurmCommandError, SlurmCommands, _record_keys, _state_of, record_status
from .slurm_tracker import ACCOUNTING_MODES, MAX_CONFIRMATIONS_PER_REFRESH
from .tracker import StatusTracker

__all__ = ["PyslurmDriver", "PyslurmTracker", "job_records", "submit_description"]

#: Task-spec resource name (see :func:`executors.slurm.resource_fields`) -> JobSubmitDescription
#: attribute (pyslurm/core/job/submission.pyx).
SUBMIT_ATTRIBUTES = {
    "partition": "partitions",
    "account": "account",
    "qos": "qos",
    "cpus": "cpus_per_task",
    "memory": "memory_per_node",  # MiB, as --mem
    "gpus": "gpus",  # tres_per_job gres:gpu:N, as --gpus
    "gres": "gres_per_node",  # tres_per_node, as --gres
    "constraint": "constraints",
    "nodes": "nodes",
    "time": "time_limit",  # minutes, or [D-]HH:MM:SS
}
_GRES_COUNT = re.compile(r":[0-9]+$")


def _gres(value: str) -> str:
    """``--gres`` allows ``gpu`` for ``gpu:1``; pyslurm's parser wants every count written."""
    return ",".join(part if _GRES_COUNT.search(part) else f"{part}:1" for part in value.split(","))


def submit_description(fields: Mapping[str, Any], *, script_path: str, path: str) -> dict[str, Any]:
    """Keyword arguments for ``pyslurm.JobSubmitDescription`` from :func:`executors.slurm.job_fields`
    (pure): the same name, comment, work dir, log, requeue policy, resources and array as the
    ``sbatch`` options the CLI driver builds from them."""
    description: dict[str, Any] = {
        "name": fields["name"],
        "comment": fields["comment"],
        "working_directory": fields["workdir"],
        "standard_output": fields["output"],
        "log_files_open_mode": fields["open_mode"],
        "is_requeueable": bool(fields["requeue"]),
        "script": script_path,
        # A non-empty mapping: pyslurm exports the worker's whole environment when given none.
        "environment": {"PATH": path, "LANG": "C.UTF-8"},
    }
    for name, value in fields["resources"].items():
        description[SUBMIT_ATTRIBUTES[name]] = _gres(value) if name == "gres" else value
    if fields.get("array"):
        description["array"] = fields["array"]
    return description


def _number(value: Any) -> int | None:
    return None if value in (None, "", "N/A") else int(value)


def job_records(
    *,
    job_id: Any,
    array_id: Any,
    array_task_id: Any,
    array_tasks_waiting: Any,
    state: Any,
    state_reason: Any,
    exit_code: Any,
    exit_code_signal: Any,
    requeue_count: Any,
    nodes: Any,
    time_limit: Any,
    name: Any,
    comment: Any,
) -> dict[str, dict[str, Any]]:
    """One pyslurm job (controller or accounting) as records of the CLI parsers' shape, keyed like
    them (``"123"``, ``"123_4"``; the pending remainder of an array gives one record per element)
    so :func:`executors.slurm.record_status` maps both drivers' answers (pure)."""
    if isinstance(nodes, (list, tuple)):
        nodes = ",".join(str(n) for n in nodes)
    record = {
        "job_id": str(_number(job_id)),
        "state": _state_of(state)[0],
        "flags": _state_of(state)[1],
        "reason": str(state_reason or ""),
        "exit": (int(exit_code or 0), int(exit_code_signal or 0)),
        "restarts": int(requeue_count or 0),
        "nodes": str(nodes or ""),
        "time_limit": time_limit,
        "name": str(name or ""),
        "comment": str(comment or ""),
    }
    keys = _record_keys(_number(job_id), _number(array_id), _number(array_task_id), str(array_tasks_waiting or ""))
    return {key: {**record, "key": key} for key in keys}


def _records(job: Any, nodes: Any) -> dict[str, dict[str, Any]]:
    """A ``pyslurm.Job`` (pyslurm/core/job/job.pyx) or ``pyslurm.db.Job`` (pyslurm/db/job.pyx) as
    records; the two name their nodes differently (``allocated_nodes``, ``nodelist``)."""
    return job_records(
        job_id=job.id, array_id=job.array_id, array_task_id=job.array_task_id,
        array_tasks_waiting=job.array_tasks_waiting, state=job.state, state_reason=job.state_reason,
        exit_code=job.exit_code, exit_code_signal=job.exit_code_signal, requeue_count=job.requeue_count,
        nodes=nodes, time_limit=job.time_limit, name=job.name, comment=job.comment,
    )  # fmt: skip


def _controller_records(job: Any) -> dict[str, dict[str, Any]]:
    return _records(job, job.allocated_nodes)


def _accounting_records(job: Any) -> dict[str, dict[str, Any]]:
    return _records(job, job.nodelist)


class PyslurmDriver:
    """Submit, list, confirm and cancel through pyslurm. :attr:`calls` counts pyslurm calls by name
    (``Jobs.load``, ``db.Jobs.load``, ``Job.load``, ``submit``, ``cancel``) as
    :attr:`SlurmCommands.calls <executors.slurm.SlurmCommands.calls>` counts commands."""

    def __init__(self, cluster: str, commands: SlurmCommands, *, path: str, poll_interval: float,
                 max_backoff: float, accounting: str = "auto") -> None:
        import pyslurm  # type: ignore[import-not-found]

        if accounting not in ACCOUNTING_MODES:
            raise ValueError(f"accounting must be one of {', '.join(ACCOUNTING_MODES)}, not {accounting!r}")
        self.pyslurm = pyslurm
        self.cluster = cluster
        self.path = path  # the batch shell's PATH
        self.poll_interval, self.max_backoff = float(poll_interval), float(max_backoff)
        self.accounting = accounting
        #: None until ``auto`` has found out whether the cluster keeps accounting.
        self.accounting_available: bool | None = {"on": True, "off": False}.get(accounting)
        self.accounting_failures = 0
        self.last_accounting_error = ""
        self._accounting_next = float("-inf")
        self.commands = commands  # scancel for an element of an array (see cancel)
        self.calls: dict[str, int] = {}
        self._calls_lock = threading.Lock()
        self.tracker = PyslurmTracker.for_cluster(cluster, self, poll_interval=poll_interval,
                                                  max_backoff=max_backoff)

    def _count(self, name: str) -> None:
        with self._calls_lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self.pyslurm.RPCError, self.pyslurm.PyslurmError)

    def submit(self, fields: Mapping[str, Any], script: str, *, script_path: str) -> str:
        """Submit one job or array; returns its id. The script is written to ``script_path``."""
        try:
            fd = os.open(script_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(script)
        except OSError as exc:
            raise ExecutorError("staging_failed", f"cannot write the batch script {script_path!r}: {exc}") from exc
        description = self.pyslurm.JobSubmitDescription(**submit_description(fields, script_path=script_path,
                                                                             path=self.path))
        self._count("submit")
        try:
            job_id = description.submit()
        except (*self._errors, ValueError) as exc:
            raise ExecutorError("submit_failed", f"Slurm refused the job: {exc}") from exc
        return str(int(job_id))

    def records(self) -> dict[str, dict[str, Any]]:
        """Every job the controller knows (one ``Jobs.load``), as records by job key."""
        self._count("Jobs.load")
        try:
            jobs = self.pyslurm.Jobs.load()
        except self._errors as exc:
            raise ExecutorError("slurm_unavailable", f"pyslurm.Jobs.load failed: {exc}") from exc
        out: dict[str, dict[str, Any]] = {}
        for job in jobs.values():
            out.update(_controller_records(job))
        return out

    def _keeps_accounting(self) -> bool:
        """``accounting: auto`` finds out once, from the controller's ``AccountingStorageType``
        (``pyslurm.slurmctld.Config.load().accounting_storage_type``)."""
        if self.accounting_available is None:
            self._count("slurmctld.Config.load")
            try:
                storage = self.pyslurm.slurmctld.Config.load().accounting_storage_type
            except self._errors:
                return True  # cannot tell now: ask accounting, and find out another time
            self.accounting_available = bool(storage) and not str(storage).endswith("/none")
        return bool(self.accounting_available)

    def confirm(self, keys: Sequence[str]) -> dict[str, JobStatus]:
        """What became of jobs that left the controller's table, by the CLI tracker's rules: where
        the cluster keeps accounting, ONE ``pyslurm.db.Jobs.load`` for all of them (a failure leaves
        them ``UNKNOWN`` and backs off accounting: never a guess, never ``LOST``); what accounting
        does not know, or all of them without accounting, is asked of the controller by id (at
        most :data:`MAX_CONFIRMATIONS_PER_REFRESH`)."""
        out: dict[str, JobStatus] = {}
        rest = list(keys)
        if self._keeps_accounting():
            now = time.monotonic()
            if now < self._accounting_next:
                wait = self._accounting_next - now
                return {k: JobStatus(JobState.UNKNOWN, None, f"not in the queue; accounting failed "
                                     f"({self.last_accounting_error}), next try in {wait:.0f}s") for k in keys}
            self._count("db.Jobs.load")
            found: dict[str, dict[str, Any]] = {}
            try:
                ids = sorted({int(k.split("_", 1)[0]) for k in keys})
                for job in self.pyslurm.db.Jobs.load(self.pyslurm.db.JobFilter(ids=ids)).values():
                    found.update(_accounting_records(job))
            except (*self._errors, ValueError) as exc:
                self.accounting_failures += 1
                self.last_accounting_error = str(exc)
                backoff = min(self.max_backoff, max(self.poll_interval, 0.5) * (2 ** min(self.accounting_failures, 16)))
                self._accounting_next = time.monotonic() + backoff
                return {k: JobStatus(JobState.UNKNOWN, None, f"not in the queue, and accounting failed ({exc}); "
                                     f"next try in {backoff:.0f}s") for k in keys}
            self.accounting_failures = 0
            self.last_accounting_error = ""
            rest = []
            for key in keys:
                if key in found:
                    status = record_status(found[key])
                    out[key] = JobStatus(status.state, status.exit_code, f"{status.reason} (from accounting)",
                                         interrupted=status.interrupted)
                else:
                    rest.append(key)
        why = ("and accounting has no record of it" if self.accounting_available
               else "(finished jobs are forgotten after MinJobAge without accounting)")
        for index, key in enumerate(rest):
            if index >= MAX_CONFIRMATIONS_PER_REFRESH:
                out[key] = JobStatus(JobState.UNKNOWN, None, "not in the queue; to be confirmed")
            else:
                out[key] = self._confirm_with_controller(key, why)
        return out

    def _confirm_with_controller(self, key: str, why: str) -> JobStatus:
        base = int(key.split("_", 1)[0])
        self._count("Job.load")
        lost = JobStatus(JobState.LOST, None, f"Slurm no longer knows job {key} {why}: its outcome is unknown")
        try:
            job = self.pyslurm.Job.load(base)
        except self._errors as exc:
            if "invalid job id" in str(exc).lower():
                return lost
            return JobStatus(JobState.UNKNOWN, None, f"not in the queue and not confirmed yet: {exc}")
        record = _controller_records(job).get(key)
        # Absent from the whole table a moment ago and not under this id now: an element of an
        # array the controller has purged.
        return record_status(record) if record is not None else lost

    def cancel(self, key: str) -> None:
        """Cancel a job (``"123"``) or an element of an array (``"123_4"``)."""
        if "_" not in key:
            self._count("cancel")
            try:
                self.pyslurm.Job(int(key)).cancel()
            except self._errors as exc:
                raise ExecutorError("slurm_unavailable", f"cannot cancel job {key}: {exc}") from exc
            return
        try:
            result = self.commands.run(self.commands.scancel_argv(key), check=False)
        except SlurmCommandError as exc:
            raise ExecutorError("slurm_unavailable", f"cannot cancel job {key}: {exc}") from exc
        gone = "Invalid job id" in result.stderr or "already completing" in result.stderr
        if result.returncode != 0 and not gone:
            raise ExecutorError("slurm_unavailable", f"scancel {key}: {result.stderr.strip()[:300]}")


class PyslurmTracker(StatusTracker):
    """The shared status cache of one cluster under the pyslurm driver: one ``Jobs.load`` per poll
    interval answers every caller (see :class:`~executors.slurm_tracker.SlurmTracker` for the
    rules, which are the same)."""

    backend_label = "Slurm (pyslurm)"

    def __init__(self, cluster: str, driver: PyslurmDriver, *, poll_interval: float, max_backoff: float) -> None:
        super().__init__(poll_interval=poll_interval, max_backoff=max_backoff)
        self.cluster = cluster
        self.driver = driver
        self.confirmations = 0  # confirm() calls for jobs that left the table

    @classmethod
    def for_cluster(cls, cluster: str, driver: PyslurmDriver, **options: float) -> PyslurmTracker:
        return cls._shared(cluster, lambda: cls(cluster, driver, **options))  # type: ignore[arg-type]

    def _refresh(self) -> None:
        open_keys = self._open_keys()
        self._last_query = time.monotonic()
        self.queries += 1
        try:
            records = self.driver.records()
        except ExecutorError as exc:
            self._failed(open_keys, exc.message)
            return
        self._succeeded()
        missing = []
        for key in open_keys:
            if key in records:
                self._status[key] = record_status(records[key])
            else:
                missing.append(key)
        if missing:
            self.confirmations += 1
            self._status.update(self.driver.confirm(missing))
