"""The executor interface: one contract for every compute backend Gatehouse runs tasks on.

Two kinds of backend fit behind :class:`Executor`:

* **synchronous-in-worker** (``local``): the Celery worker starts the process and waits for
  it in :meth:`Executor.wait`; ``synchronous = True``.
* **submit-then-poll** (SLURM, AWS Batch): :meth:`Executor.submit` returns at once with a
  :class:`JobHandle`; a shared poller later calls :meth:`Executor.poll_many` with the handles of
  every outstanding job so that the backend is asked **once** for all of them;
  ``synchronous = False``.

Optional capabilities of submit-then-poll backends, looked for by the engine with ``getattr``:
``submit_array(requests) -> list[JobHandle]`` submits similar requests as ONE job array (handle i is
element i, polled, cancelled and collected like any handle; one rate-limit token), and
``lookup_array(requests) -> list[JobHandle] | None`` finds such an array again by its name (a
worker lost between the submission and its commit), as ``lookup(request)`` does for one job.

A handle's ``data`` is stored in the database, so everything needed to poll, cancel or collect a
job after a process restart must be in it, and it must survive a JSON round-trip
(:meth:`JobHandle.to_dict` / :meth:`JobHandle.from_dict`).

This module is pure Python: it must not import Django.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "FINISHED_STATES",
    "Collected",
    "CollectedOutput",
    "Executor",
    "ExecutorError",
    "JobHandle",
    "JobRequest",
    "JobState",
    "JobStatus",
    "OutputRequest",
    "StagedInput",
    "sanitize_job_key",
]


class JobState(str, Enum):
    """Lifecycle state of a job as reported by a backend."""

    PENDING = "pending"  # accepted by the backend, not started yet (e.g. queued in SLURM)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"  # the backend no longer knows the job and its outcome cannot be recovered
    UNKNOWN = "unknown"  # transient: the backend could not tell right now (ask again later)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


#: States after which a job will never change again.
FINISHED_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.LOST}
)


class ExecutorError(Exception):
    """An executor refused or failed an operation.

    ``code`` is stable and meant for programs (API error bodies, retry decisions); ``message`` is
    for humans. Codes in use: ``bad_request``, ``input_missing``, ``spawn_failed``,
    ``no_container_runtime``, ``staging_failed`` (I/O error preparing the work dir),
    ``unknown_backend``; the ``slurm`` backend adds ``submit_failed`` (sbatch refused the job),
    ``rate_limited`` (no submission slot in time), ``slurm_unavailable`` (Slurm did not answer) and
    ``driver_unavailable`` (the requested Slurm driver cannot be used); the ``batch`` backend uses
    ``submit_failed`` (SubmitJob refused), ``rate_limited``, ``staging_failed`` (the job's files
    could not be put in or fetched from S3) and ``batch_unavailable`` (AWS Batch did not answer).
    """

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message or code
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"ExecutorError(code={self.code!r}, message={self.message!r})"


@dataclass(frozen=True)
class StagedInput:
    """A local file copied into the work dir before the job starts.

    ``path`` is relative to the work dir; ``source`` is an absolute local file. Inputs are always
    *copied*, never linked: tasks may modify their inputs and must not alter the originals.
    """

    path: str
    source: str


@dataclass(frozen=True)
class OutputRequest:
    """A file the job is expected to produce, relative to the work dir."""

    name: str
    path: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True)
class JobRequest:
    """Everything a backend needs to run one attempt of one task.

    * ``job_key``: unique per task attempt, e.g. ``"<run>/<task>/<attempt>"``; use
      :func:`sanitize_job_key` before putting it in a file or container name.
    * ``argv``: the command. It may contain the placeholder ``{script}``, replaced by the absolute
      path of ``script`` once written to ``<workdir>/.gatehouse/script``.
    * ``env``: variables for the task, on top of the backend's minimal clean environment.
    * ``workdir``: absolute; the executor creates it.
    * ``timeout``: wall-clock seconds, or ``None`` for no limit.
    * ``resources``: backend-specific hints (cpus, memory, partition...); ``local`` ignores them.
    * ``container``: ``{"image": ..., "runtime": ...}`` or ``None`` to run on the host.
    * ``labels``: run id, task id... used for tagging (and, locally, ``GATEHOUSE_*`` variables).

    Sequences are normalised to tuples and mappings are copied, so a request never shares
    mutable state with its caller.
    """

    job_key: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str
    timeout: float | None = None
    inputs: tuple[StagedInput, ...] = ()
    outputs: tuple[OutputRequest, ...] = ()
    script: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    container: Mapping[str, Any] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # frozen=True: normalise through object.__setattr__.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "resources", dict(self.resources))
        object.__setattr__(self, "labels", dict(self.labels))
        if self.container is not None:
            object.__setattr__(self, "container", dict(self.container))


@dataclass(frozen=True)
class JobHandle:
    """What :meth:`Executor.submit` returns; stored in the database.

    ``data`` must be JSON-serialisable and hold enough to poll, cancel and collect the job from
    another process (after a worker restart).
    """

    backend: str
    external_id: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "external_id": self.external_id, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> JobHandle:
        return cls(backend=raw["backend"], external_id=raw["external_id"], data=dict(raw.get("data") or {}))


@dataclass(frozen=True)
class JobStatus:
    """A job's state at one moment.

    ``exit_code`` follows :class:`subprocess.Popen`: negative means "killed by that signal";
    ``None`` when unknown (still running, lost, or the backend does not report one).
    ``reason`` is for humans: "exit code 3", "timed out after 5s", "killed by signal 9 (SIGKILL)".
    """

    state: JobState
    exit_code: int | None = None
    reason: str = ""
    #: The job ended through no fault of the task (preempted by the scheduler): the engine starts a
    #: new attempt without counting a failure against the task's retries.
    interrupted: bool = False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class CollectedOutput:
    name: str
    path: str  # absolute
    media_type: str
    size: int


@dataclass(frozen=True)
class Collected:
    """Result of :meth:`Executor.collect`.

    ``missing`` lists the names of declared outputs that were not (validly) produced. Outputs that
    exist but were refused (a symlink leading out of the work dir, a directory, a FIFO...) are in
    ``missing`` too, so a caller that only checks ``missing`` stays safe, and ``rejected`` maps
    their names to the reason.
    """

    outputs: tuple[CollectedOutput, ...]
    stdout_path: str
    stderr_path: str
    missing: tuple[str, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize_job_key(job_key: str, *, max_len: int = 64) -> str:
    """A filename- and container-name-safe form of ``job_key``.

    Unsafe characters become ``-``; a short hash of the original key is appended so that two keys
    differing only in unsafe characters (``a/b`` and ``a-b``) never map to the same name.
    """
    digest = hashlib.sha256(job_key.encode("utf-8")).hexdigest()[:10]
    safe = _UNSAFE_KEY_CHARS.sub("-", job_key).strip("-.") or "job"
    return f"{safe[: max(1, max_len - len(digest) - 1)]}-{digest}"


class Executor(ABC):
    """A compute backend. Subclasses set ``name`` and ``synchronous`` and implement the four
    abstract methods; :meth:`wait` has a polling default that suits submit-then-poll backends."""

    name: str = ""
    synchronous: bool = False

    @abstractmethod
    def submit(self, req: JobRequest) -> JobHandle:
        """Stage inputs and start (or enqueue) the job. Raises :class:`ExecutorError`."""

    @abstractmethod
    def poll_many(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Status of every handle, keyed by ``external_id``, from ONE backend query."""

    @abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the job. Idempotent: no error if it has already finished or is unknown."""

    @abstractmethod
    def collect(self, handle: JobHandle, req: JobRequest) -> Collected:
        """Locate the declared outputs and the stdout/stderr logs of a finished job."""

    def wait(
        self,
        handle: JobHandle,
        *,
        timeout: float | None,
        should_cancel: Callable[[], bool] | None = None,
        heartbeat: Callable[[], None] | None = None,
        interval: float = 1.0,
    ) -> JobStatus:
        """Block until the job finishes, is cancelled, or ``timeout`` seconds (counted from this
        call) pass.

        Every ``interval`` seconds ``heartbeat()`` is called, then ``should_cancel()``; when the
        latter returns true the job is cancelled and ``CANCELLED`` returned. On timeout the job is
        cancelled and ``TIMED_OUT`` returned. This default polls :meth:`poll_many` with a single
        handle; backends that can wait natively override it.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        return self._wait_loop(
            handle,
            deadline_of=lambda status, now: deadline,
            timed_out_reason=f"timed out after {timeout:g}s" if timeout is not None else "",
            should_cancel=should_cancel,
            heartbeat=heartbeat,
            interval=interval,
            sleep_to_deadline=True,
        )

    def _wait_loop(
        self,
        handle: JobHandle,
        *,
        deadline_of: Callable[[JobStatus | None, float], float | None],
        timed_out_reason: str,
        should_cancel: Callable[[], bool] | None,
        heartbeat: Callable[[], None] | None,
        interval: float,
        sleep_to_deadline: bool,
    ) -> JobStatus:
        """The polling loop behind :meth:`wait`: poll, return a final status; cancel and return
        ``TIMED_OUT`` (with ``timed_out_reason``) once ``deadline_of(status, now)`` (a monotonic
        time, or ``None`` for none yet) has passed; call ``heartbeat()``, then ``should_cancel()``
        (cancel and return ``CANCELLED``); sleep ``interval`` seconds (no later than the deadline
        with ``sleep_to_deadline``) and start again."""
        interval = max(float(interval), 0.01)
        while True:
            status = self.poll_many([handle]).get(handle.external_id)
            if status is not None and status.finished:
                return status
            now = time.monotonic()
            deadline = deadline_of(status, now)
            if deadline is not None and now >= deadline:
                self.cancel(handle)
                return JobStatus(JobState.TIMED_OUT, None, timed_out_reason)
            if heartbeat is not None:
                heartbeat()
            if should_cancel is not None and should_cancel():
                self.cancel(handle)
                return JobStatus(JobState.CANCELLED, None, "cancelled")
            if deadline is not None and sleep_to_deadline:
                time.sleep(min(interval, max(0.0, deadline - now)))
            else:
                time.sleep(interval)
