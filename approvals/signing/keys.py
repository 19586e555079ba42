"""Approvers' keys: enrolment, rotation and revocation (each audited), the master key that seals
the embedded signer's private keys, and the plain values documents are built from.

Lifecycle: ``approver_key_enrol`` registers a first key (one in use per approver and backend);
``approver_key_rotate`` registers a new one and retires the old (``retired_at``: it still verifies
what it signed before that moment); ``approver_key_revoke`` withdraws a key (``revoked_at``: it
verifies nothing any more). Public keys are never deleted. The embedded backend's sealed private
key is deleted when its key is retired or revoked, so a retired key can sign nothing new.
"""
from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from audit.services import audit_append
from gateway.labels import LabelError

from .document import ED25519, KeyRecord, b64, key_fingerprint
from .models import ApproverKey, ApproverPrivateKey, KeyBackend

SEAL_VERSION = b"\x01"
_SEAL_AAD = b"gatehouse-approver-key/1|"


class SigningKeyError(RuntimeError):
    """A key operation that cannot be done (no key in use, a sealed key the master key does not open)."""


# -------------------------------------------------------------------------------- plain values


def approver_id(user) -> str:
    """The approver named in documents: the identity provider's subject (also the Transit key's
    name) when the user signs in through it, else ``user:<local id>``."""
    from gateway.identity.models import ExternalIdentity

    identity = ExternalIdentity.objects.filter(user=user).first()
    return identity.subject if identity is not None else f"user:{user.pk}"


def gate_label_canonical(gate) -> str:
    """The canonical form of the gate's label (``v1|<POLICY>|<banner>``), whose digest is Label.digest()."""
    from gateway.clearances import label_registry
    from gateway.labels import parse_label

    try:
        return parse_label(gate.classification, registry=label_registry()).canonical()
    except LabelError as exc:
        raise SigningKeyError(f"the gate's label {gate.classification!r} does not parse: {exc}") from exc


def gate_facts(gate) -> dict:
    """The plain values of a Gate that documents and receipts are built from (JSON)."""
    return {
        "id": str(gate.id),
        "tenant": str(gate.tenant_id),
        "run": str(gate.run_id),
        "revision": gate.revision,
        "label": gate_label_canonical(gate),
        "title": gate.title,
        "instructions": gate.instructions,
        "options": [{"name": o["name"], "label": o.get("label") or o["name"], "outcome": o["outcome"]}
                    for o in gate.options],
        "form": gate.form,
        "shows": [{"ref": s["ref"], "digest": s.get("digest")} for s in gate.shows],
    }


def key_record(key: ApproverKey) -> KeyRecord:
    return KeyRecord(key_id=key.key_id, approver=key.approver, algorithm=key.algorithm,
                     public_key=bytes(key.public_key), created_at=key.created_at, retired_at=key.retired_at,
                     revoked_at=key.revoked_at, reason=key.reason)


def key_records(key_ids=None) -> dict[str, KeyRecord]:
    """Key id -> KeyRecord for verify_decision (all keys, or those named)."""
    keys = ApproverKey.objects.all() if key_ids is None else ApproverKey.objects.filter(key_id__in=list(key_ids))
    return {k.key_id: key_record(k) for k in keys}


def active_key(user, backend: str) -> ApproverKey | None:
    return ApproverKey.objects.filter(user=user, backend=backend, retired_at__isnull=True,
                                      revoked_at__isnull=True).first()


# -------------------------------------------------------------------------------- master key


class MasterKey:
    """AES-256-GCM key that seals the embedded signer's private keys (a file of 32 bytes, base64)."""

    def __init__(self, raw: bytes, source: str = "") -> None:
        if len(raw) != 32:
            raise ImproperlyConfigured(f"the approval master key {source} must hold 32 bytes (base64), not {len(raw)}")
        self._aead = AESGCM(raw)
        self.key_id = hashlib.sha256(b"gatehouse-approval-master|" + raw).hexdigest()[:16]
        self.source = source

    @classmethod
    def from_settings(cls) -> MasterKey:
        from gateway.keyfiles import master_key_bytes

        path = Path(settings.GATEHOUSE_APPROVAL_SIGNING["MASTER_KEY_FILE"])
        return cls(master_key_bytes(path, "the approval master key"), str(path))

    def seal(self, key_id: str, secret: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return SEAL_VERSION + nonce + self._aead.encrypt(nonce, secret, _SEAL_AAD + key_id.encode("ascii"))

    def open(self, key_id: str, sealed: bytes, sealed_by: str) -> bytes:
        sealed = bytes(sealed)
        if sealed[:1] != SEAL_VERSION or len(sealed) < 1 + 12 + 16:
            raise SigningKeyError(f"the sealed private key of {key_id} is not in a known format")
        if sealed_by != self.key_id:
            raise SigningKeyError(f"the private key of {key_id} was sealed under master key {sealed_by}, "
                            f"not under the configured one ({self.key_id}, {self.source})")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], _SEAL_AAD + key_id.encode("ascii"))
        except InvalidTag:
            raise SigningKeyError(f"the master key {self.key_id} does not open the private key of {key_id} "
                            "(wrong master key, or the sealed bytes were changed)") from None


# -------------------------------------------------------------------------------- lifecycle


def _tenant_of(user):
    membership = getattr(user, "membership", None)
    return membership.tenant_id if membership is not None else None


def _audit(event: str, key: ApproverKey, actor, **data) -> None:
    audit_append(event=event, tenant_id=_tenant_of(key.user), actor=actor, object_type="approverkey",
                 object_id=str(key.id), data={"key_id": key.key_id, "approver": key.approver,
                                              "user": key.user.get_username(), "algorithm": key.algorithm,
                                              "backend": key.backend, **data})


def _new_local_key(user, now) -> ApproverKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = ApproverKey.objects.create(key_id=key_fingerprint(ED25519, public), user=user, approver=approver_id(user),
                                     algorithm=ED25519, public_key=public, backend=KeyBackend.LOCAL, created_at=now)
    master = MasterKey.from_settings()
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    ApproverPrivateKey.objects.create(key=key, sealed=master.seal(key.key_id, seed), master_key_id=master.key_id)
    return key


def _transit_key(user, now, *, client, mount: str, version: int | None) -> ApproverKey:
    from .signers import transit_public_key

    name = approver_id(user)
    algorithm, public, version = transit_public_key(client, name, mount=mount, version=version)
    return ApproverKey.objects.create(key_id=key_fingerprint(algorithm, public), user=user, approver=name,
                                      algorithm=algorithm, public_key=public, backend=KeyBackend.TRANSIT,
                                      backend_ref={"mount": mount, "name": name, "version": version}, created_at=now)


def approver_key_enrol(user, *, actor=None, backend: str = KeyBackend.LOCAL, vault_client=None,
                       transit_mount: str | None = None) -> ApproverKey:
    """Register the approver's first key for ``backend`` (refused if one is in use: rotate instead).
    ``local`` makes an Ed25519 key and seals its private half; ``transit`` creates the Transit key
    named after the approver's subject if it does not exist (``vault_client`` holds a token allowed
    to create and read keys) and registers its latest version."""
    mount = transit_mount or settings.GATEHOUSE_APPROVAL_SIGNING["VAULT_TRANSIT_MOUNT"]
    with transaction.atomic():
        if ApproverKey.objects.select_for_update().filter(user=user, backend=backend, retired_at__isnull=True,
                                                          revoked_at__isnull=True).exists():
            raise SigningKeyError(f"{user.get_username()} already has a {backend} key in use: rotate it instead")
        now = timezone.now()
        if backend == KeyBackend.LOCAL:
            key = _new_local_key(user, now)
        elif backend == KeyBackend.TRANSIT:
            from .signers import transit_key_ensure

            transit_key_ensure(vault_client, approver_id(user), mount=mount)
            key = _transit_key(user, now, client=vault_client, mount=mount, version=None)
        else:
            raise SigningKeyError(f"unknown key backend {backend!r}")
        _audit("approver_key.enrolled", key, actor, public_key=b64(bytes(key.public_key)),
               backend_ref=key.backend_ref)
        return key


def approver_key_rotate(user, *, actor=None, backend: str = KeyBackend.LOCAL, reason: str = "rotation",
                        vault_client=None) -> ApproverKey:
    """A new key in use; the old one retired now (it still verifies what it signed before)."""
    with transaction.atomic():
        old = (ApproverKey.objects.select_for_update()
               .filter(user=user, backend=backend, retired_at__isnull=True, revoked_at__isnull=True).first())
        if old is None:
            raise SigningKeyError(f"{user.get_username()} has no {backend} key in use to rotate")
        now = timezone.now()
        old.retired_at, old.reason = now, reason
        old.save(update_fields=["retired_at", "reason"])
        ApproverPrivateKey.objects.filter(key=old).delete()
        if backend == KeyBackend.LOCAL:
            new = _new_local_key(user, now)
        else:
            from .signers import transit_key_rotate

            mount = old.backend_ref["mount"]
            transit_key_rotate(vault_client, old.backend_ref["name"], mount=mount)
            new = _transit_key(user, now, client=vault_client, mount=mount, version=None)
        _audit("approver_key.rotated", new, actor, retired_key_id=old.key_id, reason=reason,
               public_key=b64(bytes(new.public_key)), backend_ref=new.backend_ref)
        return new


def approver_key_revoke(key: ApproverKey, *, actor=None, reason: str) -> ApproverKey:
    """Withdraw a key (compromise, departure): from now on nothing it signed verifies."""
    if not reason:
        raise SigningKeyError("a revocation needs a reason")
    with transaction.atomic():
        key = ApproverKey.objects.select_for_update().get(pk=key.pk)
        if key.revoked_at is not None:
            raise SigningKeyError(f"key {key.key_id} is already revoked")
        key.revoked_at, key.reason = timezone.now(), reason
        key.save(update_fields=["revoked_at", "reason"])
        ApproverPrivateKey.objects.filter(key=key).delete()
        _audit("approver_key.revoked", key, actor, reason=reason)
        return key
