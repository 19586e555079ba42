"""Tenant admins' pages (users and their roles and groups, clearances, approver groups, backends)
and platform admins' tenants (list, create). Every change goes through the same services as the API: audited, and in force from
the next request of whoever it concerns."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError
from django.db.models import Count
from django.shortcuts import redirect

from approvals import selectors as gate_selectors
from approvals.models import GateEligibility
from executors.backends import backends_configure, backends_document
from gateway import dbscope
from gateway.choices import Role
from gateway.clearances import ClearanceInput, clearance_revoke, clearance_set, label_registry, member_of_tenant
from gateway.errors import ErrorCode, GatehouseError, NotFound, record_refusal
from gateway.identity import provisioning
from gateway.identity.conf import oidc_enabled
from gateway.identity.selectors import member_get_for_user, member_list_for_user
from gateway.models import Clearance, ClearanceStatus, Tenant
from gateway.selectors import membership_for
from gateway.tenancy import tenant_create

from .common import page, render_page

TENANT_ROLES = [r for r in Role if r not in (Role.PLATFORM_ADMIN, Role.PLATFORM_AUDITOR)]


def _words(text: str) -> list[str]:
    return [w for w in (part.strip() for part in text.replace("\n", ",").split(",")) if w]


def _failed(request, exc: GatehouseError, template: str, context: dict):
    record_refusal(request, exc.status, exc.code, exc.message)
    messages.error(request, f"{exc.message} ({exc.code})")
    return render_page(request, template, {**context, "error": exc}, status=exc.status)


@page(Role.TENANT_ADMIN)
def users(request):
    tenant = membership_for(request.user).tenant

    def context():
        return {"members": list(member_list_for_user(request.user)), "roles": TENANT_ROLES, "oidc": oidc_enabled()}

    if request.method == "POST":
        try:
            if request.POST.get("action") == "create":
                username = request.POST.get("username", "").strip()
                if not username:
                    raise GatehouseError(ErrorCode.INVALID, "A user name is needed.")
                provisioning.tenant_user_create(tenant=tenant, actor=request.user, username=username,
                                                roles=request.POST.getlist("roles"),
                                                email=request.POST.get("email", "").strip(),
                                                groups=_words(request.POST.get("groups", "")),
                                                password=request.POST.get("password") or None)
                messages.success(request, f"{username} was created.")
            else:
                member = member_get_for_user(request.POST.get("user_id", ""), request.user)
                if request.POST.get("action") == "roles":
                    provisioning.tenant_user_set_roles(tenant=tenant, actor=request.user, user=member,
                                                       roles=request.POST.getlist("roles"))
                    messages.success(request, f"{member.username}'s roles were changed.")
                elif request.POST.get("action") == "groups":
                    provisioning.tenant_user_set_groups(tenant=tenant, actor=request.user, user=member,
                                                        groups=_words(request.POST.get("groups", "")))
                    messages.success(request, f"{member.username}'s approver groups were changed.")
                elif request.POST.get("action") in ("enable", "disable"):
                    provisioning.tenant_user_set_enabled(tenant=tenant, actor=request.user, user=member,
                                                         enabled=request.POST["action"] == "enable")
                    messages.success(request, f"{member.username} was {request.POST['action']}d.")
                else:
                    raise GatehouseError(ErrorCode.INVALID, "Unknown action.")
        except (GatehouseError, ValueError) as exc:
            if isinstance(exc, ValueError):
                exc = GatehouseError(ErrorCode.INVALID, str(exc))
            if exc.status == 404:
                raise exc
            return _failed(request, exc, "portal/tenant_users.html", context())
        return redirect("portal-tenant-users")
    return render_page(request, "portal/tenant_users.html", context())


@page(Role.TENANT_ADMIN)
def clearances(request):
    tenant = membership_for(request.user).tenant
    registry = label_registry()

    def context():
        rows = Clearance.objects.filter(tenant=tenant).select_related("user", "updated_by").order_by("user__username")
        return {"clearances": list(rows), "members": list(member_list_for_user(request.user)),
                "levels": list(registry.default.levels), "policies": registry.names(),
                "statuses": ClearanceStatus.values}

    if request.method == "POST":
        try:
            if request.POST.get("action") == "revoke":
                row = Clearance.objects.filter(tenant=tenant, id=request.POST.get("clearance_id") or 0).first()
                if row is None:
                    raise NotFound("No such clearance.")
                clearance_revoke(tenant=tenant, clearance=row, actor=request.user)
                messages.success(request, f"{row.user.username}'s clearance was revoked.")
            else:
                try:
                    user_id = int(request.POST.get("user_id", ""))
                except ValueError:
                    raise NotFound("No such user.") from None
                member = member_of_tenant(tenant, user_id)
                data = ClearanceInput(policy=request.POST.get("policy") or None,
                                      max_level=request.POST.get("max_level", ""),
                                      compartments=_words(request.POST.get("compartments", "")),
                                      releasability=_words(request.POST.get("releasability", "")),
                                      status=request.POST.get("status") or ClearanceStatus.ACTIVE)
                clearance_set(tenant=tenant, user=member.user, data=data, actor=request.user)
                messages.success(request, f"{member.user.username}'s clearance is now {data.max_level.upper()}.")
        except GatehouseError as exc:
            if exc.status == 404:
                raise
            return _failed(request, exc, "portal/tenant_clearances.html", context())
        return redirect("portal-tenant-clearances")
    return render_page(request, "portal/tenant_clearances.html", context())


@page(Role.TENANT_ADMIN)
def approver_groups(request):
    """Groups with their members; add a member to a group or remove one (the same service as the
    Users page: audited, effective from the member's next request; never one's own groups)."""
    tenant = membership_for(request.user).tenant

    def context():
        members = list(member_list_for_user(request.user))
        groups: dict[str, list] = {}
        for member in members:
            for group in member.membership.groups:
                groups.setdefault(group, []).append(member)
        visible = gate_selectors.gate_list_for_user(request.user).filter(state="OPEN")
        principals = (GateEligibility.objects.filter(gate__in=visible).values("principal")
                      .annotate(gates=Count("gate", distinct=True)).order_by("principal"))
        return ({"groups": sorted(groups.items()), "principals": list(principals),
                 "members": [m for m in members if m.pk != request.user.pk]},
                list(visible.values_list("classification", flat=True).distinct()))

    if request.method == "POST":
        try:
            member = member_get_for_user(request.POST.get("user_id", ""), request.user)
            group = request.POST.get("group", "").strip()
            if not group:
                raise GatehouseError(ErrorCode.INVALID, "A group name is needed.")
            current = list(member.membership.groups)
            if request.POST.get("action") == "add":
                wanted = [*current, group]
            elif request.POST.get("action") == "remove":
                wanted = [g for g in current if g != group]
            else:
                raise GatehouseError(ErrorCode.INVALID, "Unknown action.")
            provisioning.tenant_user_set_groups(tenant=tenant, actor=request.user, user=member, groups=wanted)
            messages.success(request, f"{member.username} was {'added to' if request.POST['action'] == 'add' else 'removed from'} {group}.")
        except GatehouseError as exc:
            if exc.status == 404:
                raise
            data, labels = context()
            record_refusal(request, exc.status, exc.code, exc.message)
            messages.error(request, f"{exc.message} ({exc.code})")
            return render_page(request, "portal/tenant_groups.html", {**data, "error": exc}, labels=labels,
                               status=exc.status)
        return redirect("portal-tenant-groups")
    data, labels = context()
    return render_page(request, "portal/tenant_groups.html", data, labels=labels)


@page(Role.TENANT_ADMIN)
def backends(request):
    tenant = membership_for(request.user).tenant
    source, document = backends_document(tenant)
    context = {"source": source, "document": document, "issues": []}
    if request.method == "POST":
        text = request.POST.get("source", "")
        try:
            backends_configure(tenant=tenant, actor=request.user, source=text)
        except GatehouseError as exc:
            issues = [i for i in exc.detail if isinstance(i, dict)] if isinstance(exc.detail, list) else []
            lines = text.splitlines()
            for issue in issues:
                line = issue.get("line")
                issue["source_line"] = lines[line - 1] if isinstance(line, int) and 0 < line <= len(lines) else ""
            return _failed(request, exc, "portal/tenant_backends.html", {**context, "source": text, "issues": issues})
        messages.success(request, "The backend configuration was replaced.")
        return redirect("portal-tenant-backends")
    return render_page(request, "portal/tenant_backends.html", context)


@page(Role.PLATFORM_ADMIN)
def tenants(request):
    """Every tenant with its members count; create one (gateway.tenancy.tenant_create, audited)."""
    form = {"slug": "", "name": "", "errors": {}}
    if request.method == "POST":
        slug, name = request.POST.get("slug", "").strip(), request.POST.get("name", "").strip()
        form.update(slug=slug, name=name)
        try:
            validate_slug(slug)
        except ValidationError:
            form["errors"]["slug"] = "Letters, digits, hyphens and underscores only."
        if not form["errors"] and len(slug) > Tenant._meta.get_field("slug").max_length:
            form["errors"]["slug"] = "At most 64 characters."
        if not name:
            form["errors"]["name"] = "A name is needed."
        elif len(name) > 200:
            form["errors"]["name"] = "At most 200 characters."
        if not form["errors"] and Tenant.objects.filter(slug=slug).exists():
            form["errors"]["slug"] = "A tenant with this slug exists."
        if form["errors"]:
            record_refusal(request, 400, ErrorCode.INVALID, "The tenant form has errors.")
        else:
            try:
                with dbscope.system_scope():  # the new tenant's audit entry is outside the caller's tenant
                    tenant_create(slug=slug, name=name, actor=request.user)
            except IntegrityError:  # created meanwhile by someone else
                form["errors"]["slug"] = "A tenant with this slug exists."
                record_refusal(request, 409, ErrorCode.INVALID, "A tenant with this slug exists.")
            else:
                messages.success(request, f"The tenant {slug} was created.")
                return redirect("portal-platform-tenants")
    with dbscope.system_scope():  # a platform admin lists every tenant's members
        rows = list(Tenant.objects.annotate(members=Count("memberships")).order_by("slug"))
    return render_page(request, "portal/platform_tenants.html", {"tenants": rows, "form": form},
                       status=400 if form["errors"] else 200)
