"""The catalogue of audit event types. A name not listed here is refused by audit_append."""
EVENTS = frozenset(
    {
        # identity and access
        "auth.login",
        "auth.login_failed",
        "auth.logout",
        "access.denied",  # every authorization denial: 401, 403, and 404 for what is out of scope
        "request.refused",  # a write refused for its content (4xx other than the above)
        # tenancy and administration
        "tenant.created",
        "member.created",
        "clearance.granted",
        "clearance.changed",
        "clearance.revoked",
        "audit.key_created",
        "audit.key_retired",
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
        "gate.assigned",  # a tenant admin granted one user the right to decide one gate
        "gate.unassigned",
        # reads of content
        "artefact.read",
        "audit.searched",
        "audit.exported",
    }
)
