"""audit_append: the one way into the audit log."""
from __future__ import annotations

from typing import Any

from django.db import transaction

from .events import EVENTS
from .models import AuditEvent


def audit_append(
    *,
    event: str,
    tenant=None,
    tenant_id=None,
    actor=None,
    obj: Any = None,
    object_type: str = "",
    object_id: str = "",
    outcome: str = "success",
    data: dict | None = None,
) -> AuditEvent:
    """Record one action. Call it inside the transaction of the change it records, so that
    the change and its record commit together or not at all."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    if obj is not None:
        object_type = object_type or type(obj).__name__.lower()
        object_id = object_id or str(obj.pk)
    with transaction.atomic():
        return AuditEvent.objects.create(
            event=event,
            tenant_id=tenant.pk if tenant is not None else tenant_id,
            actor=actor if (actor is not None and actor.is_authenticated) else None,
            object_type=object_type,
            object_id=object_id,
            outcome=outcome,
            data=data or {},
        )
