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
    from .models import GateEligibility
    from .services import assigned_gate_filter

    membership = membership_for(user)
    # Semi-joins (IN subqueries), not joins: no row is repeated, so no DISTINCT over wide rows.
    eligible = GateEligibility.objects.filter(tenant_id=membership.tenant_id,
                                              principal__in=membership.principals()).values("gate_id")
    return (
        gate_list_for_user(user)
        .filter(Q(pk__in=eligible) | assigned_gate_filter(user), state=GateState.OPEN)
        .exclude(decisions__approver=user)
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


def gate_list_with_progress(gates: QuerySet[Gate]) -> QuerySet[Gate]:
    """`gates` annotated with `approvals_given` (distinct approvers of the current revision whose
    approval is not voided) and `approvals_needed` (how many more release the gate, at least 0)."""
    from django.db.models import Count, F, IntegerField, OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce, Greatest

    from .choices import Outcome
    from .models import Decision

    given = (Decision.objects.filter(gate=OuterRef("pk"), gate_revision=OuterRef("revision"), outcome=Outcome.APPROVE,
                                     voided_at__isnull=True)
             .order_by().values("gate").annotate(n=Count("approver", distinct=True)).values("n"))
    gates = gates.annotate(approvals_given=Coalesce(Subquery(given, output_field=IntegerField()), Value(0)))
    return gates.annotate(approvals_needed=Greatest(F("required_approvals") - F("approvals_given"), Value(0)))
