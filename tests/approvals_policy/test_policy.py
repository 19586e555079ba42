"""The approval policy: N distinct approvers, never the run's submitter, each cleared and eligible
when they decide and again when the gate releases; an approval that stops standing is voided."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from approvals.models import Decision, Gate
from approvals.services import gate_decide
from audit.models import AuditEntry
from gateway.clearances import ClearanceInput, clearance_revoke, clearance_set
from gateway.errors import Conflict, Forbidden
from gateway.models import Clearance, Membership, TaskInstance

from tests.engine.driver import submit


def two_of_m(tenant, author, **gate):
    run = submit(tenant, author, {"id": "g", "type": "gate", "required_approvals": 2, **gate},
                 {"id": "after", "needs": ["g"]})
    return run, Gate.objects.get(run=run)


def decide(gate, user, option="confirm"):
    gate.refresh_from_db()
    return gate_decide(gate=gate, actor=user, option=option)


@pytest.fixture
def analysts(make_member, tenant):
    return [make_member(tenant, "analyst") for _ in range(3)]


def test_the_submitter_may_not_approve_their_own_run(recording, tenant, make_member):
    author = make_member(tenant, "author", "analyst")
    run, gate = two_of_m(tenant, author)
    with pytest.raises(Forbidden) as exc:
        decide(gate, author)
    assert exc.value.code == "gate_self_approval"
    assert not Decision.objects.exists()
    refusal = AuditEntry.objects.get(event="gate.decision_refused", actor=author)
    assert refusal.body["data"]["code"] == "gate_self_approval"


def test_nor_through_a_second_account_of_the_same_person(recording, tenant, make_member):
    author = make_member(tenant, "author")
    author.email = "Pat@Example.org"
    author.save()
    second = make_member(tenant, "analyst")
    second.email = "pat@example.org"
    second.save()
    _, gate = two_of_m(tenant, author)
    with pytest.raises(Forbidden) as exc:
        decide(gate, second)
    assert exc.value.code == "gate_self_approval"
    assert not Decision.objects.exists()


def test_n_minus_one_approvals_do_not_release_the_nth_does(recording, tenant, author, analysts):
    run, gate = two_of_m(tenant, author)
    decide(gate, analysts[0])
    gate.refresh_from_db()
    assert gate.state == "OPEN"
    assert TaskInstance.objects.get(run=run, key="after").state == "PENDING"
    with pytest.raises(Conflict):
        decide(gate, analysts[0])  # one person counts once
    decide(gate, analysts[1])
    gate.refresh_from_db()
    assert gate.state == "APPROVED"
    assert TaskInstance.objects.get(run=run, key="after").state == "QUEUED"
    with pytest.raises(Conflict) as exc:
        decide(gate, analysts[2])
    assert exc.value.code == "gate_already_decided"


def test_a_clearance_revoked_mid_gate_voids_the_approval(recording, tenant, author, analysts, make_member):
    admin = make_member(tenant, "tenant_admin")
    run, gate = two_of_m(tenant, author)
    first = decide(gate, analysts[0])
    clearance_revoke(tenant=tenant, clearance=Clearance.objects.get(user=analysts[0]), actor=admin)
    first.refresh_from_db()
    assert first.voided_at is not None and first.void_reason == "clearance no longer covers the gate"
    assert AuditEntry.objects.filter(event="decision.voided", actor=admin).count() == 1
    decide(gate, analysts[1])
    gate.refresh_from_db()
    assert gate.state == "OPEN"  # one standing approval of two
    assert TaskInstance.objects.get(run=run, key="after").state == "PENDING"
    decide(gate, analysts[2])
    gate.refresh_from_db()
    assert gate.state == "APPROVED"


def test_a_lowered_clearance_voids_an_approval_on_a_gate_above_it(recording, tenant, make_member):
    author = make_member(tenant, "author")
    admin = make_member(tenant, "tenant_admin")
    analyst = make_member(tenant, "analyst")
    run = submit(tenant, author, {"id": "g", "type": "gate", "required_approvals": 2, "classification": "SECRET"})
    gate = Gate.objects.get(run=run)
    decision = decide(gate, analyst)
    clearance_set(tenant=tenant, user=analyst, actor=admin,
                  data=ClearanceInput(policy=None, max_level="CONFIDENTIAL", compartments=[], releasability=[]))
    decision.refresh_from_db()
    assert decision.voided_at is not None
    # Raising it again elsewhere does not resurrect a voided approval.
    clearance_set(tenant=tenant, user=analyst, actor=admin,
                  data=ClearanceInput(policy=None, max_level="TOP SECRET", compartments=[], releasability=[]))
    decision.refresh_from_db()
    assert decision.voided_at is not None


def test_an_approver_whose_role_was_removed_does_not_count_at_release(recording, tenant, author, analysts):
    run, gate = two_of_m(tenant, author)
    first = decide(gate, analysts[0])
    Membership.objects.filter(user=analysts[0]).update(roles=["author"])
    decide(gate, analysts[1])
    first.refresh_from_db()
    gate.refresh_from_db()
    assert first.voided_at is not None and first.void_reason == "approver no longer eligible"
    assert gate.state == "OPEN"
    assert TaskInstance.objects.get(run=run, key="after").state == "PENDING"


@pytest.mark.django_db(transaction=True)
def test_two_approvers_racing_for_the_last_slot_release_exactly_once(recording, tenant, author, analysts):
    run, gate = two_of_m(tenant, author)
    decide(gate, analysts[0])
    barrier = threading.Barrier(2)
    results, errors = [], []

    def approve(user):
        try:
            barrier.wait(timeout=10)
            results.append(decide(Gate.objects.get(id=gate.id), user))
        except Conflict as exc:
            errors.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(u,)) for u in analysts[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    gate.refresh_from_db()
    assert gate.state == "APPROVED"
    assert len(results) == 1 and errors == ["gate_already_decided"]
    assert AuditEntry.objects.filter(event="gate.released", object_id=str(gate.id)).count() == 1
    transitions = TaskInstance.objects.get(id=gate.task_id).transitions.filter(to_state="SUCCEEDED").count()
    assert transitions == 1


def test_raising_a_gates_label_revises_it_and_voids_earlier_decisions(recording, tenant, author, analysts, make_member,
                                                                     api):
    from gateway.models import ClassificationLabel

    admin = make_member(tenant, "tenant_admin")
    run = submit(tenant, author, {"id": "make", "run": "true", "outputs": [{"name": "o", "path": "o"}]},
                 {"id": "g", "type": "gate", "needs": ["make"], "required_approvals": 2},
                 {"id": "use", "needs": ["g"], "inputs": [{"from": "g/input", "path": "in.json"}],
                  "outputs": [{"name": "o2", "path": "o2"}]},
                 {"id": "next", "needs": ["use"], "inputs": [{"from": "use/o2", "path": "x"}],
                  "outputs": [{"name": "o3", "path": "o3"}]},
                 {"id": "aside", "needs": ["g"]})
    gate_task = TaskInstance.objects.get(run=run, key="g")
    from tests.engine.driver import Driver

    Driver(run).complete("make")
    gate = Gate.objects.get(run=run)
    first = decide(gate, analysts[0])
    response = api(admin).post(f"/api/v1/gates/{gate.id}/relabel", {"classification": "secret"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["revision"] == 2 and response.json()["classification"] == "SECRET"
    first.refresh_from_db()
    assert first.voided_at is not None and first.void_reason == "gate revised"
    labels = dict(TaskInstance.objects.filter(run=run).values_list("key", "classification"))
    assert labels == {"make": "UNCLASSIFIED", "g": "SECRET", "use": "SECRET", "next": "SECRET", "aside": "UNCLASSIFIED"}
    assert ClassificationLabel.objects.filter(tenant=tenant, banner="SECRET").exists()
    assert gate_task.id == Gate.objects.get(id=gate.id).task_id
    # Lowering is refused and changes nothing.
    lowered = api(admin).post(f"/api/v1/gates/{gate.id}/relabel", {"classification": "RESTRICTED"}, format="json")
    assert lowered.status_code == 400 and lowered.json()["code"] == "label_downgrade"
    assert Gate.objects.values_list("classification", "revision").get(id=gate.id) == ("SECRET", 2)
    # The two approvals needed now are on the new revision.
    decide(gate, analysts[1])
    gate.refresh_from_db()
    assert gate.state == "OPEN"
    decide(gate, analysts[2])
    gate.refresh_from_db()
    assert gate.state == "APPROVED"


def test_a_configured_reject_count_rejects_only_when_reached(recording, tenant, author, analysts, make_member):
    from approvals.receipt_verify import verify_receipt
    from approvals.signing.receipts import receipt_build

    more = analysts + [make_member(tenant, "analyst")]
    run = submit(tenant, author, {"id": "g", "type": "gate", "required_approvals": 3, "required_rejections": 2},
                 {"id": "after", "needs": ["g"]})
    gate = Gate.objects.get(run=run)
    assert gate.required_rejections == 2
    decide(gate, more[0], "reject")
    gate.refresh_from_db()
    assert gate.state == "OPEN"  # one rejection of two
    assert TaskInstance.objects.get(run=run, key="after").state == "PENDING"
    decide(gate, more[1], "confirm")
    decide(gate, more[2], "reject")
    gate.refresh_from_db()
    assert gate.state == "REJECTED" and gate.outcome_reason == "rejected (2 of 2)"
    assert TaskInstance.objects.get(run=run, key="after").state == "SKIPPED"
    with pytest.raises(Conflict):
        decide(gate, more[3], "confirm")
    receipt = receipt_build(gate)
    assert receipt["policy"]["reject_rule"] == "required_rejections"
    assert verify_receipt(receipt).ok, verify_receipt(receipt).result_line()
    receipt["policy"]["required_rejections"] = 3  # then two rejections could not have rejected it
    assert verify_receipt(receipt).failure.kind == "outcome_mismatch"


def test_a_gate_may_name_its_approvers_and_the_release_records_what_they_signed(recording, tenant, author,
                                                                               make_member):
    named = make_member(tenant, "author", username="pat")
    other = make_member(tenant, "analyst")
    run = submit(tenant, author, {"id": "g", "type": "gate", "approvers": ["user:pat"]})
    gate = Gate.objects.get(run=run)
    with pytest.raises(Forbidden):
        decide(gate, other)
    decision = decide(gate, named)
    released = AuditEntry.objects.get(event="gate.released", object_id=str(gate.id))
    signed = released.body["data"]["approvals"]
    assert [a["approver"] for a in signed] == ["pat"] and signed[0]["decision"] == str(decision.id)
    assert len(signed[0]["document_sha256"]) == 64
