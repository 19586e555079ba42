"""Receipts built from real decisions, checked by the offline verifier: OK, every tampering caught,
the command lines' exit codes, and the verifier running with Django out of reach."""
from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from approvals.receipt_verify import verify_receipt
from approvals.services import gate_decide
from approvals.signing.decisions import decision_sign
from approvals.signing.keys import approver_key_enrol, approver_key_revoke
from approvals.signing.receipts import receipt_build
from approvals.signing.signers import LocalSigner
from gateway import cli

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def _decide(gate, user, option, input_value=None):
    """A decision signed by the approver (as a client that signs itself would), recorded by gate_decide."""
    signed = decision_sign(LocalSigner.for_user(user), gate=gate, approver=user, option=option, input_value=input_value)
    return gate_decide(gate=gate, actor=user, option=option, input_value=input_value, signed=signed)


@pytest.fixture
def approved(master_key_file, make_gate, approvers):
    """A 2-of-N gate approved by two analysts, and its receipt."""
    gate = make_gate(required_approvals=2)
    for user in approvers[:2]:
        approver_key_enrol(user)
        _decide(gate, user, "confirm")
    gate.refresh_from_db()
    assert gate.state == "APPROVED"
    return gate, receipt_build(gate)


def _kind(receipt) -> str | None:
    report = verify_receipt(receipt)
    return None if report.ok else report.failure.kind


def test_an_approved_gates_receipt_verifies(approved):
    gate, receipt = approved
    report = verify_receipt(receipt)
    assert report.ok, report.result_line()
    assert (report.decisions, report.approvals, report.rejections, report.required, report.keys) == (2, 2, 0, 2, 2)
    assert report.result_line().startswith(f"OK: gate {gate.id} APPROVED")
    from gateway.labels import parse_label

    assert receipt["policy"]["label_digest"] == parse_label(gate.classification).digest()


def test_a_rejected_gates_receipt_verifies(master_key_file, make_gate, approvers):
    gate = make_gate(required_approvals=2)
    for user in approvers[:2]:
        approver_key_enrol(user)
    _decide(gate, approvers[0], "confirm")
    _decide(gate, approvers[1], "reject", None)
    gate.refresh_from_db()
    report = verify_receipt(receipt_build(gate))
    assert report.ok and report.state == "REJECTED" and (report.approvals, report.rejections) == (1, 1)


def _resign(receipt, index, private, mutate):
    """Change a document and sign it again with `private` (a forger holding some key)."""
    entry = receipt["decisions"][index]
    document = json.loads(entry["document"])
    mutate(document)
    from approvals.signing.document import document_bytes

    raw = document_bytes(document)
    entry.update(document=raw.decode(), signature=base64.b64encode(private.sign(raw)).decode(),
                 document_sha256=__import__("hashlib").sha256(raw).hexdigest(), key_id=document["key_id"])


TAMPERINGS = {
    # the analyst's option changed in the document (the hash kept as recorded)
    "changed option": (lambda r: r["decisions"][0].update(
        document=r["decisions"][0]["document"].replace('"option":"confirm"', '"option":"reject"')), "document_hash"),
    # ... and the recorded hash updated too: the signature no longer matches
    "changed option, hash updated": (lambda r: (r["decisions"][0].update(
        document=r["decisions"][0]["document"].replace('"option":"confirm"', '"option":"reject"')),
        r["decisions"][0].update(document_sha256=__import__("hashlib").sha256(
            r["decisions"][0]["document"].encode()).hexdigest())), "bad_signature"),
    "dropped signature": (lambda r: r["decisions"].pop(), "outcome_mismatch"),
    "signature removed from an entry": (lambda r: r["decisions"][0].pop("signature"), "malformed"),
    "truncated signature": (lambda r: r["decisions"][0].update(signature=base64.b64encode(
        base64.b64decode(r["decisions"][0]["signature"])[:40]).decode()), "malformed_signature"),
    "swapped public key": (lambda r: r["keys"][0].update(public_key=r["keys"][1]["public_key"]), "key_mismatch"),
    "signature filed under the other approver's key": (
        lambda r: r["decisions"][0].update(key_id=r["decisions"][1]["key_id"]), "key_mismatch"),
    "key dropped": (lambda r: r["keys"].pop(0), "unknown_key"),
    "key marked revoked": (lambda r: r["keys"][0].update(revoked_at="2026-01-01T00:00:00.000000Z"), "key_revoked"),
    "key marked rotated out long ago": (
        lambda r: r["keys"][0].update(retired_at="2000-01-01T00:00:00.000000Z"), "key_rotated_out"),
    "changed outcome": (lambda r: r["outcome"].update(state="REJECTED"), "outcome_mismatch"),
    "outcome said to be the deadline": (lambda r: r["outcome"].update(state="EXPIRED", by="deadline"),
                                        "outcome_mismatch"),
    "more approvals required": (lambda r: r["policy"].update(required_approvals=3), "outcome_mismatch"),
    "a decision counted twice": (lambda r: r["decisions"].append(copy.deepcopy(r["decisions"][0])),
                                 "duplicate_approver"),
    "gate title changed": (lambda r: r["gate"].update(title="Something harmless"), "gate_mismatch"),
    "artefact digest changed": (lambda r: r["gate"]["shows"].append({"ref": "x/y", "digest": "0" * 64}),
                                "gate_mismatch"),
    "label changed": (lambda r: (r["gate"].update(label="v1|GH|SECRET"),
                                 r["policy"].update(label="v1|GH|SECRET")), "label_mismatch"),
    "label and its digest changed": (lambda r: (r["gate"].update(label="v1|GH|SECRET"),
                                                r["policy"].update(label="v1|GH|SECRET", label_digest=__import__(
                                                    "hashlib").sha256(b"v1|GH|SECRET").hexdigest())), "gate_mismatch"),
    "not a receipt": (lambda r: r.update(format="something/1"), "malformed"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_each_tampering_is_detected(approved, name):
    _, receipt = approved
    tamper, kind = TAMPERINGS[name]
    tampered = copy.deepcopy(receipt)
    tamper(tampered)
    assert _kind(tampered) == kind


def test_a_forger_with_their_own_key_is_caught(approved):
    """A changed document signed again with a key the forger made: the document still names the
    approver's key, whose listed public key does not verify it."""
    _, receipt = approved
    forger = Ed25519PrivateKey.generate()
    tampered = copy.deepcopy(receipt)
    _resign(tampered, 0, forger, lambda d: d.update(option="reject"))
    assert _kind(tampered) == "bad_signature"


def test_a_revoked_key_makes_the_receipt_fail(approved, approvers):
    gate, _ = approved
    from approvals.signing.models import ApproverKey

    approver_key_revoke(ApproverKey.objects.get(user=approvers[0]), reason="compromised")
    assert _kind(receipt_build(gate)) == "key_revoked"


def test_command_lines_exit_codes(approved, tmp_path, capsys):
    _, receipt = approved
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(receipt))
    bad = tmp_path / "bad.json"
    tampered = copy.deepcopy(receipt)
    tampered["outcome"]["state"] = "REJECTED"
    bad.write_text(json.dumps(tampered))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")

    assert cli.main(["approval", "verify", str(good)]) == 0
    assert "OK: gate" in capsys.readouterr().out
    assert cli.main(["approval", "verify", str(bad)]) == 1
    assert "FAILED outcome_mismatch" in capsys.readouterr().err
    assert cli.main(["approval", "verify", str(garbage)]) == 2
    assert cli.main(["approval", "verify", str(tmp_path / "missing.json")]) == 2

    for path, code in ((good, 0), (bad, 1), (garbage, 2)):
        done = subprocess.run([sys.executable, "-m", "approvals.receipt_verify", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr


def test_the_verifier_runs_alone_without_django(approved, tmp_path):
    """Copied out next to document.py, under python -I, with Django and the project made unimportable."""
    _, receipt = approved
    for name in ("approvals/receipt_verify.py", "approvals/signing/document.py"):
        shutil.copy(ROOT / name, tmp_path / Path(name).name)
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    guard = ("import sys, runpy\n"
             "for name in ('django', 'gateway', 'audit', 'approvals', 'rest_framework'):\n"
             "    sys.modules[name] = None\n"
             "sys.argv = ['receipt_verify.py', sys.argv[1]]\n"
             "runpy.run_path('receipt_verify.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-I", "-c", guard, "receipt.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: gate ")
