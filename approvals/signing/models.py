"""Approvers' signing keys and the signatures accepted on decisions.

Registered with the approvals app (imported by approvals/models.py)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class KeyBackend(models.TextChoices):
    LOCAL = "local"  # Ed25519 private key on the server, sealed under the master key
    TRANSIT = "transit"  # OpenBao/Vault Transit key named after the approver's subject


class ApproverKey(models.Model):
    """A public key of one approver. Rows are never deleted: a rotated-out or revoked key still
    answers for what it signed (and a revoked one refuses it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key_id = models.CharField(max_length=40, unique=True)  # document.key_fingerprint
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approver_keys")
    approver = models.CharField(max_length=300)  # keys.approver_id(user) when enrolled; what documents name
    algorithm = models.CharField(max_length=16)  # ed25519 | ecdsa-p256
    public_key = models.BinaryField()  # Ed25519: 32 raw bytes; P-256: 65-byte uncompressed point
    backend = models.CharField(max_length=16, choices=KeyBackend.choices)
    backend_ref = models.JSONField(default=dict)  # transit: {"mount", "name", "version"}
    created_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True)  # rotated out: valid for what it signed before
    revoked_at = models.DateTimeField(null=True, blank=True)  # compromised or withdrawn: valid for nothing
    reason = models.TextField(blank=True)

    class Meta:
        constraints = [
            # At most one key in use per approver and backend.
            models.UniqueConstraint(fields=["user", "backend"], condition=Q(retired_at__isnull=True, revoked_at__isnull=True),
                                    name="approver_key_one_active"),
        ]
        indexes = [models.Index(fields=["user", "backend", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.approver})"


class ApproverPrivateKey(models.Model):
    """The embedded signer's private key, AES-256-GCM under the master key (never in clear).
    Deleted when its key is rotated out or revoked; the public half stays in ApproverKey."""

    key = models.OneToOneField(ApproverKey, on_delete=models.CASCADE, primary_key=True, related_name="private")
    sealed = models.BinaryField()  # version byte, 12-byte nonce, ciphertext and tag
    master_key_id = models.CharField(max_length=32)  # which master key sealed it (a fingerprint)


class DecisionSignature(models.Model):
    """A signature accepted with a decision: the exact signed bytes, the key, and uniqueness of the
    nonce and of the signature, so neither a document nor a signature is accepted twice."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("gateway.Tenant", on_delete=models.PROTECT, related_name="+")
    gate = models.ForeignKey("approvals.Gate", on_delete=models.CASCADE, related_name="signatures")
    gate_revision = models.IntegerField()
    decision = models.OneToOneField("approvals.Decision", on_delete=models.CASCADE, null=True, blank=True,
                                    related_name="signature")
    key = models.ForeignKey(ApproverKey, on_delete=models.PROTECT, related_name="signatures")
    document = models.BinaryField()  # the JCS bytes that were signed
    document_sha256 = models.CharField(max_length=64)
    signature = models.BinaryField()
    signature_sha256 = models.CharField(max_length=64, unique=True)
    nonce = models.CharField(max_length=200, unique=True)
    signed_at = models.DateTimeField()  # the document's time
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["gate", "gate_revision"])]
