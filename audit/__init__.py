"""The audit log. Every service records its action through audit_append in the same transaction."""
