"""Reads of the audit log, scoped: a tenant's auditor sees that tenant's entries; a platform
auditor sees every entry (and may narrow to one tenant). Either sees only entries whose label
their clearance dominates, and entries that touched nothing labelled."""
from __future__ import annotations

from django.db.models import QuerySet

from gateway.choices import Role
from gateway.errors import NotFound
from gateway.models import Tenant
from gateway.selectors import Scope, membership_for, scope_for

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


def audit_label_scope(user, tenant: Tenant | None) -> Scope:
    """The caller's clearance scope over the log of `tenant` (None: the whole log)."""
    wide = scope_for(user, every_tenant=is_platform_auditor(user))
    return Scope(tenant.id if tenant is not None else None, wide.banners)


def audit_entries_for_user(user, tenant_slug: str | None = None) -> QuerySet[AuditEntry]:
    tenant = audit_scope_for_user(user, tenant_slug)
    entries = AuditEntry.objects.select_related("leaf", "tenant")
    return audit_label_scope(user, tenant).apply(entries, label_field="label", unlabelled=True)


def audit_export_allowed(user, tenant: Tenant | None) -> bool:
    """A bundle holds every entry of its log (its proofs need them all), so it may be exported only
    by someone whose clearance covers every label in that log. One scan of the log's labels."""
    scope = audit_label_scope(user, tenant)
    entries = AuditEntry.objects.all() if tenant is None else AuditEntry.objects.filter(tenant=tenant)
    return not entries.exclude(label="").exclude(label__in=sorted(scope.banners)).exists()


def audit_checkpoint_status(tenant: Tenant | None) -> dict:
    """The latest signed checkpoint of `tenant`'s tree (None: the global log) and its checks: the
    signature against every key that ever signed, the copy kept outside the database, and the log's
    current root when the log has not grown since."""
    from .canonical import rfc3339
    from .models import AuditCheckpoint, AuditHead, AuditKey
    from .note import NoteError, NoteVerifier, open_note
    from .sequencer import GLOBAL, head_root, tenant_tree
    from .witness import get_witness

    tree = tenant_tree(tenant.id) if tenant else GLOBAL
    checkpoint = AuditCheckpoint.objects.filter(tree=tree).order_by("-size").first()
    if checkpoint is None:
        return {"tree": tree, "checkpoint": None}
    verifiers = [NoteVerifier(k) for k in AuditKey.objects.values_list("verifier_key", flat=True)]
    try:
        open_note(checkpoint.note.encode(), verifiers)
        signature_valid = True
    except NoteError:
        signature_valid = False
    outside = get_witness().read_all(tree).get(checkpoint.size)
    head = AuditHead.objects.filter(tree=tree).first()
    current_root = head_root(head).hex() if head else None
    return {
        "tree": tree, "size": checkpoint.size, "root": checkpoint.root, "key_id": checkpoint.key_id,
        "time": rfc3339(checkpoint.created_at), "note": checkpoint.note,
        "verification": {
            "signature_valid": signature_valid,
            "matches_copy_outside_database": outside == checkpoint.note.encode() if outside is not None else None,
            "log_size": head.size if head else 0,
            "root_matches_log": (current_root == checkpoint.root) if head and head.size == checkpoint.size else None,
        },
    }
