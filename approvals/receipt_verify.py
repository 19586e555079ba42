"""Offline verifier of Gatehouse approval receipts.

    python -m approvals.receipt_verify RECEIPT [--quiet]
    python receipt_verify.py RECEIPT ...        (copied alone next to approvals/signing/document.py)
    gatehouse approval verify RECEIPT

Needs nothing but Python 3.11+, ``cryptography`` and ``rfc8785`` (the RFC 8785 JSON
Canonicalization Scheme, Trail of Bits' pure-Python package, which decision documents are
canonicalized with: the verifier depends on it rather than re-implementing it). It imports nothing
of Django or of the rest of Gatehouse except ``approvals/signing/document.py``, which is equally
standalone. Exit status: 0 the receipt verifies, 1 it does not (``FAILED <kind> ...`` on stderr),
2 usage error (no such file, not JSON).

Checks, in order, with the failure ``kind`` each reports:

``malformed``           the receipt's structure (format, fields, types, keys listed twice)
``label_mismatch``      the policy's label is not the gate's, or a label digest is not SHA-256 of it
then for each signed decision, in the receipt's order:
``document_hash``       the recorded SHA-256 of the document is not that of its bytes
``malformed_document``, ``malformed_signature``, ``unknown_key``, ``key_mismatch``,
``wrong_approver``, ``key_revoked``, ``key_not_yet_valid``, ``key_rotated_out``, ``bad_signature``
                        verify_decision against the receipt's keys (document.KINDS)
``gate_mismatch``       the document is about another tenant, run, gate, revision, label, or
                        other content than the gate shown in the receipt (shown_digest recomputed)
``unknown_option``      the document's option is not one of the gate's
``duplicate_approver``  a second decision by the same approver
``replayed_nonce``      a nonce or a signature used twice
A decision marked ``voided`` (the server's statement that it stopped counting, e.g. its maker's
clearance was withdrawn) is checked like the others but not counted.
and last
``outcome_mismatch``    the outcome does not follow from the decisions and the policy: APPROVED
                        needs ``required_approvals`` distinct approving approvers and fewer
                        rejections than reject it; REJECTED by decisions needs one rejection
                        (``reject_rule`` ``any_reject``) or ``required_rejections`` of them
                        (``reject_rule`` ``required_rejections``);
                        an outcome by deadline or cancellation, or a gate still open, needs the
                        decisions not to have concluded it; approvals enough to approve together
                        with a rejection is never consistent (the first conclusive outcome ends the
                        gate).

What this cannot check offline: that the approvers held the roles or groups the policy names
(the audit log records each decision with the actor's roles), and that the receipt's keys are the
server's (compare them with the key enrolment entries of a verified audit bundle).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

try:  # inside the approvals package
    from .signing import document as doc
except ImportError:  # copied alone next to document.py (also under python -I)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import document as doc  # type: ignore[no-redef]

__all__ = ["KINDS", "RECEIPT_FORMAT", "Report", "ReceiptFailure", "verify_receipt", "main"]

RECEIPT_FORMAT = "gatehouse-approval-receipt/1"
STATES = ("OPEN", "APPROVED", "REJECTED", "EXPIRED", "CANCELLED")
BY = {"OPEN": (None,), "APPROVED": ("decisions",), "REJECTED": ("decisions", "deadline"), "EXPIRED": ("deadline",),
      "CANCELLED": ("cancellation",)}
KINDS = ("malformed", "label_mismatch", "document_hash", *doc.KINDS, "gate_mismatch", "unknown_option",
         "duplicate_approver", "replayed_nonce", "outcome_mismatch")


class ReceiptFailure(Exception):
    def __init__(self, kind: str, message: str, decision: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.decision = kind, message, decision


@dataclass
class Report:
    ok: bool = False
    gate: str = ""
    state: str = ""
    decisions: int = 0
    approvals: int = 0
    rejections: int = 0
    required: int = 0
    keys: int = 0
    voided: int = 0
    failure: ReceiptFailure | None = None
    approvers: list[str] = field(default_factory=list)

    def result_line(self) -> str:
        if self.ok:
            return (f"OK: gate {self.gate} {self.state}: {self.decisions} signed decision(s) by "
                    f"{len(self.approvers)} distinct approver(s), {self.approvals} approve / {self.rejections} reject, "
                    f"{self.approvals} of {self.required} required approval(s)"
                    + (f", {self.voided} voided" if self.voided else "") + f"; {self.keys} key(s)")
        f = self.failure
        where = f" at decision {f.decision}" if f is not None and f.decision is not None else ""
        return f"FAILED {f.kind}{where}: {f.message}" if f else "FAILED"


def _need(obj: Any, name: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise ReceiptFailure("malformed", f"{where} has no {name}")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReceiptFailure("malformed", f"{where}.{name} has the wrong type")
    return value


def _check_gate(gate: Any) -> None:
    for name, kind in (("id", str), ("tenant", str), ("run", str), ("revision", int), ("label", str),
                       ("title", str), ("instructions", str), ("options", list), ("shows", list)):
        _need(gate, name, kind, "gate")
    if "form" not in gate:
        raise ReceiptFailure("malformed", "gate has no form (null when there is none)")
    for option in gate["options"]:
        for name in ("name", "label", "outcome"):
            _need(option, name, str, "gate.options[]")
        if option["outcome"] not in ("approve", "reject"):
            raise ReceiptFailure("malformed", f"option {option['name']!r} has outcome {option['outcome']!r}")
    for shown in gate["shows"]:
        _need(shown, "ref", str, "gate.shows[]")


def _verify(receipt: Any, report: Report) -> None:
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise ReceiptFailure("malformed", f"not a {RECEIPT_FORMAT} receipt")
    gate = _need(receipt, "gate", dict, "receipt")
    policy = _need(receipt, "policy", dict, "receipt")
    outcome = _need(receipt, "outcome", dict, "receipt")
    decisions = _need(receipt, "decisions", list, "receipt")
    key_list = _need(receipt, "keys", list, "receipt")
    _check_gate(gate)
    report.gate = gate["id"]
    required = _need(policy, "required_approvals", int, "policy")
    if required < 1:
        raise ReceiptFailure("malformed", "policy.required_approvals must be at least 1")
    report.required = required
    _need(policy, "approvers", list, "policy")
    rule = _need(policy, "reject_rule", str, "policy")
    if rule == "any_reject":
        required_rejections = 1
    elif rule == "required_rejections":
        required_rejections = _need(policy, "required_rejections", int, "policy")
        if required_rejections < 1:
            raise ReceiptFailure("malformed", "policy.required_rejections must be at least 1")
    else:
        raise ReceiptFailure("malformed", f"unknown reject rule {rule!r}")
    try:
        gate_label = doc.label_digest(gate["label"])
    except ValueError as exc:
        raise ReceiptFailure("label_mismatch", f"gate.label: {exc}") from None
    if _need(policy, "label", str, "policy") != gate["label"] or \
            _need(policy, "label_digest", str, "policy") != gate_label:
        raise ReceiptFailure("label_mismatch", "the policy's label is not the gate's label or its digest")
    state = _need(outcome, "state", str, "outcome")
    if state not in STATES or outcome.get("by") not in BY[state]:
        raise ReceiptFailure("malformed", f"unknown outcome {state!r} by {outcome.get('by')!r}")
    report.state = state

    keys: dict[str, doc.KeyRecord] = {}
    for item in key_list:
        try:
            record = doc.KeyRecord.from_json(item)
        except ValueError as exc:
            raise ReceiptFailure("malformed", f"keys: {exc}") from None
        if record.key_id in keys:
            raise ReceiptFailure("malformed", f"key {record.key_id} is listed twice")
        keys[record.key_id] = record
    report.keys = len(keys)

    expected = {"tenant": gate["tenant"], "run": gate["run"], "gate": gate["id"], "gate_revision": gate["revision"],
                "label": gate_label, "shown": doc.shown_digest(gate)}
    options = {o["name"]: o["outcome"] for o in gate["options"]}
    approvers: dict[str, str] = {}
    nonces: set[str] = set()
    signatures: set[str] = set()
    approving: set[str] = set()
    rejections = voided_count = 0
    for index, entry in enumerate(decisions):
        where = f"decisions[{index}]"
        text = _need(entry, "document", str, where)
        raw = text.encode("utf-8")
        if _need(entry, "document_sha256", str, where) != hashlib.sha256(raw).hexdigest():
            raise ReceiptFailure("document_hash", "the document's SHA-256 is not the one recorded", index)
        signature = _need(entry, "signature", str, where)
        try:
            document = doc.verify_decision(raw, signature, _need(entry, "key_id", str, where), keys)
        except doc.DecisionSignatureError as exc:
            raise ReceiptFailure(exc.kind, exc.message, index) from None
        for name, value in expected.items():
            if document[name] != value:
                raise ReceiptFailure("gate_mismatch", f"the document's {name} is not the receipt's gate's", index)
        if document["option"] not in options:
            raise ReceiptFailure("unknown_option", f"the gate has no option {document['option']!r}", index)
        if document["approver"] in approvers:
            raise ReceiptFailure("duplicate_approver", f"{document['approver']} decided twice", index)
        if document["nonce"] in nonces or signature in signatures:
            raise ReceiptFailure("replayed_nonce", "a nonce or signature is used twice", index)
        approvers[document["approver"]] = document["option"]
        nonces.add(document["nonce"])
        signatures.add(signature)
        voided = entry.get("voided")
        if voided is not None:
            _need(voided, "at", str, f"{where}.voided")
            voided_count += 1
            continue
        if options[document["option"]] == "approve":
            approving.add(document["approver"])
        else:
            rejections += 1
    report.decisions, report.approvals, report.rejections = len(decisions), len(approving), rejections
    report.voided = voided_count
    report.approvers = sorted(approvers)

    approved, rejected = len(approving) >= required, rejections >= required_rejections
    if approved and rejected:
        raise ReceiptFailure("outcome_mismatch", "the decisions both approve and reject the gate")
    by = outcome.get("by")
    if state == "APPROVED" and not approved:
        raise ReceiptFailure("outcome_mismatch", f"APPROVED with {len(approving)} of {required} required approvals")
    if state == "REJECTED" and by == "decisions" and not rejected:
        raise ReceiptFailure("outcome_mismatch", f"REJECTED by decisions with {rejections} of {required_rejections} "
                             "required rejections")
    if by in (None, "deadline", "cancellation") and (approved or rejected):
        raise ReceiptFailure("outcome_mismatch", f"{state} ({by or 'open'}), but the decisions concluded the gate "
                                                 f"({'approved' if approved else 'rejected'})")


def verify_receipt(receipt: dict | str | bytes) -> Report:
    """Verify a receipt (parsed, or its JSON text); the report says OK or the first failure."""
    report = Report()
    try:
        if isinstance(receipt, (str, bytes)):
            try:
                receipt = json.loads(receipt)
            except ValueError as exc:
                raise ReceiptFailure("malformed", f"not JSON: {exc}") from None
        _verify(receipt, report)
        report.ok = True
    except ReceiptFailure as failure:
        report.failure = failure
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 verified, 1 failed, 2 usage error)."""
    parser = argparse.ArgumentParser(
        prog="receipt_verify",
        description="Verify a Gatehouse approval receipt offline (needs only Python, cryptography and rfc8785).")
    parser.add_argument("receipt", help="the receipt file (JSON)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        with open(args.receipt, "rb") as fh:
            text = fh.read()
        receipt = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"receipt_verify: error: cannot read {args.receipt}: {exc}", file=sys.stderr)
        return 2
    report = verify_receipt(receipt)
    if report.ok:
        if not args.quiet:
            print(report.result_line())
        return 0
    print(report.result_line(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
