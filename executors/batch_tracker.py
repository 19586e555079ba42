"""One batched AWS Batch status query per queue per poll interval, shared by every caller in the process.

:class:`BatchTracker` keeps the set of Batch jobs this process cares about (callers register job
ids: ``"<uuid>"`` for a job, ``"<uuid>:4"`` for element 4 of an array job) and answers their status
from a cache that at most one refresh per ``poll_interval`` updates. A refresh asks
``DescribeJobs`` for every open job, at most :data:`DESCRIBE_BATCH` ids a call (the API's limit):
250 open jobs cost 3 calls an interval, whatever the number of threads polling them.
:attr:`BatchTracker.queries` counts the ``DescribeJobs`` calls and :attr:`BatchTracker.refreshes`
the refreshes, so benchmarks and tests can check both.

Rules (as :class:`~executors.slurm_tracker.SlurmTracker`):

* a job seen in a final state keeps it (Batch never changes a finished job again);
* a call that fails (throttled, network, expired credentials) makes the unfinished jobs it should
  have answered ``UNKNOWN`` and backs off (``poll_interval * 2**n``, at most ``max_backoff``);
* a job missing from the answer is ``UNKNOWN`` for ``missing_grace`` seconds after it was first
  tracked, then ``LOST`` (Batch forgets jobs some time after they end).

Trackers are shared per key: the endpoint, region, queue and the identity of the credentials
(a digest of the access key id, never the key itself), so two tenants with a queue of the same
name in different accounts never share one.

Pure Python, no Django. See :mod:`executors.batch` for the state mapping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .base import JobState, JobStatus
from .tracker import StatusTracker

__all__ = ["DESCRIBE_BATCH", "BatchTracker"]

#: ``DescribeJobs`` takes at most this many job ids per call.
DESCRIBE_BATCH = 100


class BatchTracker(StatusTracker):
    """The shared status cache of one queue. Get it with :meth:`for_key`."""

    backend_label = "AWS Batch"

    def __init__(
        self,
        key: str,
        client: Any,
        *,
        status_of: Callable[[dict[str, Any]], JobStatus],
        poll_interval: float = 10.0,
        max_backoff: float = 300.0,
        missing_grace: float = 120.0,
        batch_size: int = DESCRIBE_BATCH,
    ) -> None:
        super().__init__(poll_interval=poll_interval, max_backoff=max_backoff)
        self.key = key
        self.client = client
        self.status_of = status_of
        self.missing_grace = max(0.0, float(missing_grace))
        self.batch_size = max(1, min(DESCRIBE_BATCH, int(batch_size)))
        # ``queries`` counts DescribeJobs calls
        self.refreshes = 0  # refreshes (each makes ceil(open / batch_size) calls)

    @classmethod
    def for_key(cls, key: str, client: Any, **options: Any) -> BatchTracker:
        """The process-wide tracker of ``key`` (created on first use with these options). A newer
        client (credentials renewed) replaces the one it queries with."""

        def reuse(tracker: BatchTracker) -> None:
            tracker.client = client

        return cls._shared(key, lambda: cls(key, client, **options), reuse)

    def _refresh(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        open_keys = self._open_keys()
        self._last_query = now = time.monotonic()
        self.refreshes += 1
        chunks = [open_keys[i : i + self.batch_size] for i in range(0, len(open_keys), self.batch_size)]
        for index, chunk in enumerate(chunks):
            self.queries += 1
            try:
                answer = self.client.describe_jobs(jobs=chunk)
            except (ClientError, BotoCoreError) as exc:
                self._failed([k for rest in chunks[index:] for k in rest], _error_text(exc))
                return
            found = {job.get("jobId"): job for job in answer.get("jobs") or []}
            for key in chunk:
                job = found.get(key)
                if job is not None:
                    self._status[key] = self.status_of(job)
                elif now - self._tracked.get(key, now) >= self.missing_grace:
                    self._status[key] = JobStatus(
                        JobState.LOST, None, f"AWS Batch no longer knows job {key}: its outcome is unknown"
                    )
                else:
                    self._status[key] = JobStatus(JobState.UNKNOWN, None, "not known to AWS Batch yet")
        self._succeeded()


def _error_text(exc: Exception) -> str:
    """A ClientError's code and message (never the request, which carries signed headers)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'error')}: {str(error.get('Message', ''))[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
