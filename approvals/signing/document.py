"""Signed gate decisions: the document an approver signs, and how a signature over it is checked.

Standalone: the standard library, ``cryptography`` and ``rfc8785`` only (no Django, nothing else of
the project), so the offline receipt verifier (``approvals/receipt_verify.py``) uses this very code,
and both can be copied out of the project together.

Canonical form. Every hash and every signature here is over the RFC 8785 JSON Canonicalization
Scheme (JCS) bytes of a JSON value, produced by the ``rfc8785`` package (Trail of Bits' pure-Python
implementation; a declared dependency of the project and of the offline verifier). Documents hold
strings, integers and nested objects/arrays only; JCS refuses integers outside the IEEE 754 safe
range, and we refuse floats outright (a form input may hold them: its digest is JCS of it, which
is defined for finite floats, so ``input_digest`` accepts them).

What "shown" covers (``shown_digest``). Exactly what the portal and the API put before the analyst
for the gate, in display order, and nothing the analyst did not see::

    {"type": "gatehouse.gate-shown/v1",
     "title": str, "instructions": str,
     "options": [{"name": str, "label": str, "outcome": "approve"|"reject"}, ...],  # display order
     "form": <the JSON Schema of the input, or null>,
     "artefacts": [{"ref": "task/name", "digest": "<sha256 hex>" | null}, ...]}    # display order

``shown_digest`` is SHA-256 (hex) of the JCS bytes of that object. Artefacts are named by their
reference in the workflow and the SHA-256 of their content (the artefact store is
content-addressed); their database ids are not part of it. The gate's label is not part of "shown":
the document carries the label's own digest next to it.

The decision document (``decision_document``), type ``gatehouse.gate-decision/v1``::

    tenant, run, gate           ids (strings)
    gate_revision               int: a decision counts for one revision of the gate
    label                       SHA-256 hex of the label's canonical form "v1|<POLICY>|<banner>",
                                i.e. gateway.labels.Label.digest()
    shown                       shown_digest(gate)
    option                      the chosen option's name
    input                       input_digest(input_value): SHA-256 hex of JCS(input), JCS(null) if none
    approver                    the approver id (approvals.signing.keys.approver_id: the identity
                                provider's subject when there is one, else "user:<local id>")
    key_id                      the id of the key that signs it (key_fingerprint of its public key)
    nonce                       at least 16 random bytes, base64url without padding
    at                          RFC 3339 UTC time, microseconds, "Z"

Key ids are derived from the key (``key_fingerprint``: ``gk1:<first 16 bytes of SHA-256(alg NUL
public key), hex>``), so a public key swapped under a key id is caught before any signature check.

Verification (``verify_decision``) raises ``DecisionSignatureError`` whose ``kind`` is one of
``KINDS``; see there.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "ALGORITHMS",
    "DOCUMENT_TYPE",
    "KINDS",
    "SHOWN_TYPE",
    "DecisionSignatureError",
    "KeyRecord",
    "b64",
    "b64decode",
    "decision_document",
    "document_bytes",
    "document_digest",
    "format_time",
    "input_digest",
    "jcs",
    "key_fingerprint",
    "label_digest",
    "parse_document",
    "parse_time",
    "shown_digest",
    "shown_view",
    "verify_decision",
]

DOCUMENT_TYPE = "gatehouse.gate-decision/v1"
SHOWN_TYPE = "gatehouse.gate-shown/v1"
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
ALGORITHMS = (ED25519, ECDSA_P256)
MIN_NONCE_BYTES = 16

KINDS = (
    "malformed_document",  # not a decision document: bad JSON, not canonical, missing or mistyped field
    "malformed_signature",  # not base64, or of the wrong length for the algorithm (e.g. truncated)
    "unknown_key",  # no key with that id
    "key_mismatch",  # the key id is not the one the document names, or not the fingerprint of the key
    "wrong_approver",  # the key belongs to someone other than the document's approver
    "key_revoked",  # the key was revoked: nothing it signed is accepted
    "key_not_yet_valid",  # the document is dated before the key was created
    "key_rotated_out",  # the document is dated at or after the key was retired by a rotation
    "bad_signature",  # the signature does not verify
)

_FIELDS: dict[str, type] = {
    "type": str, "tenant": str, "run": str, "gate": str, "gate_revision": int, "label": str, "shown": str,
    "option": str, "input": str, "approver": str, "key_id": str, "nonce": str, "at": str,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]+")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_KEY_ID = re.compile(r"gk1:[0-9a-f]{32}")


class DecisionSignatureError(ValueError):
    """A decision signature that must not be accepted; ``kind`` is one of ``KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


# -------------------------------------------------------------------------------- encodings


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON value (the ``rfc8785`` package)."""
    return rfc8785.dumps(value)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    """Strict standard base64 (with padding), or ValueError naming ``what``."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any, what: str = "time") -> datetime:
    """A time written by ``format_time`` (exactly that form), as an aware UTC datetime."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise ValueError(f"{what} must be an RFC 3339 UTC time like 2026-01-02T03:04:05.000000Z")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def key_fingerprint(algorithm: str, public_key: bytes) -> str:
    """The key id of a public key: ``gk1:`` and the first 16 bytes (hex) of SHA-256(alg NUL key).
    Ed25519 keys are their 32 raw bytes, ECDSA P-256 keys the 65-byte uncompressed point."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    return "gk1:" + hashlib.sha256(algorithm.encode("ascii") + b"\x00" + public_key).hexdigest()[:32]


def label_digest(canonical_label: str) -> str:
    """SHA-256 hex of a label's canonical form ``v1|<POLICY>|<banner>`` (= gateway.labels.Label.digest())."""
    if not isinstance(canonical_label, str) or not canonical_label.startswith("v1|"):
        raise ValueError("a label is given in its canonical form v1|<POLICY>|<banner>")
    return _sha256_hex(canonical_label.encode("utf-8"))


def input_digest(input_value: Any) -> str:
    """SHA-256 hex of JCS(input); no input is JSON null."""
    return _sha256_hex(jcs(input_value))


# -------------------------------------------------------------------------------- documents


def shown_view(gate: Mapping[str, Any]) -> dict:
    """What the analyst is shown of ``gate`` (a plain mapping with title, instructions, options,
    form, shows), in the form that is hashed. See the module documentation."""
    options = [{"name": str(o["name"]), "label": str(o.get("label") or o["name"]), "outcome": str(o["outcome"])}
               for o in gate["options"]]
    artefacts = [{"ref": str(s["ref"]), "digest": s.get("digest")} for s in gate.get("shows") or []]
    return {
        "type": SHOWN_TYPE,
        "title": str(gate["title"]),
        "instructions": str(gate.get("instructions") or ""),
        "options": options,
        "form": gate.get("form"),
        "artefacts": artefacts,
    }


def shown_digest(gate: Mapping[str, Any]) -> str:
    """SHA-256 hex of JCS(shown_view(gate))."""
    return _sha256_hex(jcs(shown_view(gate)))


def decision_document(gate: Mapping[str, Any], approver: str, option: str, input_value: Any, key_id: str,
                      nonce: str, at: datetime | str) -> dict:
    """The document an approver signs. ``gate`` is a plain mapping: id, tenant, run, revision, label
    (canonical form) and what shown_digest reads (approvals.signing.keys.gate_facts builds it from a
    Gate). ``at`` is an aware datetime or a time already in the document's form."""
    document = {
        "type": DOCUMENT_TYPE,
        "tenant": str(gate["tenant"]),
        "run": str(gate["run"]),
        "gate": str(gate["id"]),
        "gate_revision": int(gate["revision"]),
        "label": label_digest(gate["label"]),
        "shown": shown_digest(gate),
        "option": str(option),
        "input": input_digest(input_value),
        "approver": str(approver),
        "key_id": str(key_id),
        "nonce": str(nonce),
        "at": at if isinstance(at, str) else format_time(at),
    }
    _check_document(document)
    return document


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: JCS of the document."""
    return jcs(dict(document))


def document_digest(document: Mapping[str, Any] | bytes) -> str:
    raw = document if isinstance(document, (bytes, bytearray)) else document_bytes(document)
    return _sha256_hex(bytes(raw))


def _check_document(document: Any) -> dict:
    if not isinstance(document, Mapping):
        raise DecisionSignatureError("malformed_document", "a decision document is a JSON object")
    if set(document) != set(_FIELDS):
        missing, extra = sorted(set(_FIELDS) - set(document)), sorted(set(document) - set(_FIELDS))
        raise DecisionSignatureError("malformed_document", f"fields missing {missing}, unexpected {extra}")
    for name, kind in _FIELDS.items():
        value = document[name]
        if type(value) is not kind:  # noqa: E721 - bool is not an int here
            raise DecisionSignatureError("malformed_document", f"{name} must be {kind.__name__}")
    if document["type"] != DOCUMENT_TYPE:
        raise DecisionSignatureError("malformed_document", f"type is {document['type']!r}, not {DOCUMENT_TYPE}")
    for name in ("label", "shown", "input"):
        if not _HEX64.fullmatch(document[name]):
            raise DecisionSignatureError("malformed_document", f"{name} must be a SHA-256 hex digest")
    if not _KEY_ID.fullmatch(document["key_id"]):
        raise DecisionSignatureError("malformed_document", "key_id is not a key id (gk1:<32 hex>)")
    nonce = document["nonce"]
    if not _NONCE.fullmatch(nonce) or len(nonce) * 6 // 8 < MIN_NONCE_BYTES:
        raise DecisionSignatureError("malformed_document", f"nonce must be >= {MIN_NONCE_BYTES} bytes of base64url")
    if document["gate_revision"] < 1 or not document["approver"] or not document["option"]:
        raise DecisionSignatureError("malformed_document", "gate_revision, approver and option must be set")
    try:
        parse_time(document["at"], "at")
    except ValueError as exc:
        raise DecisionSignatureError("malformed_document", str(exc)) from None
    return dict(document)


def parse_document(raw: bytes | str) -> dict:
    """A document from its signed bytes: JSON, a valid decision document, and exactly canonical
    (re-encoding it with JCS gives the same bytes), else ``malformed_document``."""
    import json

    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        document = json.loads(raw.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecisionSignatureError("malformed_document", f"not JSON: {exc}") from None
    document = _check_document(document)
    if jcs(document) != raw:
        raise DecisionSignatureError("malformed_document", "the document is not in RFC 8785 canonical form")
    return document


def _no_float(text: str):
    raise ValueError(f"a decision document holds no number {text!r} other than an integer")


# -------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class KeyRecord:
    """A public key as kept for verification forever: whose it is, when it was valid."""

    key_id: str
    approver: str
    algorithm: str
    public_key: bytes
    created_at: datetime
    retired_at: datetime | None = None
    revoked_at: datetime | None = None
    reason: str = ""

    def as_json(self) -> dict:
        return {
            "key_id": self.key_id, "approver": self.approver, "algorithm": self.algorithm,
            "public_key": b64(self.public_key), "created_at": format_time(self.created_at),
            "retired_at": format_time(self.retired_at) if self.retired_at else None,
            "revoked_at": format_time(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyRecord:
        """From ``as_json``'s form, or ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError("a key is a JSON object")
        for name in ("key_id", "approver", "algorithm"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"a key needs {name}")
        if data["algorithm"] not in ALGORITHMS:
            raise ValueError(f"key {data['key_id']}: unknown algorithm {data['algorithm']!r}")
        optional = {name: parse_time(data[name], f"key {data['key_id']} {name}") if data.get(name) is not None
                    else None for name in ("retired_at", "revoked_at")}
        reason = data.get("reason") or ""
        if not isinstance(reason, str):
            raise ValueError(f"key {data['key_id']}: reason must be text")
        return cls(key_id=data["key_id"], approver=data["approver"], algorithm=data["algorithm"],
                   public_key=b64decode(data.get("public_key"), f"key {data['key_id']} public_key"),
                   created_at=parse_time(data.get("created_at"), f"key {data['key_id']} created_at"),
                   reason=reason, **optional)


def _verify_raw(key: KeyRecord, signature: bytes, message: bytes) -> None:
    if key.algorithm == ED25519:
        if len(key.public_key) != 32:
            raise DecisionSignatureError("key_mismatch", f"key {key.key_id} is not a 32-byte Ed25519 key")
        if len(signature) != 64:
            raise DecisionSignatureError("malformed_signature", f"an Ed25519 signature is 64 bytes, not {len(signature)}")
        public = Ed25519PublicKey.from_public_bytes(key.public_key)
        try:
            public.verify(signature, message)
        except InvalidSignature:
            raise DecisionSignatureError("bad_signature", f"the signature does not verify with key {key.key_id}") from None
        return
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
    except ValueError:
        raise DecisionSignatureError("key_mismatch", f"key {key.key_id} is not a P-256 point") from None
    if not 8 <= len(signature) <= 72 or signature[0] != 0x30:
        raise DecisionSignatureError("malformed_signature", "an ECDSA signature is a DER SEQUENCE of at most 72 bytes")
    try:
        point.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise DecisionSignatureError("bad_signature", f"the signature does not verify with key {key.key_id}") from None


def verify_decision(document: Mapping[str, Any] | bytes | str, signature: bytes | str, key_id: str,
                    keys: Mapping[str, KeyRecord]) -> dict:
    """Check one signed decision; return the document (a dict) or raise DecisionSignatureError.

    ``document`` is the signed bytes (checked to be canonical) or the document itself (its JCS bytes
    are what is checked); ``signature`` raw bytes or base64; ``keys`` maps key id -> KeyRecord (from
    the database online, from a receipt offline). Refused, in this order: a bad document, a
    malformed (e.g. truncated) signature, a key id the document does not name, an unknown key, a key
    whose id is not its fingerprint, a key of another approver, a revoked key (revocation means
    compromise: nothing it signed is accepted, whatever the date), a document dated before the key
    existed or at/after its rotation, and last a signature that does not verify (forged).
    """
    if isinstance(document, (bytes, str)):
        parsed = parse_document(document)
        message = document.encode("utf-8") if isinstance(document, str) else bytes(document)
    else:
        parsed = _check_document(document)
        message = jcs(parsed)
    if isinstance(signature, str):
        try:
            signature = b64decode(signature, "signature")
        except ValueError as exc:
            raise DecisionSignatureError("malformed_signature", str(exc)) from None
    if not isinstance(signature, (bytes, bytearray)) or not signature:
        raise DecisionSignatureError("malformed_signature", "no signature")
    signature = bytes(signature)
    if key_id != parsed["key_id"]:
        raise DecisionSignatureError("key_mismatch", f"signed with {key_id} but the document names {parsed['key_id']}")
    key = keys.get(key_id)
    if key is None:
        raise DecisionSignatureError("unknown_key", f"no key {key_id}")
    if key.key_id != key_id or key_fingerprint(key.algorithm, key.public_key) != key_id:
        raise DecisionSignatureError("key_mismatch", f"the public key given for {key_id} is not that key")
    if key.approver != parsed["approver"]:
        raise DecisionSignatureError(
            "wrong_approver", f"key {key_id} belongs to {key.approver}, the document's approver is {parsed['approver']}")
    if key.revoked_at is not None:
        raise DecisionSignatureError("key_revoked", f"key {key_id} was revoked at {format_time(key.revoked_at)}"
                                     + (f" ({key.reason})" if key.reason else ""))
    at = parse_time(parsed["at"], "at")
    if at < key.created_at:
        raise DecisionSignatureError("key_not_yet_valid", f"the document is dated {parsed['at']}, before key {key_id} "
                                     f"was created ({format_time(key.created_at)})")
    if key.retired_at is not None and at >= key.retired_at:
        raise DecisionSignatureError("key_rotated_out", f"the document is dated {parsed['at']}, after key {key_id} "
                                     f"was rotated out ({format_time(key.retired_at)})")
    _verify_raw(key, signature, message)
    return parsed
