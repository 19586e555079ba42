"""Reads scoped to the caller's tenant. An object of another tenant is simply not found."""
from __future__ import annotations

from django.db.models import QuerySet

from .errors import ErrorCode, Forbidden, NotFound
from .models import Artefact, Membership, Run, TaskInstance


def membership_for(user) -> Membership:
    membership = getattr(user, "membership", None) if user.is_authenticated else None
    if membership is None:
        raise Forbidden(ErrorCode.NO_TENANT, "Your account belongs to no tenant.")
    return membership


def run_list_for_user(user) -> QuerySet[Run]:
    return Run.objects.filter(tenant_id=membership_for(user).tenant_id).select_related("submitter")


def run_get_for_user(run_id, user, *, for_update: bool = False) -> Run:
    qs = run_list_for_user(user)
    if for_update:
        qs = qs.select_for_update()
    run = qs.filter(id=run_id).first()
    if run is None:
        raise NotFound("No such run.")
    return run


def task_list_for_run(run: Run) -> QuerySet[TaskInstance]:
    return TaskInstance.objects.filter(run=run).order_by("id")


def artefact_list_for_user(user) -> QuerySet[Artefact]:
    return Artefact.objects.filter(tenant_id=membership_for(user).tenant_id).select_related("task")


def artefact_get_for_user(artefact_id, user) -> Artefact:
    artefact = artefact_list_for_user(user).filter(id=artefact_id).first()
    if artefact is None:
        raise NotFound("No such artefact.")
    return artefact
