"""The catalogue of audit event types. A name not listed here is refused by audit_append."""
EVENTS = frozenset(
    {
        "run.submitted",
        "run.submit_refused",
        "run.cancelled",
        "run.finished",
        "gate.opened",
        "gate.decided",
        "gate.decision_refused",
        "gate.released",
        "gate.rejected",
        "gate.expired",
        "gate.escalated",
        "artefact.read",
        "task.recovered",
        "task.redispatched",
    }
)
