"""Signatures on gate decisions.

Modules (only ``document`` is imported here, so that this package, like the offline verifier,
loads without Django):

- ``document``: the canonical (RFC 8785) decision document, ``shown_digest``, key ids and
  ``verify_decision``. Standalone: standard library, ``cryptography``, ``rfc8785``.
- ``models``: ``ApproverKey`` (public keys with their validity, kept forever), ``ApproverPrivateKey``
  (the embedded signer's private keys, sealed under the master key) and ``DecisionSignature``
  (one row per accepted signature; nonce and signature hash unique, so nothing is replayed).
- ``keys``: enrolment, rotation and revocation (audited), ``approver_id``, ``gate_facts``,
  ``key_records``.
- ``signers``: ``Signer`` (``key_id``, ``sign(document_bytes) -> (key_id, signature)``,
  ``public_key(key_id)``) with ``LocalSigner`` (embedded default) and ``TransitSigner``
  (OpenBao/Vault Transit, reached with a Vault token issued from the approver's own access token).
- ``decisions``: ``decision_sign`` and ``decision_signature_record``, what the decision write
  path calls.
- ``receipts``: ``receipt_build(gate)``; checked offline by ``approvals/receipt_verify.py``.
"""
from .document import (  # noqa: F401
    DecisionSignatureError,
    KeyRecord,
    decision_document,
    document_bytes,
    input_digest,
    key_fingerprint,
    shown_digest,
    verify_decision,
)
