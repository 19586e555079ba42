"""API permissions. Tenancy is enforced by the selectors; roles here."""
from rest_framework.permissions import BasePermission

from .choices import Role


class IsTenantMember(BasePermission):
    """Authenticated and a member of a tenant."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and getattr(user, "membership", None) is not None)


def has_role(user, *roles: Role) -> bool:
    membership = getattr(user, "membership", None)
    return membership is not None and any(membership.has_role(r) for r in roles)


class CanSubmit(IsTenantMember):
    message = "Submitting and cancelling runs needs the workflow author role."

    def has_permission(self, request, view) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return super().has_permission(request, view)
        return super().has_permission(request, view) and has_role(request.user, Role.AUTHOR, Role.TENANT_ADMIN)


class IsAuditor(IsTenantMember):
    message = "The audit log is open to auditors only."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and has_role(request.user, Role.AUDITOR, Role.PLATFORM_AUDITOR)


class IsTenantAdmin(IsTenantMember):
    message = "Managing a tenant's users and clearances needs the tenant admin role."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and has_role(request.user, Role.TENANT_ADMIN)
