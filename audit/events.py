"""The catalogue of audit event types. A name not listed here is refused by audit_append."""
EVENTS = frozenset(
    {
        # identity and access
        "auth.login",
        "auth.login_failed",
        "auth.logout",
        "auth.backchannel_logout",  # the identity provider ended a session (OpenID Connect back-channel)
        "auth.logout_forced",  # a portal session ended because the identity provider no longer vouches for it
        "access.denied",  # every authorization denial: 401, 403, and 404 for what is out of scope
        "request.refused",  # a write refused for its content (4xx other than the above)
        "request.failed",  # a write that failed with a 5xx (e.g. the identity provider refused the change)
        # tenancy and administration
        "tenant.created",
        "member.created",
        "clearance.granted",
        "clearance.changed",
        "clearance.revoked",
        "member.synced",  # tenant, roles or groups taken from the identity provider changed
        "member.roles_changed",
        "member.groups_changed",  # a tenant admin changed a member's approver groups
        "member.disabled",
        "member.enabled",
        "audit.key_created",
        "audit.key_retired",
        "tenant.backends_changed",  # a tenant admin replaced the tenant's backend configuration (before/after)
        "credential.written",  # a backend's credentials stored (key names only, never values)
        "credential.read",  # a backend's credentials read for a task (key names and source only)
        # runs and the engine
        "run.submitted",
        "run.submit_refused",
        "run.cancelled",
        "run.finished",
        "task.transition",
        "task.recovered",
        "task.redispatched",
        "executor.submitted",
        "executor.cancelled",  # a running job stopped because its task was cancelled
        # gates
        "gate.opened",
        "gate.read",
        "gate.decided",
        "gate.decision_refused",
        "gate.released",
        "gate.rejected",
        "gate.expired",
        "gate.escalated",
        "gate.receipt_read",
        "gate.revised",  # the gate's label was raised: a new revision, earlier decisions void
        "decision.voided",  # an approval stopped counting (clearance, eligibility or revision changed)
        "gate.assigned",  # a tenant admin granted one user the right to decide one gate
        "gate.unassigned",
        # approvers' signing keys (approvals/signing/keys.py)
        "approver_key.enrolled",
        "approver_key.rotated",  # a new key in use, the previous one retired (it still verifies what it signed)
        "approver_key.revoked",  # withdrawn: nothing it signed verifies any more
        # reads of content
        "artefact.read",
        "audit.searched",
        "audit.exported",
        "audit.export_requested",  # an export job queued from the portal
        "audit.export_failed",  # an export job that could not write its bundle
        "audit.export_downloaded",  # an export job's bundle downloaded
        "audit.export_expired",  # an export job's bundle deleted at the end of its retention
    }
)
