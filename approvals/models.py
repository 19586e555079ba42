"""A gate is the human side of a gate task; decisions are the analysts' answers to it."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from gateway.models import Run, TaskInstance, Tenant

from .choices import GateState, Outcome


class Gate(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="gates")
    task = models.OneToOneField(TaskInstance, on_delete=models.CASCADE, related_name="gate")
    title = models.CharField(max_length=500)
    instructions = models.TextField(blank=True)
    options = models.JSONField()  # [{"name", "label", "outcome"}]
    form = models.JSONField(null=True, blank=True)  # JSON Schema of the analyst's input
    shows = models.JSONField(default=list)  # [{"ref": "task/name", "artefact": uuid}]
    approvers = models.JSONField()  # role or group names
    required_approvals = models.IntegerField(default=1)
    required_rejections = models.IntegerField(default=1)
    classification = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=GateState.choices, default=GateState.OPEN)
    revision = models.IntegerField(default=1)
    on_timeout = models.CharField(max_length=16)
    escalate_to = models.JSONField(default=list)
    escalated = models.BooleanField(default=False)
    timeout_seconds = models.FloatField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    outcome_reason = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "state", "-opened_at"]),
            models.Index(fields=["deadline"], condition=Q(state="OPEN"), name="gate_open_deadline"),
            # The inbox: a tenant's open gates in the order it lists them (approvals.selectors).
            models.Index(fields=["tenant", "deadline", "opened_at"], condition=Q(state="OPEN"),
                         name="gate_open_by_tenant"),
        ]
        # A per-object grant (django-guardian) for what does not follow from roles: a tenant admin
        # assigns one analyst to one gate. Never granted globally: every check passes
        # accept_global_perms=False, so a global grant could not cross tenants even if one were made.
        permissions = [("decide_gate", "May decide this gate without being among its approvers")]

    def option(self, name: str) -> dict | None:
        return next((o for o in self.options if o["name"] == name), None)


class Decision(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="decisions")
    gate_revision = models.IntegerField()
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions")
    option = models.CharField(max_length=100)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    input = models.JSONField(null=True, blank=True)
    input_digest = models.CharField(max_length=64)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # An approval stops counting when its maker no longer may decide the gate (clearance revoked,
    # expired or lowered; role, group or assignment removed) or the gate's revision moved on.
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            # One person counts once per gate revision, however many requests race.
            models.UniqueConstraint(fields=["gate", "gate_revision", "approver"], name="decision_once_per_approver")
        ]


class GateEligibility(models.Model):
    """Who may decide a gate: one row per role or group named in its approvers.
    A plain table (rather than a JSON list) so "gates I may decide" is one indexed join."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="eligibility")
    principal = models.CharField(max_length=100)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["gate", "principal"], name="gate_principal_once")]
        indexes = [models.Index(fields=["principal", "gate"])]


class GateUserObjectPermission(UserObjectPermissionBase):
    """Direct foreign-key table for per-gate user grants (not guardian's generic one), so a grant
    is a real reference to the gate and disappears with it."""

    content_object = models.ForeignKey(Gate, on_delete=models.CASCADE)


class GateGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Gate, on_delete=models.CASCADE)


# Approvers' signing keys and accepted decision signatures live in approvals/signing/models.py.
from .signing.models import ApproverKey, ApproverPrivateKey, DecisionSignature  # noqa: E402,F401
