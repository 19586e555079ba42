"""What the decision write path (approvals.services.gate_decide) calls.

    signed = decision_sign(signer, gate=gate, approver=user, option="confirm", input_value=value)
    ...   # inside gate_decide's transaction, after the Decision row is created:
    decision_signature_record(signed, gate=gate, decision=decision)

Or, when the client signed itself and sent ``document`` and ``signature``:

    signed = SignedDecision.from_wire(document_text, signature_b64)
    decision_signature_record(signed, gate=gate, decision=decision, expect_approver=user,
                              expect_option=option, expect_input=input_value)

``decision_signature_record`` verifies against the database's keys and against the gate as it is
(tenant, run, revision, label, what is shown), then inserts a DecisionSignature whose nonce and
signature hash are unique: a replayed document or signature is refused (``SignatureRefused`` with
kind ``replayed``), whatever the race.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from .document import (
    DecisionSignatureError,
    b64,
    b64decode,
    decision_document,
    document_bytes,
    input_digest,
    label_digest,
    parse_document,
    parse_time,
    shown_digest,
    verify_decision,
)
from .keys import approver_id, gate_facts, key_records
from .models import ApproverKey, DecisionSignature


class SignatureRefused(Exception):
    """A signed decision that is not accepted. ``kind``: one of document.KINDS, or ``gate_mismatch``
    (the document is about another gate, revision, label or content), ``approver_mismatch``,
    ``option_mismatch``, ``input_mismatch``, ``replayed`` (nonce or signature seen before)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class SignedDecision:
    document: dict
    document_bytes: bytes
    signature: bytes
    key_id: str

    @property
    def nonce(self) -> str:
        return self.document["nonce"]

    def wire(self) -> dict:
        return {"document": self.document_bytes.decode("utf-8"), "signature": b64(self.signature), "key_id": self.key_id}

    @classmethod
    def from_wire(cls, document: str | bytes, signature: str | bytes) -> SignedDecision:
        try:
            raw = document.encode("utf-8") if isinstance(document, str) else bytes(document)
            parsed = parse_document(raw)
            sig = b64decode(signature, "signature") if isinstance(signature, str) else bytes(signature)
        except DecisionSignatureError as exc:
            raise SignatureRefused(exc.kind, exc.message) from None
        except ValueError as exc:
            raise SignatureRefused("malformed_signature", str(exc)) from None
        return cls(document=parsed, document_bytes=raw, signature=sig, key_id=parsed["key_id"])


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def decision_sign(signer, *, gate, approver, option: str, input_value=None, at: datetime | None = None,
                  nonce: str | None = None) -> SignedDecision:
    """Build the document for this decision, have ``signer`` sign it, check the signature against
    the registered key, return it. ``gate`` is a Gate (or gate_facts of one), ``approver`` a user."""
    facts = gate if isinstance(gate, dict) else gate_facts(gate)
    document = decision_document(facts, approver_id(approver), option, input_value, signer.key_id,
                                 nonce or new_nonce(), at or timezone.now())
    raw = document_bytes(document)
    key_id, signature = signer.sign(raw)
    if key_id != signer.key_id:
        raise SignatureRefused("key_mismatch", f"the signer used {key_id}, the document names {signer.key_id}")
    try:
        verify_decision(raw, signature, key_id, key_records([key_id]))
    except DecisionSignatureError as exc:
        raise SignatureRefused(exc.kind, exc.message) from None
    return SignedDecision(document=document, document_bytes=raw, signature=signature, key_id=key_id)


def decision_signature_check(signed: SignedDecision, *, gate, expect_approver=None, expect_option: str | None = None,
                             expect_input=...) -> ApproverKey:
    """Verify a signed decision against the database's keys and the gate as it is now; the key."""
    try:
        document = verify_decision(signed.document_bytes, signed.signature, signed.key_id, key_records([signed.key_id]))
    except DecisionSignatureError as exc:
        raise SignatureRefused(exc.kind, exc.message) from None
    facts = gate_facts(gate)
    expected = {"tenant": facts["tenant"], "run": facts["run"], "gate": facts["id"], "gate_revision": facts["revision"],
                "label": label_digest(facts["label"]), "shown": shown_digest(facts)}
    for name, value in expected.items():
        if document[name] != value:
            raise SignatureRefused("gate_mismatch", f"the document's {name} is not the gate's")
    if not any(o["name"] == document["option"] for o in facts["options"]):
        raise SignatureRefused("option_mismatch", f"the gate has no option {document['option']!r}")
    if expect_approver is not None and document["approver"] != approver_id(expect_approver):
        raise SignatureRefused("approver_mismatch", "the document names another approver")
    if expect_option is not None and document["option"] != expect_option:
        raise SignatureRefused("option_mismatch", "the document names another option")
    if expect_input is not ... and document["input"] != input_digest(expect_input):
        raise SignatureRefused("input_mismatch", "the document's input digest is not that of the input")
    return ApproverKey.objects.get(key_id=signed.key_id)


def decision_signature_record(signed: SignedDecision, *, gate, decision=None, expect_approver=None,
                              expect_option: str | None = None, expect_input=...) -> DecisionSignature:
    """Check (decision_signature_check) and store a signed decision, in the caller's transaction.
    A nonce or signature already stored is refused as ``replayed``."""
    key = decision_signature_check(signed, gate=gate, expect_approver=expect_approver, expect_option=expect_option,
                                   expect_input=expect_input)
    if decision is not None and key.user_id != decision.approver_id:
        raise SignatureRefused("approver_mismatch", "the key is not the deciding user's")
    signature_sha256 = hashlib.sha256(signed.signature).hexdigest()
    if DecisionSignature.objects.filter(nonce=signed.nonce).exists() or \
            DecisionSignature.objects.filter(signature_sha256=signature_sha256).exists():
        raise SignatureRefused("replayed", "this nonce or signature was already used")
    try:
        with transaction.atomic():  # a savepoint: the race loser is refused, the caller's transaction goes on
            return DecisionSignature.objects.create(
                tenant_id=gate.tenant_id, gate=gate, gate_revision=signed.document["gate_revision"], decision=decision,
                key=key, document=signed.document_bytes, document_sha256=hashlib.sha256(signed.document_bytes).hexdigest(),
                signature=signed.signature, signature_sha256=signature_sha256, nonce=signed.nonce,
                signed_at=parse_time(signed.document["at"]),
            )
    except IntegrityError:
        raise SignatureRefused("replayed", "this nonce or signature was already used") from None
