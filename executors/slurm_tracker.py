"""One batched Slurm query per cluster per poll interval, shared by every caller in the process.

:class:`SlurmTracker` keeps the set of Slurm jobs this process cares about (callers register job
keys: ``"123"`` for a job, ``"123_4"`` for element 4 of array job 123) and answers their status
from a cache that at most one ``squeue --json`` per ``poll_interval`` refreshes. Many threads
polling hundreds of jobs cost Slurm one query an interval; :attr:`SlurmTracker.queries` counts
them so benchmarks and tests can check it.

Rules:

* a job seen in a final state keeps it (Slurm never changes a finished job again);
* a query that fails or times out makes every unfinished job ``UNKNOWN`` and backs off
  (``poll_interval * 2**n``, at most ``max_backoff``); finished jobs keep their state;
* a job missing from the queue is ``UNKNOWN`` until ``scontrol show job`` confirms what became of
  it (its final state, or ``LOST`` when Slurm no longer knows the id: without accounting Slurm
  forgets finished jobs after ``MinJobAge`` seconds).

Pure Python, no Django. The commands run through a :class:`~executors.slurm.SlurmCommands`
(locally or over SSH); see :mod:`executors.slurm` for the parsers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .base import JobState, JobStatus
from .tracker import StatusTracker

if TYPE_CHECKING:  # pragma: no cover
    from .slurm import SlurmCommands

__all__ = ["SlurmTracker"]

#: At most this many ``scontrol show job`` confirmations per refresh (a mass disappearance, e.g.
#: a controller that lost its state, must not turn into thousands of calls at once).
MAX_CONFIRMATIONS_PER_REFRESH = 32
#: Beyond this many ids, ``--jobs=`` is left out and the answer filtered here (argv length).
MAX_IDS_ON_COMMAND_LINE = 500


class SlurmTracker(StatusTracker):
    """The shared status cache of one cluster. Get it with :meth:`for_cluster`."""

    backend_label = "Slurm"

    def __init__(
        self,
        cluster: str,
        commands: SlurmCommands,
        *,
        poll_interval: float = 10.0,
        max_backoff: float = 300.0,
        use_json: bool | None = None,
    ) -> None:
        super().__init__(poll_interval=poll_interval, max_backoff=max_backoff)
        self.cluster = cluster
        self.commands = commands
        #: None: try ``squeue --json`` and fall back to ``scontrol show job -o`` if refused.
        self.use_json = use_json
        # ``queries`` counts squeue (or scontrol -o for all jobs) calls
        self.confirmations = 0  # scontrol show job <id> calls for vanished jobs

    @classmethod
    def for_cluster(cls, cluster: str, commands: SlurmCommands, **options: float | bool | None) -> SlurmTracker:
        """The process-wide tracker of ``cluster`` (created on first use with these options)."""
        return cls._shared(cluster, lambda: cls(cluster, commands, **options))  # type: ignore[arg-type]

    def _refresh(self) -> None:
        from .slurm import SlurmCommandError, parse_scontrol_jobs, parse_squeue_json, record_status

        open_keys = self._open_keys()
        self._last_query = time.monotonic()
        self.queries += 1
        try:
            base_ids = sorted({k.split("_", 1)[0] for k in open_keys})
            records = self._query(base_ids, parse_squeue_json, parse_scontrol_jobs)
        except SlurmCommandError as exc:
            self._failed(open_keys, str(exc))
            return
        self._succeeded()
        missing = []
        for key in open_keys:
            record = records.get(key)
            if record is None:
                missing.append(key)
            else:
                self._status[key] = record_status(record)
        for index, key in enumerate(missing):
            if index >= MAX_CONFIRMATIONS_PER_REFRESH:
                self._status[key] = JobStatus(JobState.UNKNOWN, None, "not in the queue; to be confirmed")
                continue
            self._status[key] = self._confirm(key, parse_scontrol_jobs, record_status, SlurmCommandError)

    def _query(self, base_ids: list[str], parse_json, parse_text) -> dict[str, dict]:
        """One query for all jobs: ``squeue --json`` (filtered by id where Slurm honours it; 22.05
        answers with every job, so the answer is filtered here anyway), or ``scontrol show job -o``
        when this Slurm has no JSON output."""
        ids = base_ids if 0 < len(base_ids) <= MAX_IDS_ON_COMMAND_LINE else []
        if self.use_json is not False:
            result = self.commands.run(self.commands.squeue_argv(ids), check=False)
            if result.returncode == 0:
                self.use_json = True
                return parse_json(result.stdout)
            if self.use_json is None and "--json" in result.stderr and (
                "unrecognized" in result.stderr or "invalid option" in result.stderr
            ):
                self.use_json = False
            else:
                from .slurm import SlurmCommandError

                raise SlurmCommandError(result.argv_display, result.returncode, result.stderr)
        result = self.commands.run(self.commands.scontrol_show_argv(None), check=False)
        if result.returncode != 0 and "Invalid job id" not in result.stderr and "No jobs" not in result.stdout:
            from .slurm import SlurmCommandError

            raise SlurmCommandError(result.argv_display, result.returncode, result.stderr)
        return parse_text(result.stdout)

    def _confirm(self, key: str, parse_text, record_status, error_type) -> JobStatus:
        """Ask ``scontrol show job <key>`` what became of a job that left the queue."""
        self.confirmations += 1
        try:
            result = self.commands.run(self.commands.scontrol_show_argv(key), check=False)
        except error_type as exc:
            return JobStatus(JobState.UNKNOWN, None, f"not in the queue, and scontrol failed: {exc}")
        if result.returncode == 0:
            record = parse_text(result.stdout).get(key)
            if record is not None:
                return record_status(record)
        if "Invalid job id" in result.stderr:
            return JobStatus(
                JobState.LOST,
                None,
                f"Slurm no longer knows job {key} (finished jobs are forgotten after MinJobAge without "
                "accounting): its outcome is unknown",
            )
        detail = (result.stderr or result.stdout).strip()[:200]
        return JobStatus(JobState.UNKNOWN, None, f"not in the queue and not confirmed yet: {detail}")
