"""The worker's hot path on PostgreSQL (gateway/worker_sql.py): the claim in one statement, the end
of a successful attempt in one statement. It must do exactly what the ORM path does (the reference,
and the path on every other database): the same moves, the same history, the same audit entries in
the same order, exactly once per attempt, under row-level security as the application role."""
from __future__ import annotations

import os

import pytest
from django.conf import settings as django_settings
from django.db import connection

from audit.models import AuditEntry, AuditPending
from executors.base import JobHandle, JobState, JobStatus
from gateway import dbscope, worker_sql
from gateway.dispatch import RecordingDispatcher
from gateway.models import Artefact, TaskInstance, TaskTransition
from gateway.worker import Outcome, task_claim, task_claim_held, task_finish

from .driver import OK, Driver, in_threads, submit

pytestmark = pytest.mark.django_db(transaction=True)

SUBMITTED = Outcome(JobStatus(JobState.SUCCEEDED, 0, "exit code 0"),
                    outputs=[("stdout", "ab" * 32, 3, "text/plain")],
                    handle=JobHandle("local", "4242:99", {"pid": 4242}), submitted_at="2026-01-01T00:00:00+00:00")
SHAPE = (
    {"id": "root"},
    {"id": "a", "needs": ["root"]},
    {"id": "b", "needs": ["root"]},
    {"id": "g", "type": "gate", "needs": ["a"]},
    {"id": "join", "needs": ["a", "b"]},
)


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the single-statement path is PostgreSQL's; elsewhere the ORM path runs")


def _orm(monkeypatch) -> None:
    monkeypatch.setattr(worker_sql, "enabled", lambda: False)


def _play(run) -> Driver:
    """root, then a and b (a with an executor handle and an artefact), then join."""
    driver = Driver(run)
    for key, outcome in (("root", OK), ("a", SUBMITTED), ("b", OK), ("join", OK)):
        task_id, attempt = driver.message_for(key)
        assert task_claim(task_id, attempt) is not None, key
        assert task_finish(task_id, attempt, outcome) == "succeeded", key
    return driver


def _record(run) -> dict:
    """What a run left, with ids and times taken out so two runs compare."""
    keys = dict(TaskInstance.objects.filter(run=run).values_list("id", "key"))

    def name(task_id) -> str:
        return keys.get(int(task_id), str(task_id))

    def scrub(body: dict) -> dict:
        data = dict(body.get("data") or {})
        assert data.pop("run", str(run.id)) == str(run.id)
        if "transition" in data:
            kind, task_id, *attempt = data["transition"].split(":")
            data["transition"] = ":".join([kind, name(task_id), *attempt])
        obj = body.get("object")
        return {**body, "data": data, "object": obj and {**obj, "id": name(obj["id"])}}

    entries = AuditEntry.objects.filter(object_type="task", object_id__in=[str(i) for i in keys]).order_by("id")
    tasks = {
        t.key: (t.state, t.attempt, t.needs_remaining, t.exit_code, t.reason, t.worker != "", t.started_at is not None,
                t.finished_at is not None, t.lease_expires_at is not None, t.held)
        for t in TaskInstance.objects.filter(run=run)
    }
    return {
        "tasks": tasks,
        "history": [(name(h.task_id), h.transition_id.split(":")[0], h.from_state, h.to_state, h.attempt, h.reason)
                    for h in TaskTransition.objects.filter(task__run=run).order_by("id")],
        "audit": [(e.event, name(e.object_id), e.label, e.outcome, e.tenant_id, scrub(e.body)) for e in entries],
        "queued": AuditPending.objects.filter(entry_id__in=[e.id for e in entries]).count(),
        "artefacts": sorted((name(a.task_id), a.attempt, a.name, a.digest, a.size, a.media_type, a.classification)
                            for a in Artefact.objects.filter(run=run)),
        "run": (run.__class__.objects.get(id=run.id).state,),
    }


def test_claim_and_finish_leave_exactly_what_the_orm_path_leaves(recording, tenant, author, monkeypatch):
    fast = _record(_play(submit(tenant, author, *SHAPE, name="fast")).run)
    with monkeypatch.context() as m:
        _orm(m)
        reference = _record(_play(submit(tenant, author, *SHAPE, name="orm")).run)
    assert fast == reference
    # and what that is: every move in the history and audited once, the gate opened, the run open
    assert fast["tasks"]["g"][0] == "AWAITING_DECISION" and fast["run"] == ("RUNNING",)
    assert [h[:4] for h in fast["history"] if h[0] == "join"] == [
        ("join", "ready", "PENDING", "QUEUED"), ("join", "claim", "QUEUED", "RUNNING"),
        ("join", "finish", "RUNNING", "SUCCEEDED")]
    assert len(fast["audit"]) == len(fast["history"]) + 1  # + a's executor.submitted
    assert fast["queued"] == len(fast["audit"])  # every entry queued for the sequencer
    assert [e[0] for e in fast["audit"]].count("executor.submitted") == 1


def _play_held(run) -> Driver:
    """As _play, with a dispatch window of 1: root's end sends a and holds b, which is claimed held."""
    driver = Driver(run)
    for key, outcome in (("root", OK), ("b", OK), ("a", SUBMITTED), ("join", OK)):
        if key == "b":
            assert RecordingDispatcher.sent[-1] == driver.message_for("a")  # a was sent, b was not
            claimed = task_claim_held(run.id)
            assert claimed is not None and claimed.key == "b"
            task_id, attempt = claimed.id, claimed.attempt
        else:
            task_id, attempt = driver.message_for(key)
            assert task_claim(task_id, attempt) is not None, key
        assert task_finish(task_id, attempt, outcome) == "succeeded", key
    return driver


def test_with_a_window_the_statements_hold_and_claim_what_the_orm_path_does(recording, tenant, author, monkeypatch,
                                                                              settings):
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "DISPATCH_WINDOW": 1}
    fast = _record(_play_held(submit(tenant, author, *SHAPE, name="fast")).run)
    with monkeypatch.context() as m:
        _orm(m)
        reference = _record(_play_held(submit(tenant, author, *SHAPE, name="orm")).run)
    assert fast == reference
    assert [h[:4] for h in fast["history"] if h[0] == "b"] == [
        ("b", "ready", "PENDING", "QUEUED"), ("b", "claim", "QUEUED", "RUNNING"), ("b", "finish", "RUNNING", "SUCCEEDED")]
    assert fast["tasks"]["b"][-1] is False  # no longer held once claimed


def test_the_last_task_closes_the_run_as_the_orm_path_does(recording, tenant, author, monkeypatch):
    shape = ({"id": "one"}, {"id": "two", "needs": ["one"]})
    driver = Driver(submit(tenant, author, *shape, name="fast"))
    driver.complete("one")
    driver.complete("two")
    with monkeypatch.context() as m:
        _orm(m)
        reference = Driver(submit(tenant, author, *shape, name="orm"))
        reference.complete("one")
        reference.complete("two")
    assert driver.refresh().state == reference.refresh().state == "SUCCEEDED"
    assert AuditEntry.objects.filter(event="run.finished", object_id=str(driver.run.id)).count() == 1
    assert _record(driver.run) == _record(reference.run)


def test_a_claim_needs_the_exact_queued_attempt_and_happens_once(recording, tenant, author):
    driver = Driver(submit(tenant, author, {"id": "only"}))
    task_id, attempt = driver.message_for("only")
    entries = AuditEntry.objects.count()
    assert task_claim(task_id, attempt + 1) is None  # a later attempt's message
    assert task_claim(task_id, attempt - 1) is None  # an earlier one
    assert AuditEntry.objects.count() == entries and not TaskTransition.objects.filter(to_state="RUNNING").exists()
    claimed = task_claim(task_id, attempt)
    assert claimed is not None and claimed.state == "RUNNING" and claimed.spec["id"] == "only"
    assert task_claim(task_id, attempt) is None  # the same message again
    assert TaskTransition.objects.filter(task_id=task_id, to_state="RUNNING").count() == 1
    assert AuditEntry.objects.filter(event="task.transition", body__data__to="RUNNING").count() == 1
    assert task_finish(task_id, attempt + 1, OK) == "superseded"
    assert driver.task("only").state == "RUNNING"


def test_a_claim_whose_transition_id_was_recorded_moves_nothing(recording, tenant, author):
    driver = Driver(submit(tenant, author, {"id": "only"}))
    task = driver.task("only")
    TaskTransition.objects.create(transition_id=f"claim:{task.id}:{task.attempt}", tenant=tenant, task=task,
                                  from_state="QUEUED", to_state="RUNNING", attempt=task.attempt)
    entries = AuditEntry.objects.count()
    assert task_claim(task.id, task.attempt) is None
    assert driver.task("only").state == "QUEUED" and AuditEntry.objects.count() == entries


def test_two_claims_of_one_attempt_from_two_connections_one_wins(recording, tenant, author):
    """The second claim waits for the first one's row lock, then finds the row RUNNING."""
    driver = Driver(submit(tenant, author, {"id": "only"}))
    task_id, attempt = driver.message_for("only")
    results = []
    in_threads(lambda: results.append(task_claim(task_id, attempt) is not None), 4)
    assert sorted(results) == [False, False, False, True]
    assert TaskTransition.objects.filter(task_id=task_id, to_state="RUNNING").count() == 1


def test_a_cancelled_task_drops_its_late_result(recording, tenant, author):
    from gateway.services import run_cancel

    driver = Driver(submit(tenant, author, {"id": "first"}, {"id": "after", "needs": ["first"]}))
    task_id, attempt = driver.message_for("first")
    assert task_claim(task_id, attempt) is not None
    run_cancel(run=driver.run, actor=author)
    assert task_finish(task_id, attempt, SUBMITTED) == "superseded"
    assert driver.states() == {"first": "CANCELLED", "after": "CANCELLED"}
    assert not Artefact.objects.filter(task_id=task_id).exists()
    assert not AuditEntry.objects.filter(event="executor.submitted").exists()


# --------------------------------------------------------------------------- as the application role

APP_PASSWORD = os.environ.get("GATEHOUSE_DB_APP_PASSWORD", "gatehouse_app")


@pytest.fixture
def as_app_role(settings):
    """The default connection as the application role (row-level security applies to it), in the
    scope the test sets; the owner is back before the flush."""
    saved, saved_scope = dict(connection.settings_dict), dbscope._process_scope
    connection.close()
    connection.settings_dict.update({"USER": django_settings.GATEHOUSE_DB_APP_ROLE, "PASSWORD": APP_PASSWORD})
    try:
        yield
    finally:
        dbscope._process_scope = saved_scope  # back to following the settings, as before the test
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def test_as_the_app_role_a_worker_in_the_system_scope_claims_and_finishes(recording, tenant, author, as_app_role):
    dbscope.set_process_scope(dbscope.SYSTEM)
    driver = Driver(submit(tenant, author, {"id": "one"}, {"id": "two", "needs": ["one"]}))
    one = driver.message_for("one")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, row_security_active('gateway_taskinstance')")
        assert cursor.fetchone() == (django_settings.GATEHOUSE_DB_APP_ROLE, True)
    assert task_claim(*one) is not None
    assert task_finish(*one, SUBMITTED) == "succeeded"
    two = driver.message_for("two")
    assert task_claim(*two) is not None
    assert task_finish(*two, OK) == "succeeded"
    assert driver.refresh().state == "SUCCEEDED"


def test_as_the_app_role_bound_to_another_tenant_a_claim_sees_nothing(recording, tenant, author, other_tenant,
                                                                      as_app_role):
    dbscope.set_process_scope(dbscope.SYSTEM)
    driver = Driver(submit(tenant, author, {"id": "only"}))
    task_id, attempt = driver.message_for("only")
    dbscope.set_process_scope(dbscope.REQUEST)
    dbscope.bind_tenant(other_tenant.id)
    assert task_claim(task_id, attempt) is None
    dbscope.bind_tenant(tenant.id)
    assert task_claim(task_id, attempt) is not None
    assert task_finish(task_id, attempt, OK) == "succeeded"
    dbscope.set_process_scope(dbscope.SYSTEM)
    assert driver.refresh().state == "SUCCEEDED"


# --------------------------------------------------------------------------- the finish as one statement alone


def _statements(run_test):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        result = run_test()
    return result, [q["sql"].split(None, 1)[0].upper() for q in captured.captured_queries]


def test_a_fan_out_task_ends_in_one_statement_committed_by_itself(recording, tenant, author):
    driver = Driver(submit(tenant, author, {"id": "root"}, {"id": "a", "needs": ["root"]},
                          {"id": "b", "needs": ["root"]}, {"id": "join", "needs": ["a", "b"]}))
    driver.complete("root")
    task_id, attempt = driver.message_for("a")
    assert task_claim(task_id, attempt) is not None
    result, statements = _statements(lambda: task_finish(task_id, attempt, SUBMITTED))
    assert result == "succeeded"
    assert statements == ["WITH"]  # no BEGIN, no COMMIT, no second statement
    assert driver.task("a").state == "SUCCEEDED" and driver.task("join").needs_remaining == 1
    assert TaskTransition.objects.filter(task_id=task_id, transition_id=f"finish:{task_id}:{attempt}").count() == 1
    assert AuditEntry.objects.filter(event="executor.submitted", object_id=str(task_id)).count() == 1
    assert Artefact.objects.filter(task_id=task_id).count() == 1


def test_alone_changes_nothing_when_the_run_may_close(recording, tenant, author):
    """b failed, so join was skipped while a still ran: a's end may close the run, which the
    statement alone cannot do; it leaves everything as it was, and task_finish does it all in one
    transaction with the run's close."""
    from tests.engine.driver import FAIL

    driver = Driver(submit(tenant, author, {"id": "a"}, {"id": "b"}, {"id": "join", "needs": ["a", "b"]}))
    task_id, attempt = driver.message_for("a")
    assert task_claim(task_id, attempt) is not None
    assert driver.complete("b", FAIL) == "failed"
    assert driver.states() == {"a": "RUNNING", "b": "FAILED", "join": "SKIPPED"}
    history, entries = TaskTransition.objects.count(), AuditEntry.objects.count()
    assert worker_sql.task_finish_succeeded(task_id, attempt, SUBMITTED, alone=True) is None
    assert driver.task("a").state == "RUNNING" and driver.refresh().state == "RUNNING"
    assert (TaskTransition.objects.count(), AuditEntry.objects.count()) == (history, entries)
    assert not Artefact.objects.filter(task_id=task_id).exists()
    result, statements = _statements(lambda: task_finish(task_id, attempt, SUBMITTED))
    assert result == "succeeded" and "BEGIN" in statements and "COMMIT" in statements
    assert driver.task("a").state == "SUCCEEDED" and driver.refresh().state == "FAILED"
    assert AuditEntry.objects.filter(event="run.finished", object_id=str(driver.run.id)).count() == 1


def test_alone_changes_nothing_when_a_gate_opens(recording, tenant, author):
    driver = Driver(submit(tenant, author, {"id": "a"}, {"id": "g", "type": "gate", "needs": ["a"]},
                          {"id": "after", "needs": ["g"]}))
    task_id, attempt = driver.message_for("a")
    assert task_claim(task_id, attempt) is not None
    entries = AuditEntry.objects.count()
    assert worker_sql.task_finish_succeeded(task_id, attempt, OK, alone=True) is None
    assert driver.states() == {"a": "RUNNING", "g": "PENDING", "after": "PENDING"}
    assert AuditEntry.objects.count() == entries
    assert task_finish(task_id, attempt, OK) == "succeeded"
    assert driver.states() == {"a": "SUCCEEDED", "g": "AWAITING_DECISION", "after": "PENDING"}


def test_alone_inside_a_transaction_is_refused(recording, tenant, author):
    from django.db import transaction

    driver = Driver(submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]}))
    task_id, attempt = driver.message_for("a")
    assert task_claim(task_id, attempt) is not None
    with pytest.raises(RuntimeError), transaction.atomic():
        worker_sql.task_finish_succeeded(task_id, attempt, OK, alone=True)
    assert driver.task("a").state == "RUNNING"
