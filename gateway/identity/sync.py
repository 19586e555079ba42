"""Keycloak's claims -> a local user and membership, kept in step on every request."""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from audit.services import audit_append
from gateway import dbscope
from gateway.errors import NoTenant
from gateway.models import Membership, Tenant
from gateway.realtime import events as live

from .conf import auth_settings, issuer, role_map
from .models import ExternalIdentity


@dataclass(frozen=True)
class Principal:
    subject: str
    username: str
    email: str
    tenant_slug: str | None
    roles: tuple[str, ...]
    groups: tuple[str, ...]


def principal_from_claims(claims: dict) -> Principal:
    """Tenant, Gatehouse roles and approver groups from a token's (or introspection's) claims.

    Tenant: the claim TENANT_CLAIM when set, else the one group under TENANT_GROUP_PREFIX (e.g.
    `/tenants/acme`); its subgroups (`/tenants/acme/senior-analyst`) become approver groups, and
    subgroups of any other tenant's group never do (also when the tenant comes from the claim). No
    tenant group, or groups of more than one tenant, is no tenant; with TENANT_CLAIM, a missing or
    empty claim is.
    """
    conf = auth_settings()
    prefix = "/" + conf["TENANT_GROUP_PREFIX"].strip("/") + "/"
    subgroups: dict[str, set[str]] = {}  # tenant slug -> approver groups under it
    for path in claims.get("groups") or []:
        if isinstance(path, str) and path.startswith(prefix):
            slug, _, rest = path[len(prefix):].partition("/")
            if slug:
                subgroups.setdefault(slug, set())
                if rest:
                    subgroups[slug].add(rest)
    if conf["TENANT_CLAIM"]:
        value = claims.get(conf["TENANT_CLAIM"])
        slug = value if isinstance(value, str) and value else None
    else:
        slug = next(iter(subgroups)) if len(subgroups) == 1 else None
    groups = subgroups.get(slug, set()) if slug else set()  # another tenant's subgroups never count
    mapping = role_map()
    roles = set()
    for name in (claims.get("realm_access") or {}).get("roles") or []:
        if f"realm:{name}" in mapping:
            roles.add(mapping[f"realm:{name}"])
    client = ((claims.get("resource_access") or {}).get(conf["CLIENT_ID"]) or {}).get("roles") or []
    for name in client:
        if f"client:{name}" in mapping:
            roles.add(mapping[f"client:{name}"])
    username = claims.get("preferred_username") or claims.get("username") or claims["sub"]
    return Principal(subject=claims["sub"], username=str(username)[:150], email=str(claims.get("email") or "")[:254],
                     tenant_slug=slug, roles=tuple(sorted(roles)), groups=tuple(sorted(groups)))


def user_for_principal(principal: Principal):
    """The local user of this Keycloak subject, created on first sight; its membership set to what
    Keycloak says now. Raises NoTenant (nothing written) when the principal has no known tenant."""
    tenant = Tenant.objects.filter(slug=principal.tenant_slug).first() if principal.tenant_slug else None
    if tenant is None:
        raise NoTenant()
    link = ExternalIdentity.objects.select_related("user__membership").filter(
        issuer=issuer(), subject=principal.subject).first()
    if link is not None and _in_step(link.user, principal, tenant):
        return link.user
    for attempt in range(2):
        try:
            return _write(principal, tenant)
        except IntegrityError:  # two first requests of the same new user at once: the other one won
            if attempt:
                raise
    raise AssertionError("unreachable")


def _in_step(user, principal: Principal, tenant: Tenant) -> bool:
    membership = getattr(user, "membership", None)
    return (membership is not None and membership.tenant_id == tenant.pk
            and sorted(membership.roles) == list(principal.roles)
            and sorted(membership.groups) == list(principal.groups)
            and user.email == principal.email)


def _free_username(wanted: str, subject: str, exclude_pk=None) -> str:
    users = get_user_model().objects.exclude(pk=exclude_pk)
    if not users.filter(username=wanted).exists():
        return wanted
    return f"{wanted[:140]}~{subject[:8]}"


@transaction.atomic
def _write(principal: Principal, tenant: Tenant):
    # The identity provider vouched for this tenant: bind the connection to it before writing its
    # audit entries (row-level security refuses a tenant's row from an unbound web connection).
    dbscope.bind_tenant(tenant.id)
    User = get_user_model()
    link = ExternalIdentity.objects.select_for_update().select_related("user").filter(
        issuer=issuer(), subject=principal.subject).first()
    if link is None:
        user = User.objects.create_user(username=_free_username(principal.username, principal.subject),
                                        email=principal.email, password=None)
        ExternalIdentity.objects.create(user=user, issuer=issuer(), subject=principal.subject)
        Membership.objects.create(user=user, tenant=tenant, roles=list(principal.roles), groups=list(principal.groups))
        audit_append(event="member.created", tenant=tenant, object_type="user", object_id=str(user.pk),
                     data={"username": user.username, "roles": list(principal.roles), "groups": list(principal.groups),
                           "source": "oidc", "subject": principal.subject})
        return User.objects.select_related("membership").get(pk=user.pk)
    user = link.user
    if user.email != principal.email:
        user.email = principal.email
        user.save(update_fields=["email"])
    membership = Membership.objects.select_for_update().filter(user=user).first()
    before = None
    if membership is None:
        membership = Membership.objects.create(user=user, tenant=tenant, roles=list(principal.roles),
                                               groups=list(principal.groups))
    else:
        before = {"tenant": membership.tenant_id, "roles": sorted(membership.roles), "groups": sorted(membership.groups)}
        membership.tenant, membership.roles, membership.groups = tenant, list(principal.roles), list(principal.groups)
        membership.save(update_fields=["tenant", "roles", "groups"])
    after = {"tenant": tenant.pk, "roles": list(principal.roles), "groups": list(principal.groups)}
    if before != after:
        audit_append(event="member.synced", tenant=tenant, object_type="user", object_id=str(user.pk),
                     data={"before": before, "after": after, "subject": principal.subject})
        live.user_recheck(user.pk)  # open pages follow the roles the identity provider reports now
    return User.objects.select_related("membership").get(pk=user.pk)
