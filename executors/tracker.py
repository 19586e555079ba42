"""The shared batched-status cache that the ``slurm`` and ``batch`` trackers build on.

A tracker keeps the set of jobs this process cares about (callers register job keys) and answers
their status from a cache that at most one refresh per ``poll_interval`` updates, whatever the
number of threads polling. Subclasses implement :meth:`StatusTracker._refresh` (the backend
query) and share the rest:

* a job seen in a final state keeps it (a backend never changes a finished job again), and is
  not asked about again;
* a failed query makes the unfinished jobs it should have answered ``UNKNOWN`` and backs off
  (``poll_interval * 2**n``, at most ``max_backoff``) through :meth:`StatusTracker._failed`;
* :attr:`StatusTracker.queries` counts backend calls, :attr:`StatusTracker.failures` consecutive
  failed refreshes.

Each subclass has its own registry of process-wide instances (see :meth:`StatusTracker._shared`).

Pure Python, no Django.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from .base import FINISHED_STATES, JobState, JobStatus

__all__ = ["NOT_QUERIED", "StatusTracker"]

#: The reason of a job's UNKNOWN status before the tracker's first query that includes it.
NOT_QUERIED = "not queried yet"


class StatusTracker:
    """Registration, the once-per-interval refresh, back-off and counters of a status cache."""

    #: Names the backend in the reason of an ``UNKNOWN`` status after a failed query.
    backend_label: ClassVar[str] = "backend"
    _registry: ClassVar[dict[str, Any]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._registry = {}  # one registry per tracker class
        cls._registry_lock = threading.Lock()

    def __init__(self, *, poll_interval: float, max_backoff: float) -> None:
        self.poll_interval = max(0.0, float(poll_interval))
        self.max_backoff = max(self.poll_interval, float(max_backoff))
        self.queries = 0  # backend calls
        self.failures = 0  # consecutive failed refreshes
        self.last_error = ""
        self._lock = threading.RLock()
        self._tracked: dict[str, float] = {}  # key -> when first tracked (monotonic)
        self._status: dict[str, JobStatus] = {}
        self._last_query = float("-inf")
        self._next_query = float("-inf")

    # ------------------------------------------------------------------ shared instances

    @classmethod
    def _shared(cls, key: str, create: Callable[[], Any], reuse: Callable[[Any], None] | None = None) -> Any:
        """The process-wide tracker registered under ``key``: ``create()`` on first use, else the
        existing one (passed to ``reuse`` first, when given)."""
        with cls._registry_lock:
            tracker = cls._registry.get(key)
            if tracker is None:
                tracker = create()
                cls._registry[key] = tracker
            elif reuse is not None:
                reuse(tracker)
            return tracker

    @classmethod
    def forget_all(cls) -> None:
        """Drop every shared tracker (tests, or a process that changes its configuration)."""
        with cls._registry_lock:
            cls._registry.clear()

    # ------------------------------------------------------------------ registration

    def track(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._tracked.setdefault(key, now)

    def untrack(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._tracked.pop(key, None)
                self._status.pop(key, None)

    @property
    def tracked(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._tracked)

    # ------------------------------------------------------------------ queries

    def statuses(self, keys: Iterable[str], *, force: bool = False) -> dict[str, JobStatus]:
        """Status of each key (registering it), refreshing first when an interval has passed.

        Concurrent callers wait for the one refresh in progress and share its answer.
        """
        keys = list(keys)
        with self._lock:
            self.track(keys)
            if force or time.monotonic() >= max(self._next_query, self._last_query + self.poll_interval):
                if any(k not in self._status or not self._status[k].finished for k in self._tracked):
                    self._refresh()
            return {k: self._status.get(k, JobStatus(JobState.UNKNOWN, None, NOT_QUERIED)) for k in keys}

    def _refresh(self) -> None:  # pragma: no cover - abstract
        """Ask the backend about the open keys (called with the lock held)."""
        raise NotImplementedError

    def _open_keys(self) -> list[str]:
        """Tracked keys whose final state is not known yet, sorted."""
        return sorted(k for k in self._tracked if not (k in self._status and self._status[k].finished))

    def _succeeded(self) -> None:
        """A refresh got its answers: clear the failure count and the back-off."""
        self.failures = 0
        self.last_error = ""
        self._next_query = float("-inf")

    def _failed(self, keys: Iterable[str], error: str) -> None:
        """A refresh failed: back off and make ``keys`` ``UNKNOWN``."""
        self.failures += 1
        self.last_error = error
        backoff = min(self.max_backoff, max(self.poll_interval, 0.5) * (2 ** min(self.failures, 16)))
        self._next_query = self._last_query + backoff
        for key in keys:
            self._status[key] = JobStatus(
                JobState.UNKNOWN, None, f"{self.backend_label} query failed ({error}); next try in {backoff:.0f}s"
            )

    def forget_finished(self) -> None:
        """Stop tracking jobs whose final state is known (a long-lived poller calls this now and
        then; the executor also untracks a job once it has been collected)."""
        with self._lock:
            done = [k for k, s in self._status.items() if s.state in FINISHED_STATES]
            for key in done:
                self._tracked.pop(key, None)
                del self._status[key]
