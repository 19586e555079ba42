"""The decision document and verify_decision, without a database: RFC 8785 vectors, the document's
round trip, what "shown" covers, and every signature verify_decision must refuse."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from approvals.signing.document import (
    DecisionSignatureError,
    KeyRecord,
    decision_document,
    document_bytes,
    input_digest,
    jcs,
    key_fingerprint,
    label_digest,
    parse_document,
    shown_digest,
    verify_decision,
)
from audit.canonical import canonical

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
NONCE = base64.urlsafe_b64encode(b"n" * 24).decode().rstrip("=")

GATE = {
    "id": "7f4c1a52-8a51-4c0e-9d2b-6a1d3c0a9e11",
    "tenant": "1",
    "run": "0b8f1f6e-1b7e-4f1d-8b9e-2f4a0c6d5e21",
    "revision": 1,
    "label": "v1|GH|SECRET",
    "title": "Validate detected threats",
    "instructions": "Check every detection.",
    "options": [{"name": "confirm", "label": "Confirm", "outcome": "approve"},
                {"name": "reject", "label": "Reject", "outcome": "reject"}],
    "form": {"type": "object", "properties": {"corrections": {"type": "array"}}},
    "shows": [{"ref": "detect/detections", "digest": "a" * 64}],
}


# -- RFC 8785 ------------------------------------------------------------------------------------


def test_jcs_matches_the_rfc_8785_example():
    # RFC 8785, section 3.2.2 (input) and 3.2.3 (output).
    source = ('{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
              '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}')
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}').encode("utf-8")
    assert jcs(json.loads(source)) == expected


def test_jcs_sorts_keys_by_utf16_code_units_as_rfc_8785_section_3_2_3():
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
             "\u00f6": "Latin Small Letter O With Diaeresis"}
    order = [k for k in json.loads(jcs(value))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    # The audit log's canonical JSON sorts by code point: the two differ here, and documents use JCS.
    assert canonical(value) != jcs(value)


def test_input_digest_is_over_jcs():
    import hashlib

    value = {"b": [1, 2.5, "\U0001f600"], "a": None, "\ufb33": True}
    assert input_digest(value) == hashlib.sha256(jcs(value)).hexdigest()
    assert input_digest(None) == hashlib.sha256(b"null").hexdigest()


# -- documents -----------------------------------------------------------------------------------


def _key(approver="alice", created=T0 - timedelta(days=1), **validity):
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    record = KeyRecord(key_id=key_fingerprint("ed25519", public), approver=approver, algorithm="ed25519",
                       public_key=public, created_at=created, **validity)
    return private, record


def _signed(private, record, *, approver=None, option="confirm", at=T0, nonce=NONCE, input_value=None):
    document = decision_document(GATE, approver or record.approver, option, input_value, record.key_id, nonce, at)
    raw = document_bytes(document)
    return document, raw, private.sign(raw)


def test_document_round_trip_and_fields():
    private, record = _key()
    document, raw, signature = _signed(private, record, input_value={"corrections": [{"id": 3}]})
    assert parse_document(raw) == document
    assert document["label"] == label_digest("v1|GH|SECRET")
    assert document["shown"] == shown_digest(GATE)
    assert document["input"] == input_digest({"corrections": [{"id": 3}]})
    assert document["at"] == "2026-11-21T09:00:00.000000Z"
    assert verify_decision(raw, signature, record.key_id, {record.key_id: record}) == document
    # The document as an object, or the signature in base64, verify the same.
    assert verify_decision(document, base64.b64encode(signature).decode(), record.key_id, {record.key_id: record})


def test_label_digest_is_the_labels_own_digest():
    from gateway.labels import parse_label

    label = parse_label("SECRET")
    assert label_digest(label.canonical()) == label.digest()


@pytest.mark.parametrize("change", [
    lambda g: g.update(title="Validate threats"),
    lambda g: g.update(instructions=""),
    lambda g: g.update(options=list(reversed(g["options"]))),  # the order shown is part of it
    lambda g: g["options"][0].update(label="Approve"),
    lambda g: g["options"][1].update(outcome="approve"),
    lambda g: g.update(form=None),
    lambda g: g["shows"][0].update(digest="b" * 64),
    lambda g: g["shows"].append({"ref": "detect/log", "digest": "c" * 64}),
])
def test_shown_digest_covers_everything_the_analyst_sees(change):
    gate = json.loads(json.dumps(GATE))
    change(gate)
    assert shown_digest(gate) != shown_digest(GATE)


def test_shown_digest_ignores_what_the_analyst_does_not_see():
    gate = json.loads(json.dumps(GATE))
    gate["shows"][0]["artefact"] = "0c7d..."  # a database id
    gate["revision"] = 9
    gate["label"] = "v1|GH|TOP SECRET"
    assert shown_digest(gate) == shown_digest(GATE)


# -- refusals ------------------------------------------------------------------------------------


def _refused(kind, raw, signature, key_id, keys):
    with pytest.raises(DecisionSignatureError) as exc:
        verify_decision(raw, signature, key_id, keys)
    assert exc.value.kind == kind, exc.value
    return exc.value


def test_forged_signatures_are_refused():
    private, record = _key()
    _, raw, signature = _signed(private, record)
    keys = {record.key_id: record}
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    _refused("bad_signature", raw, flipped, record.key_id, keys)
    # Another key's signature over the same document, filed under this key id.
    other, _ = _key()
    _refused("bad_signature", raw, other.sign(raw), record.key_id, keys)
    # The document changed after signing (another option), the signature kept.
    changed = raw.replace(b'"option":"confirm"', b'"option":"reject"')
    _refused("bad_signature", changed, signature, record.key_id, keys)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 63, b"\x00" * 65, "not base64!", "AAAA"])
def test_truncated_or_malformed_signatures_are_refused(signature):
    private, record = _key()
    _, raw, good = _signed(private, record)
    if signature == b"\x00" * 63:
        signature = good[:63]
    _refused("malformed_signature", raw, signature, record.key_id, {record.key_id: record})


def test_a_signature_by_another_approvers_key_is_refused():
    alice_private, alice = _key("alice")
    bob_private, bob = _key("bob")
    keys = {alice.key_id: alice, bob.key_id: bob}
    # Bob's key signs a document that says Alice decided.
    _, raw, signature = _signed(bob_private, bob, approver="alice")
    error = _refused("wrong_approver", raw, signature, bob.key_id, keys)
    assert "belongs to bob" in str(error)


def test_a_revoked_key_is_refused_whatever_the_date():
    private, record = _key(revoked_at=T0 + timedelta(days=30), reason="laptop stolen")
    _, raw, signature = _signed(private, record)  # dated before the revocation
    error = _refused("key_revoked", raw, signature, record.key_id, {record.key_id: record})
    assert "laptop stolen" in str(error)


def test_a_key_rotated_out_before_the_documents_time_is_refused():
    private, record = _key(retired_at=T0)
    _, raw, signature = _signed(private, record, at=T0)
    _refused("key_rotated_out", raw, signature, record.key_id, {record.key_id: record})
    # What it signed before its rotation still verifies.
    _, raw, signature = _signed(private, record, at=T0 - timedelta(seconds=1))
    verify_decision(raw, signature, record.key_id, {record.key_id: record})


def test_a_document_dated_before_the_key_existed_is_refused():
    private, record = _key(created=T0 + timedelta(seconds=1))
    _, raw, signature = _signed(private, record, at=T0)
    _refused("key_not_yet_valid", raw, signature, record.key_id, {record.key_id: record})


def test_unknown_and_mismatched_keys_are_refused():
    private, record = _key()
    _, raw, signature = _signed(private, record)
    _refused("unknown_key", raw, signature, record.key_id, {})
    other_private, other = _key()
    # The caller names a key the document does not.
    _refused("key_mismatch", raw, other_private.sign(raw), other.key_id, {other.key_id: other})
    # A public key swapped in under the document's key id.
    swapped = KeyRecord(**{**record.__dict__, "public_key": other.public_key})
    _refused("key_mismatch", raw, other_private.sign(raw), record.key_id, {record.key_id: swapped})


@pytest.mark.parametrize("mutate", [
    lambda raw: raw + b" ",  # not canonical
    lambda raw: raw.replace(b'{"approver"', b'{"extra":1,"approver"'),  # a field too many
    lambda raw: raw.replace(b'"gate_revision":1', b'"gate_revision":1.0'),  # a float
    lambda raw: raw.replace(b'"gate_revision":1', b'"gate_revision":"1"'),  # a string
    lambda raw: raw.replace(b"gatehouse.gate-decision/v1", b"gatehouse.gate-decision/v2"),
    lambda raw: raw.replace(b"2026-11-21T09:00:00.000000Z", b"2026-11-21T09:00:00Z"),
    lambda raw: raw[:-1],  # truncated JSON
    lambda raw: b"\xff" + raw,
])
def test_bad_documents_are_refused(mutate):
    private, record = _key()
    _, raw, _ = _signed(private, record)
    bad = mutate(raw)
    _refused("malformed_document", bad, private.sign(bad), record.key_id, {record.key_id: record})


def test_a_short_nonce_is_refused_when_building():
    _, record = _key()
    with pytest.raises(DecisionSignatureError) as exc:
        decision_document(GATE, "alice", "confirm", None, record.key_id, "short", T0)
    assert exc.value.kind == "malformed_document"


def test_ecdsa_p256_keys_verify_and_refuse_forgeries():
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    record = KeyRecord(key_id=key_fingerprint("ecdsa-p256", public), approver="alice", algorithm="ecdsa-p256",
                       public_key=public, created_at=T0 - timedelta(days=1))
    raw = document_bytes(decision_document(GATE, "alice", "confirm", None, record.key_id, NONCE, T0))
    signature = private.sign(raw, ec.ECDSA(hashes.SHA256()))
    keys = {record.key_id: record}
    verify_decision(raw, signature, record.key_id, keys)
    _refused("bad_signature", raw, private.sign(raw + b"x", ec.ECDSA(hashes.SHA256())), record.key_id, keys)
    _refused("malformed_signature", raw, signature[:6], record.key_id, keys)
