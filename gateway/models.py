"""Tenancy, runs, task instances, their transition history and artefacts.

Every row that holds tenant data carries its tenant, so scoping is one filter.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from .choices import TASK_TERMINAL, Role, RunState, TaskKind, TaskState


class Tenant(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user's place in one tenant: the roles and groups they hold there."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="memberships")
    roles = models.JSONField(default=list)  # values of Role
    groups = models.JSONField(default=list)  # approver groups, e.g. "senior-analyst"

    def has_role(self, role: Role | str) -> bool:
        return str(role) in self.roles

    def principals(self) -> set[str]:
        """Role and group names this member answers to (for gate `approvers`), and `user:<username>`
        for a gate that names them."""
        return set(self.roles) | set(self.groups) | {f"user:{self.user.get_username()}"}


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="runs")
    submitter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    name = models.CharField(max_length=100)
    spec_source = models.TextField()  # the YAML exactly as submitted
    spec_digest = models.CharField(max_length=64)
    classification = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.RUNNING)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]


class TaskInstance(models.Model):
    """One task of one run. Rows are created in topological order, so a task's id is always
    greater than the ids of what it needs: locking in id order never deadlocks."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    # No index of its own: the unique (run, key) index serves every lookup by run. A second index on
    # run alone cost an index entry per changed row version, and PostgreSQL's generic plan for the
    # finish's lookup of a dependant by (run, key) could take it and read the whole run per key.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    key = models.CharField(max_length=64)  # the task id in the workflow file
    kind = models.CharField(max_length=8, choices=TaskKind.choices)
    spec = models.JSONField()  # gateway.spec.TaskSpec.to_dict()
    dependants = models.JSONField(default=list)  # keys of the tasks that need this one
    needs_remaining = models.IntegerField()  # needs not yet SUCCEEDED
    backend = models.CharField(max_length=64)
    classification = models.CharField(max_length=200)
    state = models.CharField(max_length=20, choices=TaskState.choices, default=TaskState.PENDING)
    reason = models.TextField(blank=True)
    attempt = models.IntegerField(default=0)  # increases with every dispatch
    # QUEUED with no message sent: a worker that finishes a task of the same run claims it next
    # (gateway/worker.py, the dispatch window); the reconciler sends its message if none does.
    held = models.BooleanField(default=False)
    failures = models.IntegerField(default=0)  # attempts that failed (counted against `retries`)
    recoveries = models.IntegerField(default=0)  # attempts lost with their worker
    exit_code = models.IntegerField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)  # RETRY_WAIT: when the next attempt is due
    state_changed_at = models.DateTimeField(auto_now_add=True)
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    external = models.JSONField(null=True, blank=True)  # executor JobHandle data
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="task_unique_key_per_run")]
        indexes = [
            # "Is anything of this run still open?" stays cheap however large the run.
            models.Index(fields=["run"], condition=~Q(state__in=TASK_TERMINAL), name="task_open_by_run"),
            # A run's held tasks, in the order a worker claims them.
            models.Index(fields=["run", "id"], condition=Q(state=TaskState.QUEUED, held=True), name="task_held_by_run"),
            # The reconciler's scans.
            models.Index(
                fields=["state", "state_changed_at"],
                condition=Q(state__in=[TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRY_WAIT]),
                name="task_inflight_by_state",
            ),
        ]

    @property
    def terminal(self) -> bool:
        return self.state in TASK_TERMINAL


class TaskTransition(models.Model):
    """The history of every task move. `transition_id` is unique: a retried move is a no-op."""

    transition_id = models.CharField(max_length=200, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    task = models.ForeignKey(TaskInstance, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    attempt = models.IntegerField()
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    at = models.DateTimeField(auto_now_add=True)


class Artefact(models.Model):
    """A named, content-addressed output of a task (or a gate's analyst input)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artefacts")
    task = models.ForeignKey(TaskInstance, on_delete=models.CASCADE, related_name="artefacts")
    attempt = models.IntegerField()
    name = models.CharField(max_length=128)  # declared output name, or "stdout"/"stderr"/"input"
    digest = models.CharField(max_length=64)
    size = models.BigIntegerField()
    media_type = models.CharField(max_length=200)
    classification = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt", "name"], name="artefact_unique_per_attempt")
        ]


class ClassificationLabel(models.Model):
    """A label in use in a tenant, registered once when a run that carries it is submitted.

    Labelled rows (runs, tasks, gates, artefacts, audit entries) keep their label as the canonical
    banner in `classification` (audit: `label`). What a caller may read is the set of registered
    banners their clearance dominates, computed in Python (the lattice is not SQL) and applied as
    `classification IN (...)`: a row whose banner is not registered, or not dominated, is not found.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    policy = models.CharField(max_length=64)
    banner = models.CharField(max_length=1024)
    digest = models.CharField(max_length=64)  # SHA-256 of the canonical form (gateway.labels.Label.digest)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "digest"], name="label_once_per_tenant")]


class ClearanceStatus(models.TextChoices):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class Clearance(models.Model):
    """What one member of a tenant may read under one policy (see gateway.labels.Clearance).
    No clearance, or one that is not active and inside its window, reads nothing labelled."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="clearances")
    policy = models.CharField(max_length=64)
    max_level = models.CharField(max_length=64)  # the level's name, so adding levels to a policy changes nothing
    compartments = models.JSONField(default=list)
    releasability = models.JSONField(default=list)  # the codes the holder belongs to
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ClearanceStatus.choices, default=ClearanceStatus.ACTIVE)
    revision = models.IntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user", "policy"], name="clearance_once_per_policy")]
