"""Classification in the database: the policy registry from settings, the labels of a submitted
workflow, the tenant's label register, clearances and what a caller may read.

The label lattice itself is gateway/labels.py (pure Python). This module is where it meets the
models: `readable_banners` is the one answer to "which labels may this person read now"; the
selectors (gateway/selectors.py) turn it into the filter every read goes through.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_append

from .errors import ErrorCode, Forbidden, GatehouseError, NotFound
from .labels import (
    DEFAULT_REGISTRY,
    Clearance as ClearanceValue,
    Label,
    LabelError,
    PolicyRegistry,
    clearance_dominates,
    format_label,
    lub,
    parse_label,
)
from .models import ClassificationLabel, Clearance, ClearanceStatus, Membership, Tenant
from .realtime import events as live


@lru_cache(maxsize=1)
def _registry_from(path: str) -> PolicyRegistry:
    if not path:
        return DEFAULT_REGISTRY
    with open(path, encoding="utf-8") as fh:
        return PolicyRegistry.from_dict(json.load(fh))


def label_registry() -> PolicyRegistry:
    """The configured policies (settings.GATEHOUSE_LABEL_POLICIES_FILE), or the built-in one."""
    return _registry_from(settings.GATEHOUSE_LABEL_POLICIES_FILE)


@lru_cache(maxsize=4096)
def _parse_registered(policy: str, banner: str, registry_id: int) -> Label | None:
    try:
        return parse_label(banner, label_registry().get(policy))
    except LabelError:
        return None  # a policy changed under a stored label: nobody reads it until it is fixed


def label_parse(text: str, *, where: str = "classification") -> Label:
    """A banner under the default policy, or GatehouseError(label_invalid)."""
    try:
        return parse_label(text, registry=label_registry())
    except LabelError as exc:
        raise GatehouseError(ErrorCode.LABEL_INVALID, f"{where}: {exc}",
                             detail=[{"code": exc.code, "where": where}]) from exc


# --------------------------------------------------------------------------- workflows


@dataclass(frozen=True)
class WorkflowLabels:
    run: Label
    tasks: dict[str, Label]  # task id -> effective label

    def all(self) -> set[Label]:
        return {self.run, *self.tasks.values()}


def workflow_labels(workflow) -> WorkflowLabels:
    """The run's label and each task's effective label: the least upper bound of the run's label,
    the task's own, and the effective labels of every task whose artefacts it reads (`inputs`, and
    a gate's `shows`). A task's outputs carry its effective label, so information never flows to a
    lower label. Every malformed or unknown label is reported, with its task and line."""
    issues, own = [], {}
    registry = label_registry()
    try:
        run_label = parse_label(workflow.classification, registry=registry)
    except LabelError as exc:
        raise GatehouseError(ErrorCode.LABEL_INVALID, f"The workflow's classification is not a label: {exc}",
                             detail=[{"code": exc.code, "task": None, "line": None}]) from exc
    for task in workflow.tasks:
        try:
            own[task.id] = parse_label(task.classification, registry=registry)
        except LabelError as exc:
            issues.append({"code": exc.code, "task": task.id, "line": task.line, "message": str(exc)})
    if issues:
        raise GatehouseError(ErrorCode.LABEL_INVALID, f"{len(issues)} task(s) carry a classification that is not a label.",
                             detail=issues)
    effective: dict[str, Label] = {}
    for key in workflow.topological_order():
        task = workflow.task(key)
        sources = [ref.task for ref in (i.ref for i in task.inputs)]
        if task.gate is not None:
            sources += [ref.task for ref in task.gate.shows]
        try:
            effective[key] = lub(run_label, own[key], *(effective[s] for s in sources if s in effective))
        except LabelError as exc:  # labels of different policies
            raise GatehouseError(ErrorCode.LABEL_INVALID, f"task {key}: {exc}",
                                 detail=[{"code": exc.code, "task": key, "line": task.line}]) from exc
    return WorkflowLabels(run_label, effective)


def labels_register(tenant_id: int, labels) -> None:
    """Record the labels in the tenant's register (idempotent), so readers can be matched to them."""
    rows = [ClassificationLabel(tenant_id=tenant_id, policy=label.policy.name, banner=format_label(label),
                                digest=label.digest()) for label in set(labels)]
    known = set(ClassificationLabel.objects.filter(tenant_id=tenant_id, digest__in=[r.digest for r in rows])
                .values_list("digest", flat=True))
    ClassificationLabel.objects.bulk_create(rows, ignore_conflicts=True)
    if any(r.digest not in known for r in rows):
        live.tenant_recheck(tenant_id)  # open sockets cleared for a new label join its group


# --------------------------------------------------------------------------- clearances


def _value(row: Clearance) -> ClearanceValue | None:
    try:
        policy = label_registry().get(row.policy)
        return ClearanceValue(policy, policy.level_index(row.max_level), frozenset(row.compartments),
                              frozenset(row.releasability), row.valid_from, row.valid_until, row.status)
    except LabelError:
        return None


def clearances_of(user, tenant_id: int) -> list[ClearanceValue]:
    rows = Clearance.objects.filter(user_id=user.pk, tenant_id=tenant_id)
    return [v for v in map(_value, rows) if v is not None]


def may_read(clearances: list[ClearanceValue], label: Label, at: datetime | None = None) -> bool:
    at = at or timezone.now()
    return any(clearance_dominates(c, label, at) for c in clearances)


def readable_banners(user, tenant_id: int, *, every_tenant: bool = False) -> frozenset[str]:
    """The registered banners the user's clearances (in their tenant `tenant_id`) dominate now: of
    that tenant's register, or of every tenant's for a platform-wide reader. A banner registered
    under two policies is readable only when both are (it is ambiguous in the rows that carry it)."""
    clearances = clearances_of(user, tenant_id)
    if not clearances:
        return frozenset()
    rows = ClassificationLabel.objects.all() if every_tenant else ClassificationLabel.objects.filter(tenant_id=tenant_id)
    now, registry_id = timezone.now(), id(label_registry())
    yes, no = set(), set()
    for policy, banner in rows.values_list("policy", "banner").distinct():
        label = _parse_registered(policy, banner, registry_id)
        (yes if label is not None and may_read(clearances, label, now) else no).add(banner)
    return frozenset(yes - no)


def require_clearance(user, tenant_id: int, labels, *, what: str) -> None:
    """Refuse (403 label_above_clearance) creating or changing anything the caller could not read."""
    clearances = clearances_of(user, tenant_id)
    now = timezone.now()
    above = sorted({format_label(label) for label in labels if not may_read(clearances, label, now)})
    if above:
        raise Forbidden(ErrorCode.LABEL_ABOVE_CLEARANCE,
                        f"{what} carries a classification your clearance does not cover.")


@dataclass(frozen=True)
class ClearanceInput:
    policy: str | None
    max_level: str
    compartments: list[str]
    releasability: list[str]
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    status: str = ClearanceStatus.ACTIVE


def _validated(data: ClearanceInput) -> ClearanceValue:
    try:
        policy = label_registry().get(data.policy)
        return ClearanceValue(policy, policy.level_index(str(data.max_level).strip().upper()),
                              frozenset(str(c).strip().upper() for c in data.compartments),
                              frozenset(str(r).strip().upper() for r in data.releasability),
                              data.valid_from, data.valid_until, data.status)
    except LabelError as exc:
        raise GatehouseError(ErrorCode.CLEARANCE_INVALID, f"The clearance is not valid: {exc}",
                             detail=[{"code": exc.code}]) from exc


def _snapshot(row: Clearance) -> dict:
    return {"policy": row.policy, "max_level": row.max_level, "compartments": sorted(row.compartments),
            "releasability": sorted(row.releasability), "status": row.status,
            "valid_from": row.valid_from.isoformat() if row.valid_from else None,
            "valid_until": row.valid_until.isoformat() if row.valid_until else None, "revision": row.revision}


def member_of_tenant(tenant: Tenant, user_id) -> Membership:
    membership = Membership.objects.select_related("user").filter(tenant=tenant, user_id=user_id).first()
    if membership is None:
        raise NotFound("No such user.")
    return membership


def clearance_set(*, tenant: Tenant, user, data: ClearanceInput, actor=None) -> Clearance:
    """Grant or change a member's clearance under one policy. Audited with what it was and what
    it is; takes effect on the member's next request. Nobody changes their own clearance."""
    if actor is not None and actor.pk == user.pk:
        raise Forbidden(ErrorCode.CLEARANCE_SELF, "Nobody may change their own clearance.")
    value = _validated(data)
    with transaction.atomic():
        member_of_tenant(tenant, user.pk)
        row = Clearance.objects.select_for_update().filter(tenant=tenant, user=user, policy=value.policy.name).first()
        before = _snapshot(row) if row else None
        if row is None:
            row = Clearance(tenant=tenant, user=user, policy=value.policy.name)
        else:
            row.revision += 1
        row.max_level = value.policy.levels[value.max_level]
        row.compartments = sorted(value.compartments)
        row.releasability = sorted(value.releasability)
        row.valid_from, row.valid_until, row.status = value.valid_from, value.valid_until, value.status
        row.updated_by = actor
        row.save()
        audit_append(event="clearance.granted" if before is None else "clearance.changed", tenant=tenant,
                     actor=actor, object_type="clearance", object_id=str(row.pk),
                     data={"user": user.get_username(), "before": before, "after": _snapshot(row)})
        live.user_recheck(user.pk)  # the member's open pages recompute what they may receive
        _void_approvals(user, actor)
    return row


def _void_approvals(user, actor) -> None:
    """A lowered or revoked clearance voids the member's approvals on open gates it no longer covers."""
    from approvals.services import decisions_void_for

    decisions_void_for(user, actor=actor)


def clearance_revoke(*, tenant: Tenant, clearance: Clearance, actor=None) -> Clearance:
    if actor is not None and actor.pk == clearance.user_id:
        raise Forbidden(ErrorCode.CLEARANCE_SELF, "Nobody may change their own clearance.")
    with transaction.atomic():
        row = Clearance.objects.select_for_update().get(pk=clearance.pk, tenant=tenant)
        before = _snapshot(row)
        row.status, row.revision, row.updated_by = ClearanceStatus.REVOKED, row.revision + 1, actor
        row.save(update_fields=["status", "revision", "updated_by", "updated_at"])
        audit_append(event="clearance.revoked", tenant=tenant, actor=actor, object_type="clearance",
                     object_id=str(row.pk), data={"user": row.user.get_username(), "before": before,
                                                  "after": _snapshot(row)})
        live.user_recheck(row.user_id)
        _void_approvals(row.user, actor)
    return row
