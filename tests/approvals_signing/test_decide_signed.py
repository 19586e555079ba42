"""Decisions through the API are signed, verified when recorded and again at release, and leave a
receipt an outsider verifies offline."""
from __future__ import annotations

import base64
import json

import pytest

from approvals.models import Decision, Gate
from approvals.receipt_verify import verify_receipt
from approvals.signing.keys import approver_key_revoke
from approvals.signing.models import ApproverKey, DecisionSignature
from approvals.signing.signers import LocalSigner
from audit.models import AuditEntry
from gateway.models import TaskInstance

# The OpenBao and Keycloak stand-in fixtures of the Transit tests, for the end-to-end Transit case.
from tests.approvals_signing.test_transit_signer import approver, keycloak, openbao, vault  # noqa: F401


def decide(api, gate, user, **body):
    return api(user).post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm", **body}, format="json")


def test_a_decision_is_signed_recorded_and_audited(master_key_file, make_gate, approvers, api):
    gate = make_gate(form={"type": "object"})
    response = decide(api, gate, approvers[0], input={"verdict": "malicious"})
    assert response.status_code == 201, response.content
    decision = Decision.objects.get(id=response.json()["id"])
    signature = DecisionSignature.objects.get(decision=decision)
    assert signature.key.user_id == approvers[0].pk
    document = json.loads(bytes(signature.document))
    assert (document["gate"], document["option"], document["gate_revision"]) == (str(gate.id), "confirm", 1)
    assert AuditEntry.objects.filter(event="approver_key.enrolled", actor=approvers[0]).count() == 1
    entry = AuditEntry.objects.get(event="gate.decided", object_id=str(gate.id))
    assert entry.body["data"]["document_sha256"] == signature.document_sha256
    assert entry.body["data"]["key_id"] == signature.key.key_id
    assert base64.b64decode(entry.body["data"]["signature"]) == bytes(signature.signature)
    assert b"-----BEGIN" not in master_key_file.read_bytes()  # the master key file is raw key material only


def test_the_receipt_of_a_decided_gate_verifies_offline(master_key_file, make_gate, approvers, api):
    gate = make_gate(required_approvals=2)
    assert api(approvers[0]).get(f"/api/v1/gates/{gate.id}/receipt").status_code == 409  # not decided yet
    assert decide(api, gate, approvers[0]).status_code == 201
    assert decide(api, gate, approvers[1]).status_code == 201
    response = api(approvers[2]).get(f"/api/v1/gates/{gate.id}/receipt")
    assert response.status_code == 200
    report = verify_receipt(response.content)
    assert report.ok, report.result_line()
    tampered = response.json()
    tampered["decisions"] = tampered["decisions"][:1]
    assert not verify_receipt(tampered).ok


def test_a_client_signed_decision_is_accepted_and_cannot_be_replayed(master_key_file, make_gate, approvers, api):
    gate = make_gate(required_approvals=2)
    first = approvers[0]
    assert decide(api, make_gate(), first).status_code == 201  # enrols first's key
    shown = api(first).get(f"/api/v1/gates/{gate.id}/document", {"option": "confirm"}).json()
    _, raw_signature = LocalSigner.for_user(first).sign(shown["document"].encode())
    wire = {"document": shown["document"], "signature": base64.b64encode(raw_signature).decode()}

    # Another approver cannot pass it off as theirs.
    stolen = decide(api, gate, approvers[1], **wire)
    assert stolen.status_code == 400 and stolen.json()["code"] == "signature_refused"
    assert not Decision.objects.filter(gate=gate).exists()
    assert AuditEntry.objects.filter(event="gate.decision_refused", actor=approvers[1]).last() \
        .body["data"]["kind"] == "approver_mismatch"
    # A forged (flipped) signature is refused.
    forged = bytearray(raw_signature)
    forged[0] ^= 1
    bad = decide(api, gate, first, document=shown["document"], signature=base64.b64encode(bytes(forged)).decode())
    assert bad.status_code == 400 and bad.json()["code"] == "signature_refused"
    # The real one counts once; sending it again is refused and adds nothing.
    assert decide(api, gate, first, **wire).status_code == 201
    again = decide(api, gate, first, **wire)
    assert again.status_code == 409
    assert DecisionSignature.objects.filter(gate=gate).count() == 1
    # On another gate the same document is about the wrong gate.
    other = make_gate()
    elsewhere = decide(api, other, first, **wire)
    assert elsewhere.status_code == 400
    assert not Decision.objects.filter(gate=other, approver=first).exists()


def test_a_document_for_another_option_is_refused(master_key_file, make_gate, approvers, api):
    gate = make_gate()
    assert decide(api, make_gate(), approvers[0]).status_code == 201
    shown = api(approvers[0]).get(f"/api/v1/gates/{gate.id}/document", {"option": "reject"}).json()
    _, raw = LocalSigner.for_user(approvers[0]).sign(shown["document"].encode())
    response = decide(api, gate, approvers[0], document=shown["document"], signature=base64.b64encode(raw).decode())
    assert response.status_code == 400 and response.json()["code"] == "signature_refused"
    gate.refresh_from_db()
    assert gate.state == "OPEN" and not Decision.objects.filter(gate=gate).exists()


def test_a_key_revoked_before_release_voids_its_approval(master_key_file, make_gate, approvers, api, make_member,
                                                         tenant):
    gate = make_gate(required_approvals=2)
    assert decide(api, gate, approvers[0]).status_code == 201
    approver_key_revoke(ApproverKey.objects.get(user=approvers[0]), actor=make_member(tenant, "tenant_admin"),
                        reason="laptop lost")
    assert decide(api, gate, approvers[1]).status_code == 201
    gate.refresh_from_db()
    first = Decision.objects.get(gate=gate, approver=approvers[0])
    assert first.voided_at is not None and first.void_reason.startswith("signature no longer verifies")
    assert gate.state == "OPEN"
    assert TaskInstance.objects.get(id=gate.task_id).state == "AWAITING_DECISION"


def test_through_vault_the_gateway_signs_with_the_callers_own_transit_key(vault, approver, make_gate, api):  # noqa: F811
    from approvals.signing.keys import approver_key_enrol
    from rest_framework.test import APIClient

    from gateway.clearances import ClearanceInput, clearance_set

    user, token = approver()
    # A member first seen through the identity provider reads nothing labelled until cleared.
    clearance_set(tenant=user.membership.tenant, user=user,
                  data=ClearanceInput(policy=None, max_level="SECRET", compartments=[], releasability=[]))
    key = approver_key_enrol(user, backend="transit", vault_client=vault.client())
    gate = make_gate()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, format="json")
    assert response.status_code == 201, response.content
    assert DecisionSignature.objects.get(gate=gate).key == key
    assert Gate.objects.get(id=gate.id).state == "APPROVED"
