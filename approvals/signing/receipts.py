"""Receipts: one JSON file that lets anyone check a gate's outcome offline.

``receipt_build(gate)`` gathers the gate as shown (gate_facts), the policy that applied, the outcome,
every signed decision of the gate's current revision (exact signed bytes, signature, key id) and the
public keys that signed them with their validity. ``python -m approvals.receipt_verify RECEIPT``
(or ``gatehouse approval verify RECEIPT``) checks it with Python, ``cryptography`` and ``rfc8785``.

The receipt's keys come from this server. To trust them independently, compare them with the
``approver_key.enrolled`` / ``approver_key.rotated`` entries of a verified audit bundle, which
record each public key when it was registered.
"""
from __future__ import annotations

import json
from pathlib import Path

from django.utils import timezone

from .document import b64, format_time, label_digest
from .keys import gate_facts, key_record
from .models import DecisionSignature

RECEIPT_FORMAT = "gatehouse-approval-receipt/1"
REJECT_RULE = "any_reject"  # one decision whose option rejects concludes the gate as rejected


def _outcome(gate) -> dict:
    state = str(gate.state)
    if state == "OPEN":
        by = None
    elif state == "CANCELLED":
        by = "cancellation"
    elif state == "EXPIRED" or gate.outcome_reason == "deadline passed":
        by = "deadline"
    else:
        by = "decisions"
    return {"state": state, "by": by, "decided_at": format_time(gate.decided_at) if gate.decided_at else None,
            "reason": gate.outcome_reason}


def _voided(signature) -> dict | None:
    """The server's statement that a decision stopped counting (its maker may no longer decide the
    gate); a voided decision is still shown and checked, but not counted."""
    decision = signature.decision
    voided_at = getattr(decision, "voided_at", None) if decision is not None else None
    if voided_at is None:
        return None
    return {"at": format_time(voided_at), "reason": getattr(decision, "void_reason", "")}


def receipt_build(gate) -> dict:
    facts = gate_facts(gate)
    signatures = list(DecisionSignature.objects.filter(gate=gate, gate_revision=gate.revision)
                      .select_related("key", "decision").order_by("signed_at", "id"))
    keys = {s.key.key_id: key_record(s.key) for s in signatures}
    return {
        "format": RECEIPT_FORMAT,
        "built_at": format_time(timezone.now()),
        "gate": facts,
        "policy": {
            "required_approvals": gate.required_approvals,
            "approvers": list(gate.approvers),
            "label": facts["label"],
            "label_digest": label_digest(facts["label"]),
            "reject_rule": REJECT_RULE if gate.required_rejections == 1 else "required_rejections",
            "required_rejections": gate.required_rejections,
            "on_timeout": gate.on_timeout,
            "escalated": gate.escalated,
        },
        "outcome": _outcome(gate),
        "decisions": [
            {"document": bytes(s.document).decode("utf-8"), "document_sha256": s.document_sha256,
             "signature": b64(bytes(s.signature)), "key_id": s.key.key_id, "voided": _voided(s)}
            for s in signatures
        ],
        "keys": [keys[k].as_json() for k in sorted(keys)],
    }


def receipt_write(gate, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(receipt_build(gate), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
