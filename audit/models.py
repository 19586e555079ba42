"""The audit log's tables.

- AuditEntry: written by audit_append inside the transaction of the action it records
  (INSERT only). It holds what happened; it is not yet placed in the log.
- AuditPending: the queue of committed entries the sequencer has not placed yet.
- AuditLeaf: written by the sequencer (INSERT only): the entry's position in the global log and
  in its tenant's log, its canonical bytes (the Merkle leaf) and their hash, chained.
- AuditNode: hashes of complete (perfect) Merkle subtrees above the leaves (INSERT only).
- AuditHead: one row per tree (the global log, each tenant's log): size, frontier, last hash.
- AuditCheckpoint: signed checkpoints (INSERT only), also written outside the database.
- AuditKey: every key that ever signed a checkpoint, kept for verification after rotation.
"""
import uuid

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField()  # server UTC time of the action
    # Recorded facts, not live references: no database constraint (an entry outlives what it
    # names, and a foreign key would make every append share-lock the tenant row).
    tenant = models.ForeignKey("gateway.Tenant", null=True, blank=True, on_delete=models.DO_NOTHING,
                               related_name="+", db_constraint=False, db_index=False)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                              related_name="+", db_constraint=False, db_index=False)
    event = models.CharField(max_length=64)  # from audit.events.EVENTS
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    label = models.CharField(max_length=200, blank=True)  # classification of what the action touched
    outcome = models.CharField(max_length=16, default="success")  # success | denied | error
    body = models.JSONField()  # the full record (who, what, when, where, outcome, data), secrets HMAC'd

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "at"]),  # an auditor's search: one tenant, a time window
            models.Index(fields=["object_type", "object_id"]),  # everything about one object
        ]


class AuditPending(models.Model):
    # No database constraint: its check locked the new entry's row (FOR KEY SHARE, at commit) on
    # every append, a second write to the entry's page; an entry can never be deleted (the
    # append-only triggers, audit/db_privileges.py) and its queue row is inserted by the same
    # statement that inserts it (audit.services), so the constraint guarded nothing.
    entry = models.OneToOneField(AuditEntry, primary_key=True, on_delete=models.PROTECT, related_name="+",
                                 db_constraint=False)


class AuditLeaf(models.Model):
    seq = models.BigIntegerField(primary_key=True)  # position in the global log
    # No database constraints on these two (the sequencer writes a batch with COPY, and each
    # constraint ran a check query per leaf and locked the row it names): an entry is never
    # deleted (append-only triggers, audit/db_privileges.py), and a tenant with leaves has its
    # tree's AuditHead row, whose constraint keeps the tenant from being deleted. No index of its
    # own for tenant: the unique (tenant, tenant_seq) below starts with it.
    entry = models.OneToOneField(AuditEntry, on_delete=models.PROTECT, related_name="leaf", db_constraint=False)
    tenant = models.ForeignKey("gateway.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                               db_constraint=False, db_index=False)
    tenant_seq = models.BigIntegerField(null=True, blank=True)  # position in the tenant's log
    leaf = models.BinaryField()  # canonical JSON bytes: the Merkle leaf
    leaf_hash = models.BinaryField(max_length=32)
    integrated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "tenant_seq"], name="audit_leaf_tenant_seq")]


class AuditNode(models.Model):
    """The hash of the perfect subtree of 2**level leaves starting at index * 2**level."""

    tree = models.CharField(max_length=32)  # "global" or "tenant:<id>"
    level = models.SmallIntegerField()
    index = models.BigIntegerField()
    hash = models.BinaryField(max_length=32)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tree", "level", "index"], name="audit_node_unique")]


class AuditHead(models.Model):
    tree = models.CharField(max_length=32, primary_key=True)
    tenant = models.ForeignKey("gateway.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    size = models.BigIntegerField(default=0)
    frontier = models.JSONField(default=list)  # hex hashes of the compact range [0, size)
    last_hash = models.CharField(max_length=64, default="0" * 64)
    last_integrated_at = models.DateTimeField(null=True, blank=True)
    checkpoint_size = models.BigIntegerField(default=0)
    checkpoint_at = models.DateTimeField(null=True, blank=True)


class AuditCheckpoint(models.Model):
    tree = models.CharField(max_length=32)
    size = models.BigIntegerField()
    root = models.CharField(max_length=64)
    note = models.TextField()  # the signed note, exactly as signed
    key_id = models.CharField(max_length=8)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tree", "size"], name="audit_checkpoint_unique")]


class AuditKey(models.Model):
    name = models.CharField(max_length=200)
    key_id = models.CharField(max_length=8)
    verifier_key = models.CharField(max_length=300, unique=True)
    backend = models.CharField(max_length=16)  # file | vault
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)


class AuditExportJob(models.Model):
    """A signed export requested from the portal and written by a Celery task (audit/tasks.py):
    the log of `tenant` (None: the global log, platform auditors only), one tar.gz under the var
    directory once DONE. Readable by the tenant's auditors and platform auditors only."""

    class State(models.TextChoices):
        QUEUED = "QUEUED"
        RUNNING = "RUNNING"
        DONE = "DONE"
        FAILED = "FAILED"
        EXPIRED = "EXPIRED"  # was DONE; its bundle was deleted at the end of its retention

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("gateway.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    since = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    entries_written = models.BigIntegerField(default=0)
    entries_total = models.BigIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    file_name = models.CharField(max_length=200, blank=True)
    file_size = models.BigIntegerField(null=True, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Each claim by a worker is a new attempt; only the current attempt may finish the job (a worker
    # that was given up for dead and finishes late changes nothing).
    attempt = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)  # the last time its message was sent

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"])]
