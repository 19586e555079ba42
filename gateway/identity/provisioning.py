"""Tenant admins manage their tenant's users: create, change roles, disable/enable, list.

In oidc mode Keycloak is the source of truth: each service writes the local rows in a transaction and
calls the Keycloak Admin API (python-keycloak's KeycloakAdmin) inside it, so a failed Keycloak call rolls
the local rows back; a user created in Keycloak before a later step failed is deleted again. In dev mode
the local tables only (gateway.tenancy.member_create).

A tenant admin may grant the tenant roles only (never platform_admin or platform_auditor), and only in
their own tenant: the tenant always comes from the caller, never from the request.
"""
from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.db import transaction
from keycloak.exceptions import KeycloakError

from audit.services import audit_append
from gateway.choices import Role
from gateway.errors import Conflict, ErrorCode, Forbidden, GatehouseError
from gateway.models import Membership, Tenant
from gateway.realtime import events as live
from gateway.tenancy import member_create

from .conf import admin, auth_settings, issuer, oidc_enabled, role_map
from .models import ExternalIdentity

log = logging.getLogger(__name__)
TENANT_ROLES = frozenset({Role.TENANT_ADMIN, Role.AUTHOR, Role.ANALYST, Role.AUDITOR})


class ProviderFailed(GatehouseError):
    status = 502

    def __init__(self, message: str):
        super().__init__(ErrorCode.IDENTITY_UNAVAILABLE, message)


def _check_roles(roles) -> list[str]:
    roles = sorted(set(roles))
    refused = [r for r in roles if r not in TENANT_ROLES]
    if refused:
        raise Forbidden(ErrorCode.ROLE_NOT_ALLOWED, "A tenant admin grants tenant roles only.",
                        detail={"roles": refused})
    return roles


def _keycloak_role_names(roles) -> list[str]:
    """Realm role names that map to these Gatehouse roles (the first realm role of each in ROLE_MAP)."""
    inverse = {}
    for source, role in role_map().items():
        kind, _, name = source.partition(":")
        if kind == "realm":
            inverse.setdefault(role, name)
    missing = [r for r in roles if r not in inverse]
    if missing:
        raise ProviderFailed(f"no Keycloak realm role maps to {missing}")
    return [inverse[r] for r in roles]


def _group_path(tenant: Tenant, group: str = "") -> str:
    prefix = "/" + auth_settings()["TENANT_GROUP_PREFIX"].strip("/")
    return f"{prefix}/{tenant.slug}" + (f"/{group}" if group else "")


def _ensure_group(kc, path: str) -> str:
    """The id of the group at `path`, created (with its parents) when absent."""
    try:
        return kc.get_group_by_path(path)["id"]
    except KeycloakError as exc:
        if exc.response_code != 404:
            raise
    parent_path, _, name = path.rpartition("/")
    parent = _ensure_group(kc, parent_path) if parent_path else None
    return kc.create_group({"name": name}, parent=parent, skip_exists=True) or kc.get_group_by_path(path)["id"]


def _link(user) -> str | None:
    link = ExternalIdentity.objects.filter(user=user, issuer=issuer()).first()
    return link.subject if link else None


def tenant_user_create(*, tenant: Tenant, actor, username: str, roles, email: str = "", groups=(),
                       password: str | None = None):
    roles = _check_roles(roles)
    groups = sorted(set(groups))
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise Conflict(ErrorCode.USER_EXISTS, "A user of that name exists.")
    if not oidc_enabled():
        return member_create(tenant=tenant, username=username, roles=roles, groups=groups, email=email,
                             password=password, actor=actor)
    kc, subject = admin(), None
    try:
        with transaction.atomic():
            user = User.objects.create_user(username=username, email=email, password=None)
            Membership.objects.create(user=user, tenant=tenant, roles=roles, groups=groups)
            audit_append(event="member.created", tenant=tenant, actor=actor, object_type="user",
                         object_id=str(user.pk), data={"username": username, "roles": roles, "groups": groups,
                                                       "source": "keycloak", "password_set": bool(password)})
            paths = [_group_path(tenant)] + [_group_path(tenant, g) for g in groups]
            for path in paths:
                _ensure_group(kc, path)
            payload = {"username": username, "email": email, "enabled": True, "groups": paths}
            if password:
                payload["credentials"] = [{"type": "password", "value": password, "temporary": True}]
            subject = kc.create_user(payload)
            if roles:
                kc.assign_realm_roles(subject, [kc.get_realm_role(name) for name in _keycloak_role_names(roles)])
            ExternalIdentity.objects.create(user=user, issuer=issuer(), subject=subject)
    except KeycloakError as exc:
        _undo_create(kc, subject)
        if exc.response_code == 409:
            raise Conflict(ErrorCode.USER_EXISTS, "A user of that name exists in the identity provider.") from exc
        raise ProviderFailed(f"the identity provider refused the change ({exc.response_code})") from exc
    except OSError as exc:
        _undo_create(kc, subject)
        raise ProviderFailed("the identity provider did not answer") from exc
    except BaseException:
        _undo_create(kc, subject)
        raise
    return User.objects.select_related("membership").get(pk=user.pk)


def _undo_create(kc, subject: str | None) -> None:
    if subject is None:
        return
    try:
        kc.delete_user(subject)
    except (KeycloakError, OSError) as exc:  # nothing local was kept; the stray Keycloak user is logged
        log.error("could not delete Keycloak user %s after a failed provisioning: %s", subject, exc)


def tenant_user_set_roles(*, tenant: Tenant, actor, user, roles):
    if actor is not None and user.pk == actor.pk:
        raise Forbidden(ErrorCode.PERMISSION_DENIED, "You cannot change your own roles.")
    roles = _check_roles(roles)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(user=user, tenant=tenant)
        before = sorted(membership.roles)
        # Platform roles are not the tenant admin's to give or take.
        membership.roles = sorted(set(roles) | {r for r in membership.roles if r not in TENANT_ROLES})
        membership.save(update_fields=["roles"])
        audit_append(event="member.roles_changed", tenant=tenant, actor=actor, object_type="user",
                     object_id=str(user.pk), data={"before": before, "after": membership.roles})
        live.user_recheck(user.pk)  # open pages follow the new roles
        subject = _link(user) if oidc_enabled() else None
        if subject is not None:
            _call(lambda kc: _set_keycloak_roles(kc, subject, roles))
    return membership


def tenant_user_set_groups(*, tenant: Tenant, actor, user, groups):
    """Set a member's approver groups (Keycloak: subgroups of the tenant's group). Nobody changes
    their own. Audited before and after; open pages follow it at once."""
    if actor is not None and user.pk == actor.pk:
        raise Forbidden(ErrorCode.PERMISSION_DENIED, "You cannot change your own approver groups.")
    groups = sorted({g.strip() for g in groups if g and g.strip()})
    bad = [g for g in groups if "/" in g or len(g) > 100]
    if bad:
        raise GatehouseError(ErrorCode.INVALID, "A group name has no '/' and at most 100 characters.",
                             detail={"groups": bad})
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(user=user, tenant=tenant)
        before = sorted(membership.groups)
        membership.groups = groups
        membership.save(update_fields=["groups"])
        audit_append(event="member.groups_changed", tenant=tenant, actor=actor, object_type="user",
                     object_id=str(user.pk), data={"before": before, "after": groups})
        live.user_recheck(user.pk)
        subject = _link(user) if oidc_enabled() else None
        if subject is not None:
            _call(lambda kc: _set_keycloak_groups(kc, tenant, subject, before, groups))
    return membership


def _set_keycloak_groups(kc, tenant: Tenant, subject: str, before: list[str], after: list[str]) -> None:
    for group in sorted(set(after) - set(before)):
        kc.group_user_add(subject, _ensure_group(kc, _group_path(tenant, group)))
    for group in sorted(set(before) - set(after)):
        try:
            group_id = kc.get_group_by_path(_group_path(tenant, group))["id"]
        except KeycloakError as exc:
            if exc.response_code == 404:
                continue
            raise
        kc.group_user_remove(subject, group_id)


def _set_keycloak_roles(kc, subject: str, roles: list[str]) -> None:
    managed = set(_keycloak_role_names(sorted(TENANT_ROLES)))
    wanted = set(_keycloak_role_names(roles))
    current = {r["name"]: r for r in kc.get_realm_roles_of_user(subject)}
    add = [kc.get_realm_role(name) for name in sorted(wanted - set(current))]
    remove = [current[name] for name in sorted((set(current) & managed) - wanted)]
    if add:
        kc.assign_realm_roles(subject, add)
    if remove:
        kc.delete_realm_roles_of_user(subject, remove)


def tenant_user_set_enabled(*, tenant: Tenant, actor, user, enabled: bool):
    with transaction.atomic():
        User = get_user_model()
        user = User.objects.select_for_update().get(pk=user.pk, membership__tenant=tenant)
        user.is_active = enabled
        user.save(update_fields=["is_active"])
        audit_append(event="member.enabled" if enabled else "member.disabled", tenant=tenant, actor=actor,
                     object_type="user", object_id=str(user.pk), data={"username": user.username})
        live.user_recheck(user.pk)  # a disabled member's open sockets are closed
        subject = _link(user) if oidc_enabled() else None
        if subject is not None:
            _call(lambda kc: kc.update_user(subject, {"enabled": enabled}))
    return user


def _call(action):
    try:
        return action(admin())
    except KeycloakError as exc:
        raise ProviderFailed(f"the identity provider refused the change ({exc.response_code})") from exc
    except OSError as exc:
        raise ProviderFailed("the identity provider did not answer") from exc
