"""Services for tenants and their members."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from .choices import Role
from .models import Membership, Tenant


def tenant_create(*, slug: str, name: str) -> Tenant:
    return Tenant.objects.create(slug=slug, name=name)


def member_create(*, tenant: Tenant, username: str, roles: list[str], groups: list[str] | None = None,
                  password: str | None = None, email: str = ""):
    unknown = set(roles) - set(Role.values)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, email=email, password=password)
        Membership.objects.create(user=user, tenant=tenant, roles=list(roles), groups=list(groups or []))
    return user
