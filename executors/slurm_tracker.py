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
* a job missing from the queue is ``UNKNOWN`` until accounting or ``scontrol show job`` confirms
  what became of it. Where the cluster has accounting (``accounting``: ``auto`` finds out once,
  from sacct's first answer; ``on``; ``off``), ONE ``sacct --jobs=...`` for all the jobs that
  vanished in a refresh gives their final states (an array element is ``<id>_<index>``); what
  accounting does not know is asked of ``scontrol show job`` (at most
  :data:`MAX_CONFIRMATIONS_PER_REFRESH` a refresh): its final state, or ``LOST`` when Slurm no
  longer knows the id (without accounting Slurm forgets finished jobs after ``MinJobAge``
  seconds). A sacct that fails or times out leaves those jobs ``UNKNOWN`` (never a guessed final
  state, and no ``scontrol`` either: "Invalid job id" then would read as LOST) and backs off
  accounting alone; the squeue query of the next refresh goes ahead as usual.

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
#: Beyond this many ids, ``--jobs=`` is left out and the answer filtered here (argv length); sacct
#: is asked about at most this many vanished jobs a refresh (the rest wait for the next one).
MAX_IDS_ON_COMMAND_LINE = 500
#: The values of the ``accounting`` option.
ACCOUNTING_MODES = ("auto", "on", "off")


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
        accounting: str = "auto",
    ) -> None:
        super().__init__(poll_interval=poll_interval, max_backoff=max_backoff)
        if accounting not in ACCOUNTING_MODES:
            raise ValueError(f"accounting must be one of {', '.join(ACCOUNTING_MODES)}, not {accounting!r}")
        self.cluster = cluster
        self.commands = commands
        #: None: try ``squeue --json`` and fall back to ``scontrol show job -o`` if refused.
        self.use_json = use_json
        # ``queries`` counts squeue (or scontrol -o for all jobs) calls
        self.confirmations = 0  # scontrol show job <id> calls for vanished jobs
        self.accounting = accounting
        #: Whether sacct is asked about vanished jobs: None until ``auto`` has seen sacct's first answer.
        self.accounting_available: bool | None = {"on": True, "off": False}.get(accounting)
        self.accounting_queries = 0  # sacct calls (one per refresh at most)
        self.accounting_failures = 0  # consecutive failed sacct calls
        self._accounting_next = float("-inf")
        self.last_accounting_error = ""

    @classmethod
    def for_cluster(
        cls, cluster: str, commands: SlurmCommands, **options: float | bool | str | None
    ) -> SlurmTracker:
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
        missing = self._record(open_keys, records, record_status)
        if not missing:
            return
        unconfirmed = self._from_accounting(missing, record_status)
        for index, key in enumerate(unconfirmed):
            if index >= MAX_CONFIRMATIONS_PER_REFRESH:
                self._status[key] = JobStatus(JobState.UNKNOWN, None, "not in the queue; to be confirmed")
                continue
            self._status[key] = self._confirm(key, parse_scontrol_jobs, record_status, SlurmCommandError)

    def _from_accounting(self, missing: list[str], record_status) -> list[str]:
        """Settle the jobs that left the queue from ONE sacct call; returns those left for
        ``scontrol`` (all of them when accounting is off or absent, none when sacct failed)."""
        from .slurm import SlurmCommandError, parse_sacct_text

        if self.accounting_available is False:
            return missing
        now = time.monotonic()
        if now < self._accounting_next:
            wait = self._accounting_next - now
            for key in missing:
                self._status[key] = JobStatus(
                    JobState.UNKNOWN, None,
                    f"not in the queue; accounting failed ({self.last_accounting_error}), next try in {wait:.0f}s")
            return []
        asked, later = missing[:MAX_IDS_ON_COMMAND_LINE], missing[MAX_IDS_ON_COMMAND_LINE:]
        for key in later:
            self._status[key] = JobStatus(JobState.UNKNOWN, None, "not in the queue; to be confirmed by accounting")
        ids = sorted({k.split("_", 1)[0] for k in asked}, key=int)
        self.accounting_queries += 1
        try:
            records = parse_sacct_text(self.commands.run(self.commands.sacct_argv(ids)).stdout)
        except SlurmCommandError as exc:
            if self.found_no_accounting(exc):
                return missing
            self.accounting_failures += 1
            self.last_accounting_error = str(exc)
            backoff = min(self.max_backoff, max(self.poll_interval, 0.5) * (2 ** min(self.accounting_failures, 16)))
            self._accounting_next = time.monotonic() + backoff
            for key in asked:
                self._status[key] = JobStatus(JobState.UNKNOWN, None, f"not in the queue, and accounting failed "
                                                                      f"({exc}); next try in {backoff:.0f}s")
            return []
        self.accounting_available = True
        self.accounting_failures = 0
        self.last_accounting_error = ""
        return self._record(asked, records, record_status)

    def found_no_accounting(self, exc: Exception) -> bool:
        """Whether a failed sacct says this cluster keeps no accounting, as ``auto`` finds out once
        (later calls then leave accounting alone); any other failure is a failure to report."""
        if self.accounting == "auto" and self.accounting_available is None and _no_accounting(exc):
            self.accounting_available = False
        return self.accounting_available is False

    def _record(self, keys: list[str], records: dict, record_status) -> list[str]:
        """The status of each of `keys` that `records` holds; returns the keys it does not hold."""
        absent = []
        for key in keys:
            record = records.get(key)
            if record is None:
                absent.append(key)
            else:
                self._status[key] = record_status(record)
        return absent

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
            why = ("and accounting has no record of it" if self.accounting_available
                   else "(finished jobs are forgotten after MinJobAge without accounting)")
            return JobStatus(JobState.LOST, None, f"Slurm no longer knows job {key} {why}: its outcome is unknown")
        detail = (result.stderr or result.stdout).strip()[:200]
        return JobStatus(JobState.UNKNOWN, None, f"not in the queue and not confirmed yet: {detail}")


def _no_accounting(exc: Exception) -> bool:
    """sacct says this cluster keeps no accounting (or there is no sacct to ask)."""
    text = str(exc).lower()
    return getattr(exc, "returncode", None) == 127 or "accounting storage is disabled" in text
