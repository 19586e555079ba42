"""Reads of gates, scoped to the caller's tenant."""
from __future__ import annotations

from django.db.models import QuerySet

from gateway.errors import NotFound
from gateway.selectors import membership_for

from .choices import GateState
from .models import Gate


def gate_list_for_user(user) -> QuerySet[Gate]:
    return Gate.objects.filter(tenant_id=membership_for(user).tenant_id).select_related("task", "run")


def gate_list_awaiting_user(user) -> QuerySet[Gate]:
    """Open gates this user may decide (their roles or groups are among the approvers)."""
    principals = membership_for(user).principals()
    return (
        gate_list_for_user(user)
        .filter(state=GateState.OPEN, eligibility__principal__in=principals)
        .exclude(decisions__approver=user)
        .distinct()
        .order_by("deadline", "opened_at")
    )


def gate_get_for_user(gate_id, user) -> Gate:
    gate = gate_list_for_user(user).filter(id=gate_id).first()
    if gate is None:
        raise NotFound("No such gate.")
    return gate
