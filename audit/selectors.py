"""Reads of the audit log, scoped: a tenant's auditor sees that tenant's entries; a platform
auditor sees every entry (and may narrow to one tenant)."""
from __future__ import annotations

from django.db.models import QuerySet

from gateway.choices import Role
from gateway.errors import NotFound
from gateway.models import Tenant
from gateway.selectors import membership_for

from .models import AuditEntry


def is_platform_auditor(user) -> bool:
    return membership_for(user).has_role(Role.PLATFORM_AUDITOR)


def audit_scope_for_user(user, tenant_slug: str | None = None) -> Tenant | None:
    """The tenant whose log the user may read (None: the whole log, platform auditors only)."""
    membership = membership_for(user)
    if is_platform_auditor(user):
        if not tenant_slug:
            return None
        tenant = Tenant.objects.filter(slug=tenant_slug).first()
        if tenant is None:
            raise NotFound("No such tenant.")
        return tenant
    if tenant_slug and tenant_slug != membership.tenant.slug:
        raise NotFound("No such tenant.")
    return membership.tenant


def audit_entries_for_user(user, tenant_slug: str | None = None) -> QuerySet[AuditEntry]:
    scope = audit_scope_for_user(user, tenant_slug)
    entries = AuditEntry.objects.select_related("leaf", "tenant")
    return entries if scope is None else entries.filter(tenant=scope)
