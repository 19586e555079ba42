"""Reads of gates, scoped to the caller's tenant and clearance (gateway.selectors.scoped)."""
from __future__ import annotations

from django.db.models import Q, QuerySet

from gateway.errors import NotFound
from gateway.selectors import membership_for, scoped

from .choices import GateState
from .models import Gate


def gate_list_for_user(user) -> QuerySet[Gate]:
    return scoped(Gate.objects.all(), user).select_related("task", "run")


def gate_list_awaiting_user(user) -> QuerySet[Gate]:
    """Open gates this user may decide (their roles or groups are among the approvers)."""
    from .services import assigned_gates

    principals = membership_for(user).principals()
    return (
        gate_list_for_user(user)
        .filter(Q(eligibility__principal__in=principals) | Q(pk__in=assigned_gates(user).values("pk")),
                state=GateState.OPEN)
        .exclude(decisions__approver=user)
        .distinct()
        .order_by("deadline", "opened_at")
    )


def gate_get_for_user(gate_id, user) -> Gate:
    gate = gate_list_for_user(user).filter(id=gate_id).first()
    if gate is None:
        raise NotFound("No such gate.")
    return gate


def gate_assignees(gate: Gate) -> list[str]:
    """Usernames holding a per-object grant to decide the gate."""
    from .models import GateUserObjectPermission

    return sorted(GateUserObjectPermission.objects.filter(content_object=gate, permission__codename="decide_gate")
                  .values_list("user__username", flat=True))
