"""Reads scoped to the caller: their tenant and their clearance. This is the one place both are
applied; every read of runs, tasks, gates, artefacts and audit entries goes through `scoped`.

An object of another tenant, or above the caller's clearance, is simply not found: it answers 404
and is absent from lists and counts, never 403 (which would confirm it exists).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from . import dbscope
from .errors import ErrorCode, Forbidden, NotFound
from .models import Artefact, Membership, Run, TaskInstance


def membership_for(user) -> Membership:
    membership = getattr(user, "membership", None) if user.is_authenticated else None
    if membership is None:
        raise Forbidden(ErrorCode.NO_TENANT, "Your account belongs to no tenant.")
    dbscope.bind_tenant(membership.tenant_id)  # row-level security: this connection sees this tenant only
    return membership


@dataclass(frozen=True)
class Scope:
    """What one caller may read now: rows of `tenant_id` (None: every tenant, for platform-wide
    readers) whose classification is one of `banners`."""

    tenant_id: int | None
    banners: frozenset[str]

    def apply(self, qs: QuerySet, *, label_field: str = "classification", tenant_field: str = "tenant_id",
              unlabelled: bool = False) -> QuerySet:
        if self.tenant_id is not None:
            qs = qs.filter(**{tenant_field: self.tenant_id})
        readable = Q(**{f"{label_field}__in": sorted(self.banners)})
        if unlabelled:  # audit entries of actions that touched nothing labelled (logins, searches)
            readable |= Q(**{label_field: ""})
        return qs.filter(readable)


def scope_for(user, *, every_tenant: bool = False) -> Scope:
    """The caller's scope, computed afresh (a changed clearance counts from the next call)."""
    from .clearances import readable_banners

    membership = membership_for(user)
    banners = readable_banners(user, membership.tenant_id, every_tenant=every_tenant)
    return Scope(None if every_tenant else membership.tenant_id, banners)


def scoped(qs: QuerySet, user, **kwargs) -> QuerySet:
    return scope_for(user).apply(qs, **kwargs)


def visible_to(obj, user) -> bool:
    """The same rule for one object already in hand: write paths re-check it (DRF runs no object
    permissions on create, and a service may be called with an object read elsewhere)."""
    scope = scope_for(user)
    return obj.tenant_id == scope.tenant_id and obj.classification in scope.banners


def run_list_for_user(user) -> QuerySet[Run]:
    return scoped(Run.objects.all(), user).select_related("submitter")


def run_get_for_user(run_id, user, *, for_update: bool = False) -> Run:
    qs = run_list_for_user(user)
    if for_update:
        qs = qs.select_for_update()
    run = qs.filter(id=run_id).first()
    if run is None:
        raise NotFound("No such run.")
    return run


def task_list_for_user(user) -> QuerySet[TaskInstance]:
    return scoped(TaskInstance.objects.all(), user)


def task_list_for_run(run: Run, user) -> QuerySet[TaskInstance]:
    """The tasks of a run (already read through run_get_for_user) that the caller may see."""
    return task_list_for_user(user).filter(run=run).order_by("id")


def artefact_list_for_user(user) -> QuerySet[Artefact]:
    return scoped(Artefact.objects.all(), user).select_related("task")


def artefact_get_for_user(artefact_id, user) -> Artefact:
    artefact = artefact_list_for_user(user).filter(id=artefact_id).first()
    if artefact is None:
        raise NotFound("No such artefact.")
    return artefact
