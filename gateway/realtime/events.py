"""What the engine and the services publish, always after commit (`transaction.on_commit`).

Each function is called inside the writer's transaction with the objects it just changed, builds
the messages from them at once (ids and states only, never titles or content) and leaves sending
to an on-commit callback that only queues them (publisher.py). A rolled-back transaction publishes
nothing; a committed one is never delayed or failed by publishing.

Every message about an object goes to the group of its tenant and label (groups.label_group): a
socket receives it only while its user may read that label in that tenant.
"""
from __future__ import annotations

from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.dispatch import receiver

from .groups import label_group, tenant_group, user_group
from .publisher import Batch, publisher

EVENT = "live.event"  # handled by consumer.Hub: on to the sockets holding the group
RECHECK = "live.recheck"  # handled by consumer.Hub: the sockets recompute their groups


def _envelope(tenant_id: int, banner: str, event: dict, *, unless: str | None = None):
    group = label_group(tenant_id, banner)
    message = {"type": EVENT, "group": group, "events": [event]}
    if unless:
        message["unless"] = unless  # a socket also in this group gets the other message instead
    return group, message


def _on_commit(batch: Batch) -> None:
    if batch:
        transaction.on_commit(lambda: publisher.submit(batch))


def task_states(tasks) -> None:
    """task.state for each task, in its current state."""
    _on_commit([
        _envelope(t.tenant_id, t.classification,
                  {"type": "task.state", "run": str(t.run_id), "task": t.key, "state": t.state})
        for t in tasks
    ])


def run_state(run) -> None:
    _on_commit([_envelope(run.tenant_id, run.classification,
                          {"type": "run.state", "run": str(run.id), "state": run.state})])


def _gate(kind: str, gate) -> dict:
    return {"type": kind, "gate": str(gate.id), "run": str(gate.run_id)}


def gate_opened(gate) -> None:
    _on_commit([_envelope(gate.tenant_id, gate.classification, _gate("gate.opened", gate))])


def gate_changed(gate) -> None:
    """An approval recorded or voided, approvers or assignees changed: who must act may differ."""
    _on_commit([_envelope(gate.tenant_id, gate.classification, _gate("gate.changed", gate))])


def gate_closed(gate) -> None:
    """Decided, expired, rejected by timeout or cancelled."""
    _on_commit([_envelope(gate.tenant_id, gate.classification, _gate("gate.closed", gate))])


def gate_relabelled(gate, before: str) -> None:
    """A raised label: readers of the new label (who read the old one too) are told it changed;
    readers of the old label only, that it left them."""
    new = _envelope(gate.tenant_id, gate.classification, _gate("gate.changed", gate))
    old = _envelope(gate.tenant_id, before, _gate("gate.closed", gate), unless=new[0])
    _on_commit([old, new])


def user_recheck(user_id: int) -> None:
    """The user's clearance, roles or account changed: each of their sockets recomputes its groups."""
    group = user_group(user_id)
    _on_commit([(group, {"type": RECHECK, "group": group, "why": "user"})])


def tenant_recheck(tenant_id: int) -> None:
    """A label was registered in the tenant: sockets cleared for it join its group."""
    group = tenant_group(tenant_id)
    _on_commit([(group, {"type": RECHECK, "group": group, "why": "labels"})])


@receiver(user_logged_out, dispatch_uid="gatehouse-live-logout")
def _logged_out(sender, request, user, **kwargs) -> None:
    """A logout (or a forced one, gateway/identity/middleware.py) closes the session's sockets."""
    if user is not None and user.pk is not None:
        user_recheck(user.pk)
