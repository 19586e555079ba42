"""The embedded signer: keys sealed at rest under the master key, enrolment, rotation and revocation
(audited), and the database's refusal of replayed nonces and signatures."""
from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import connection
from django.utils import timezone

from approvals.signing.decisions import (
    SignatureRefused,
    SignedDecision,
    decision_sign,
    decision_signature_record,
)
from approvals.signing.document import verify_decision
from approvals.signing.keys import (
    MasterKey,
    SigningKeyError,
    approver_id,
    approver_key_enrol,
    approver_key_revoke,
    approver_key_rotate,
    gate_facts,
    key_records,
)
from approvals.signing.models import ApproverKey, ApproverPrivateKey, DecisionSignature
from approvals.signing.signers import LocalSigner, Signer
from audit.models import AuditEntry

pytestmark = pytest.mark.django_db


def _raw_seed(key: ApproverKey) -> bytes:
    sealed = ApproverPrivateKey.objects.get(key=key)
    return MasterKey.from_settings().open(key.key_id, bytes(sealed.sealed), sealed.master_key_id)


def test_enrolment_makes_a_sealed_key_and_is_audited(master_key_file, approvers):
    alice = approvers[0]
    key = approver_key_enrol(alice, actor=alice)
    assert master_key_file.exists() and oct(master_key_file.stat().st_mode & 0o777) == "0o600"
    assert key.approver == approver_id(alice) == f"user:{alice.pk}"
    assert key.algorithm == "ed25519" and key.key_id.startswith("gk1:")
    seed = _raw_seed(key)
    assert len(seed) == 32
    # The private key is nowhere in clear in the database row.
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{ApproverPrivateKey._meta.db_table}" WHERE key_id = %s', [key.pk])
        row = cursor.fetchone()
    stored = b"".join(bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode() for v in row)
    assert seed not in stored and seed.hex().encode() not in stored
    entry = AuditEntry.objects.get(event="approver_key.enrolled", object_id=str(key.pk))
    assert entry.body["data"]["key_id"] == key.key_id
    assert entry.tenant_id == alice.membership.tenant_id
    # One key in use per approver: a second enrolment is refused (rotate instead).
    with pytest.raises(SigningKeyError, match="rotate"):
        approver_key_enrol(alice)


def test_the_local_signer_signs_what_the_public_key_verifies(master_key_file, approvers):
    key = approver_key_enrol(approvers[0])
    signer = LocalSigner.for_user(approvers[0])
    assert isinstance(signer, Signer)
    key_id, signature = signer.sign(b"document")
    assert key_id == key.key_id
    Ed25519PublicKey.from_public_bytes(signer.public_key(key_id)).verify(signature, b"document")


def test_a_wrong_master_key_fails_clearly(master_key_file, approvers, settings, tmp_path):
    approver_key_enrol(approvers[0])
    other = tmp_path / "other.key"
    other.write_text("QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n")  # 32 bytes, not the sealing key
    settings.GATEHOUSE_APPROVAL_SIGNING = {**settings.GATEHOUSE_APPROVAL_SIGNING, "MASTER_KEY_FILE": str(other)}
    with pytest.raises(SigningKeyError, match="sealed under master key .* not under the configured one"):
        LocalSigner.for_user(approvers[0]).sign(b"document")
    # Even when the row's master key id is made to match, the AEAD tag refuses the wrong key.
    sealed = ApproverPrivateKey.objects.get(key__user=approvers[0])
    with pytest.raises(SigningKeyError, match="does not open"):
        MasterKey.from_settings().open(sealed.key.key_id, bytes(sealed.sealed), MasterKey.from_settings().key_id)


def test_a_sealed_key_moved_to_another_key_id_does_not_open(master_key_file, approvers):
    a, b = approver_key_enrol(approvers[0]), approver_key_enrol(approvers[1])
    sealed_a = ApproverPrivateKey.objects.get(key=a)
    with pytest.raises(SigningKeyError, match="does not open"):
        MasterKey.from_settings().open(b.key_id, bytes(sealed_a.sealed), sealed_a.master_key_id)


def test_rotation_retires_the_old_key_which_still_verifies_what_it_signed(master_key_file, make_gate, approvers):
    alice = approvers[0]
    gate = make_gate()
    old = approver_key_enrol(alice)
    signer = LocalSigner.for_user(alice)
    before = decision_sign(signer, gate=gate, approver=alice, option="confirm")
    # Signed now but dated after the coming rotation: the rotation must make it worthless.
    later = decision_sign(signer, gate=gate, approver=alice, option="confirm", at=timezone.now() + timedelta(hours=1))
    new = approver_key_rotate(alice, actor=alice, reason="yearly")
    old.refresh_from_db()
    assert old.retired_at is not None and old.reason == "yearly" and new.key_id != old.key_id
    assert not ApproverPrivateKey.objects.filter(key=old).exists()  # the old private key is gone
    keys = key_records()
    verify_decision(before.document_bytes, before.signature, old.key_id, keys)
    with pytest.raises(Exception) as exc:
        verify_decision(later.document_bytes, later.signature, old.key_id, keys)
    assert exc.value.kind == "key_rotated_out"
    # The old signer can sign nothing new; the new key signs.
    with pytest.raises(SigningKeyError, match="retired"):
        signer.sign(b"x")
    fresh = decision_sign(LocalSigner.for_user(alice), gate=gate, approver=alice, option="confirm")
    assert fresh.key_id == new.key_id
    entry = AuditEntry.objects.get(event="approver_key.rotated")
    assert entry.body["data"]["retired_key_id"] == old.key_id and entry.body["data"]["key_id"] == new.key_id


def test_revocation_refuses_everything_the_key_signed(master_key_file, make_gate, approvers):
    alice = approvers[0]
    gate = make_gate()
    key = approver_key_enrol(alice)
    signed = decision_sign(LocalSigner.for_user(alice), gate=gate, approver=alice, option="confirm")
    approver_key_revoke(key, actor=alice, reason="token leaked")
    with pytest.raises(SignatureRefused) as exc:
        decision_signature_record(signed, gate=gate)
    assert exc.value.kind == "key_revoked"
    assert not ApproverPrivateKey.objects.filter(key=key).exists()
    assert ApproverKey.objects.filter(pk=key.pk).exists()  # the public key stays
    with pytest.raises(SigningKeyError):
        LocalSigner(key).sign(b"x")
    with pytest.raises(SigningKeyError, match="reason"):
        approver_key_revoke(approver_key_enrol(alice), reason="")
    assert AuditEntry.objects.filter(event="approver_key.revoked", body__data__reason="token leaked").count() == 1


def test_record_refuses_replays_and_documents_for_something_else(master_key_file, make_gate, approvers):
    alice, bob = approvers[0], approvers[1]
    gate, other_gate = make_gate(), make_gate()
    approver_key_enrol(alice)
    approver_key_enrol(bob)
    signed = decision_sign(LocalSigner.for_user(alice), gate=gate, approver=alice, option="confirm",
                           input_value={"ok": 1})
    row = decision_signature_record(signed, gate=gate, expect_approver=alice, expect_option="confirm",
                                    expect_input={"ok": 1})
    assert bytes(row.document) == signed.document_bytes and row.nonce == signed.nonce

    def refused(kind, signed_decision, **kwargs):
        with pytest.raises(SignatureRefused) as exc:
            decision_signature_record(signed_decision, **{"gate": gate, **kwargs})
        assert exc.value.kind == kind, exc.value

    refused("replayed", signed)
    # A new document reusing the nonce.
    refused("replayed", decision_sign(LocalSigner.for_user(alice), gate=gate, approver=alice, option="confirm",
                                      nonce=signed.nonce))
    # The same signature over the same bytes, sent again as from the wire.
    refused("replayed", SignedDecision.from_wire(signed.document_bytes.decode(), signed.wire()["signature"]))
    fresh = decision_sign(LocalSigner.for_user(alice), gate=gate, approver=alice, option="confirm")
    refused("gate_mismatch", fresh, gate=other_gate)
    refused("approver_mismatch", fresh, expect_approver=bob)
    refused("option_mismatch", fresh, expect_option="reject")
    refused("input_mismatch", fresh, expect_input={"ok": 2})
    # Bob's key cannot sign for Alice.
    bobs = decision_sign(LocalSigner.for_user(bob), gate=gate, approver=bob, option="confirm")
    forged = SignedDecision.from_wire(bobs.document_bytes.decode().replace(approver_id(bob), approver_id(alice)),
                                      bobs.wire()["signature"])
    refused("wrong_approver", forged)
    # A gate whose shown content changed after the document was signed.
    gate.title = "Something else"
    gate.save(update_fields=["title"])
    refused("gate_mismatch", fresh)
    assert DecisionSignature.objects.count() == 1


def test_gate_facts_hold_what_the_gate_shows(make_gate):
    gate = make_gate(instructions="Look closely", form={"type": "object"})
    facts = gate_facts(gate)
    assert facts["id"] == str(gate.id) and facts["revision"] == gate.revision
    assert facts["label"].startswith("v1|") and facts["instructions"] == "Look closely"
    assert [o["name"] for o in facts["options"]] == ["confirm", "reject"]
