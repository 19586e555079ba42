"""What the submit-then-poll backends (``slurm``, ``batch``) share on top of :class:`Executor`.

Pure Python, no Django.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Executor, JobHandle, JobState, JobStatus

__all__ = ["RemoteExecutor"]


class RemoteExecutor(Executor):
    """A backend that enforces a task's time limit itself (a scheduler's wall-clock limit).

    Subclasses set ``timeout_grace``: how long past a task's timeout :meth:`wait` trusts the
    backend to enforce it."""

    synchronous = False
    timeout_grace: float = 120.0
    #: Jobs that one backend query answers together (a cluster, a queue): the engine's poller
    #: polls each group once per round, under one lock.
    poll_group: str = ""

    def wait(
        self,
        handle: JobHandle,
        *,
        timeout: float | None,
        should_cancel: Callable[[], bool] | None = None,
        heartbeat: Callable[[], None] | None = None,
        interval: float = 1.0,
    ) -> JobStatus:
        """Poll until the job finishes. The backend enforces the time limit itself; ``timeout`` is
        counted from when the job is first seen running (not while it queues), and only
        ``timeout + timeout_grace`` later does this method cancel it and report TIMED_OUT."""
        deadline: list[float] = []  # set once, when the job is first seen running

        def deadline_of(status: JobStatus | None, now: float) -> float | None:
            if not deadline and timeout is not None and status is not None and status.state == JobState.RUNNING:
                deadline.append(now + float(timeout) + self.timeout_grace)
            return deadline[0] if deadline else None

        return self._wait_loop(
            handle,
            deadline_of=deadline_of,
            timed_out_reason=f"still running {timeout:g}s after its time limit" if timeout is not None else "",
            should_cancel=should_cancel,
            heartbeat=heartbeat,
            interval=interval,
            sleep_to_deadline=False,
        )
