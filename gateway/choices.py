"""States, kinds and roles, and the table of allowed task transitions."""
from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    PLATFORM_ADMIN = "platform_admin", "Platform admin"
    TENANT_ADMIN = "tenant_admin", "Tenant admin"
    AUTHOR = "author", "Workflow author"
    ANALYST = "analyst", "Analyst"
    AUDITOR = "auditor", "Auditor"  # reads and exports its tenant's log
    PLATFORM_AUDITOR = "platform_auditor", "Platform auditor"  # reads and exports every tenant's log


class RunState(models.TextChoices):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"  # no task failed, but a gate was rejected or expired
    CANCELLED = "CANCELLED"


RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.REJECTED, RunState.CANCELLED})


class TaskKind(models.TextChoices):
    TASK = "task"
    GATE = "gate"


class TaskState(models.TextChoices):
    PENDING = "PENDING"  # waiting for what it needs
    QUEUED = "QUEUED"  # a dispatch message for `attempt` was sent after commit
    RUNNING = "RUNNING"  # claimed by one worker for `attempt`
    RETRY_WAIT = "RETRY_WAIT"  # failed; the next attempt is due at `not_before`
    AWAITING_DECISION = "AWAITING_DECISION"  # a gate: holds no worker, no slot, no poll loop
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # something it needs failed, was rejected or skipped
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"  # a gate decided against
    EXPIRED = "EXPIRED"  # a gate whose deadline passed with on_timeout: expire


TASK_TERMINAL = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.SKIPPED,
        TaskState.CANCELLED,
        TaskState.REJECTED,
        TaskState.EXPIRED,
    }
)

S = TaskState
# from -> allowed to. Self-moves are listed where they carry meaning: QUEUED->QUEUED is a
# re-dispatch under a new attempt (lost message), AWAITING_DECISION->AWAITING_DECISION an escalation.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.QUEUED, S.AWAITING_DECISION, S.SKIPPED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.RETRY_WAIT, S.QUEUED, S.CANCELLED}),
    S.RETRY_WAIT: frozenset({S.QUEUED, S.CANCELLED}),
    S.AWAITING_DECISION: frozenset(
        {S.AWAITING_DECISION, S.SUCCEEDED, S.REJECTED, S.EXPIRED, S.CANCELLED}
    ),
    **{state: frozenset() for state in TASK_TERMINAL},
}
