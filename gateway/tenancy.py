"""Services for tenants and their members."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from audit.services import audit_append

from .choices import Role
from .models import Membership, Tenant


def tenant_create(*, slug: str, name: str, actor=None) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.create(slug=slug, name=name)
        audit_append(event="tenant.created", tenant=tenant, actor=actor, obj=tenant, data={"slug": slug, "name": name})
    return tenant


def member_create(*, tenant: Tenant, username: str, roles: list[str], groups: list[str] | None = None,
                  password: str | None = None, email: str = "", actor=None, clearance=None):
    """A user in `tenant` with `roles`; with `clearance` (a gateway.clearances.ClearanceInput) they
    may read what it dominates, without one nothing labelled."""
    unknown = set(roles) - set(Role.values)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, email=email, password=password)
        Membership.objects.create(user=user, tenant=tenant, roles=list(roles), groups=list(groups or []))
        audit_append(event="member.created", tenant=tenant, actor=actor, object_type="user", object_id=str(user.pk),
                     data={"username": username, "roles": sorted(roles), "groups": sorted(groups or []),
                           "password_set": bool(password)})
        if clearance is not None:
            from .clearances import clearance_set

            clearance_set(tenant=tenant, user=user, data=clearance, actor=actor)
    return user
