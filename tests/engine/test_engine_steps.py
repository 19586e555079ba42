"""The engine's rules, one scenario at a time, through its real entry points."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import Gate
from approvals.services import gate_decide, gate_time_out
from gateway.errors import Conflict, ErrorCode, Forbidden, GatehouseError
from gateway.models import TaskInstance, TaskTransition
from gateway.reconcile import reconcile
from gateway.services import run_cancel
from gateway.worker import task_claim, task_finish, task_requeue

from .driver import FAIL, OK, Driver, submit


def age(task_id: int, **delta) -> None:
    """Let time pass for one task: its lease, queue time and retry time move into the past."""
    past = timezone.now() - timedelta(**delta)
    TaskInstance.objects.filter(id=task_id).update(
        state_changed_at=past,
        lease_expires_at=past if TaskInstance.objects.get(id=task_id).lease_expires_at else None,
        not_before=past if TaskInstance.objects.get(id=task_id).not_before else None,
    )

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chain_runs_in_order_and_the_run_succeeds(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]}, {"id": "c", "needs": ["b"]}))
    assert d.states() == {"a": "QUEUED", "b": "PENDING", "c": "PENDING"}
    assert d.new_messages() == [d.message_for("a")]
    assert d.complete("a") == "succeeded"
    assert d.states() == {"a": "SUCCEEDED", "b": "QUEUED", "c": "PENDING"}
    assert d.new_messages() == [d.message_for("b")]
    d.complete("b")
    d.complete("c")
    assert d.refresh().state == "SUCCEEDED"
    assert d.run.finished_at is not None


def test_a_duplicate_message_does_not_run_the_attempt_twice(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}))
    task_id, attempt = d.message_for("a")
    assert task_claim(task_id, attempt) is not None
    assert task_claim(task_id, attempt) is None  # redelivered: already running
    assert task_finish(task_id, attempt, OK) == "succeeded"
    assert task_claim(task_id, attempt) is None  # redelivered after the end
    assert TaskTransition.objects.filter(task_id=task_id, to_state="RUNNING").count() == 1


def test_a_task_is_not_ready_before_all_it_needs_succeeded(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "b"}, {"id": "join", "needs": ["a", "b"]}))
    d.complete("a")
    assert d.task("join").state == "PENDING"
    assert task_claim(*d.message_for("join")) is None  # attempt 0 was never dispatched
    d.complete("b")
    assert d.task("join").state == "QUEUED"


def test_a_pending_gate_blocks_only_its_dependants(recording, tenant, author, analyst):
    d = Driver(
        submit(
            tenant,
            author,
            {"id": "ingest"},
            {"id": "validate", "type": "gate", "needs": ["ingest"]},
            {"id": "retrain", "needs": ["validate"]},
            {"id": "stats", "needs": ["ingest"]},
        )
    )
    d.complete("ingest")
    messages = d.new_messages()
    # The gate opened without a dispatch message: it holds no worker and no slot.
    assert d.task("validate").state == "AWAITING_DECISION"
    assert d.message_for("validate") not in messages
    assert d.message_for("stats") in messages
    d.complete("stats")
    assert d.states() == {"ingest": "SUCCEEDED", "validate": "AWAITING_DECISION", "retrain": "PENDING", "stats": "SUCCEEDED"}
    assert d.refresh().state == "RUNNING"
    gate = Gate.objects.get(task=d.task("validate"))
    gate_decide(gate=gate, actor=analyst, option="confirm")
    # Released at once: the dependant's message was sent on the decision's commit.
    assert d.task("retrain").state == "QUEUED"
    assert d.new_messages()[-1:] == [d.message_for("retrain")]
    d.complete("retrain")
    assert d.refresh().state == "SUCCEEDED"


def test_a_rejection_skips_the_dependants_with_the_reason(recording, tenant, author, analyst):
    d = Driver(
        submit(
            tenant,
            author,
            {"id": "g", "type": "gate"},
            {"id": "after", "needs": ["g"]},
            {"id": "later", "needs": ["after"]},
            {"id": "free"},
        )
    )
    gate_decide(gate=Gate.objects.get(task=d.task("g")), actor=analyst, option="reject")
    assert d.task("after").state == "SKIPPED"
    assert d.task("later").state == "SKIPPED"
    assert "g rejected" in d.task("after").reason
    assert d.task("free").state == "QUEUED"
    assert d.refresh().state == "RUNNING"
    d.complete("free")
    assert d.refresh().state == "REJECTED"


def test_a_failure_is_retried_with_backoff_then_succeeds(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a", "retries": {"count": 2, "backoff": {"initial": "2s"}}}))
    assert d.complete("a", FAIL) == "retry"
    task = d.task("a")
    assert task.state == "RETRY_WAIT" and task.failures == 1
    assert recording.retries == [(task.id, 1, 2.0)]
    assert task_requeue(task.id, 1) is True
    assert task_requeue(task.id, 1) is False  # the countdown message and the reconciler cannot both requeue
    assert d.task("a").attempt == 2
    d.complete("a")
    assert d.refresh().state == "SUCCEEDED"


def test_a_failure_without_retries_skips_dependants_but_not_other_branches(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]}, {"id": "c"}))
    assert d.complete("a", FAIL) == "failed"
    assert d.task("a").exit_code == 3
    assert d.task("b").state == "SKIPPED"
    assert d.refresh().state == "RUNNING"
    d.complete("c")
    assert d.refresh().state == "FAILED"
    assert "a" in d.run.reason


def test_cancel_stops_queued_tasks_and_closes_gates(recording, tenant, author, analyst):
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "g", "type": "gate"}, {"id": "b", "needs": ["a"]}))
    stale = d.message_for("a")
    run = run_cancel(run=d.run, actor=author)
    assert run.state == "CANCELLED"
    assert set(d.states().values()) == {"CANCELLED"}
    assert task_claim(*stale) is None  # the queued message is now a no-op
    gate = Gate.objects.get(task=d.task("g"))
    assert gate.state == "CANCELLED"
    with pytest.raises(Conflict) as exc:
        gate_decide(gate=gate, actor=analyst, option="confirm")
    assert exc.value.code == ErrorCode.GATE_ALREADY_DECIDED
    with pytest.raises(Conflict) as exc:
        run_cancel(run=d.run, actor=author)
    assert exc.value.code == ErrorCode.RUN_FINISHED


def test_a_running_task_cancelled_drops_its_late_result(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]}))
    task_id, attempt = d.message_for("a")
    task_claim(task_id, attempt)
    run_cancel(run=d.run, actor=author)
    assert task_finish(task_id, attempt, OK) == "superseded"
    assert d.task("a").state == "CANCELLED"
    assert d.task("b").state == "CANCELLED"


def test_the_reconciler_recovers_a_lost_worker_with_a_new_attempt(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}))
    task_id, attempt = d.message_for("a")
    task_claim(task_id, attempt)
    d.new_messages()
    age(task_id, seconds=31)
    assert reconcile()["lost_workers"] == 1
    assert reconcile()["lost_workers"] == 0  # a second reconciler finds nothing to do
    task = d.task("a")
    assert (task.state, task.attempt, task.recoveries) == ("QUEUED", 2, 1)
    assert d.new_messages() == [(task_id, 2)]
    assert task_finish(task_id, attempt, OK) == "superseded"  # the lost attempt's result is dropped
    d.complete("a")
    assert d.refresh().state == "SUCCEEDED"


def test_a_task_whose_worker_keeps_dying_fails(recording, settings, tenant, author):
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "MAX_RECOVERIES": 1}
    d = Driver(submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]}))
    for _ in range(2):
        task_claim(*d.message_for("a"))
        age(d.task("a").id, seconds=31)
        reconcile()
    assert d.task("a").state == "FAILED"
    assert "lost" in d.task("a").reason
    assert d.task("b").state == "SKIPPED"


def test_the_reconciler_redispatches_a_lost_message_once(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a"}))
    lost = d.message_for("a")
    d.new_messages()
    age(lost[0], seconds=301)
    assert reconcile()["lost_messages"] == 1
    assert reconcile()["lost_messages"] == 0
    assert d.new_messages() == [(lost[0], 2)]
    assert task_claim(*lost) is None  # if the lost message turns up after all, it does nothing
    d.complete("a")
    assert d.refresh().state == "SUCCEEDED"


def test_the_reconciler_requeues_an_overdue_retry(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "a", "retries": 1}))
    d.complete("a", FAIL)
    age(d.task("a").id, seconds=60)
    assert reconcile()["overdue_retries"] == 1
    assert d.task("a").state == "QUEUED" and d.task("a").attempt == 2


@pytest.mark.parametrize("on_timeout,gate_state,task_state", [("reject", "REJECTED", "REJECTED"), ("expire", "EXPIRED", "EXPIRED")])
def test_a_gate_timeout_never_approves(recording, tenant, author, on_timeout, gate_state, task_state):
    d = Driver(submit(tenant, author, {"id": "g", "type": "gate", "timeout": "1h", "on_timeout": on_timeout}, {"id": "after", "needs": ["g"]}))
    gate = Gate.objects.get(task=d.task("g"))
    assert gate_time_out(gate.id, now=timezone.now()) is None  # not yet due
    assert gate_time_out(gate.id, now=timezone.now() + timedelta(hours=2)) == on_timeout + ("ed" if on_timeout == "reject" else "d")
    gate.refresh_from_db()
    assert gate.state == gate_state
    assert d.task("g").state == task_state
    assert d.task("after").state == "SKIPPED"


def test_an_escalated_gate_moves_to_the_escalation_group(recording, tenant, author, analyst, make_member):
    senior = make_member(tenant, "analyst", groups=["senior"])
    d = Driver(submit(tenant, author, {"id": "g", "type": "gate", "timeout": "1h", "on_timeout": "escalate", "escalate_to": ["senior"]}, {"id": "after", "needs": ["g"]}))
    gate = Gate.objects.get(task=d.task("g"))
    assert gate_time_out(gate.id, now=timezone.now() + timedelta(hours=2)) == "escalated"
    gate.refresh_from_db()
    assert gate.approvers == ["senior"] and gate.state == "OPEN"
    with pytest.raises(Forbidden):
        gate_decide(gate=gate, actor=analyst, option="confirm")
    gate_decide(gate=gate, actor=senior, option="confirm")
    assert d.task("after").state == "QUEUED"


def test_an_escalated_gate_that_times_out_again_is_rejected(recording, tenant, author):
    d = Driver(submit(tenant, author, {"id": "g", "type": "gate", "timeout": "1h", "on_timeout": "escalate", "escalate_to": ["senior"]}))
    gate = Gate.objects.get(task=d.task("g"))
    gate_time_out(gate.id, now=timezone.now() + timedelta(hours=2))
    assert gate_time_out(gate.id, now=timezone.now() + timedelta(hours=4)) == "rejected"


def test_n_of_m_needs_distinct_approvers(recording, tenant, author, make_member):
    a1, a2 = make_member(tenant, "analyst"), make_member(tenant, "analyst")
    d = Driver(submit(tenant, author, {"id": "g", "type": "gate", "required_approvals": 2}, {"id": "after", "needs": ["g"]}))
    gate = Gate.objects.get(task=d.task("g"))
    gate_decide(gate=gate, actor=a1, option="confirm")
    assert d.task("after").state == "PENDING"  # N-1 approvals do not release
    with pytest.raises(Conflict) as exc:
        gate_decide(gate=gate, actor=a1, option="confirm")
    assert exc.value.code == ErrorCode.GATE_ALREADY_VOTED
    gate_decide(gate=gate, actor=a2, option="confirm")
    assert d.task("after").state == "QUEUED"
    third = make_member(tenant, "analyst")
    with pytest.raises(Conflict) as exc:
        gate_decide(gate=gate, actor=third, option="confirm")
    assert exc.value.code == ErrorCode.GATE_ALREADY_DECIDED


def test_decisions_are_checked_before_anything_is_written(recording, tenant, author, analyst, make_member, other_tenant):
    form = {"type": "object", "required": ["labels"], "properties": {"labels": {"type": "array"}}}
    d = Driver(submit(tenant, author, {"id": "g", "type": "gate", "form": form}))
    gate = Gate.objects.get(task=d.task("g"))
    cases = [
        (analyst, "maybe", None, ErrorCode.GATE_UNKNOWN_OPTION),
        (analyst, "confirm", {"labels": "nope"}, ErrorCode.GATE_INPUT_INVALID),
        (analyst, "confirm", None, ErrorCode.GATE_INPUT_INVALID),
        (author, "confirm", {"labels": []}, ErrorCode.GATE_NOT_APPROVER),
        # Another tenant's gate is not found, even when the service is called directly.
        (make_member(other_tenant, "analyst"), "confirm", {"labels": []}, ErrorCode.NOT_FOUND),
        # So is a gate above the caller's clearance.
        (make_member(tenant, "analyst", clearance=None), "confirm", {"labels": []}, ErrorCode.NOT_FOUND),
    ]
    for actor, option, value, code in cases:
        with pytest.raises(GatehouseError) as exc:
            gate_decide(gate=gate, actor=actor, option=option, input_value=value)
        assert exc.value.code == code
    assert gate.decisions.count() == 0
    assert d.task("g").state == "AWAITING_DECISION"
