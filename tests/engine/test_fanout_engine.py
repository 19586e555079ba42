"""foreach/matrix through the engine on the local backend: every instance is an ordinary task
(its own process, once), the fan-in task runs after all of them with each instance's artefact
staged under its index, a failing instance follows its retries, a gate waits for the fan-out."""
from __future__ import annotations

import json
import os

import pytest

from approvals.models import Gate
from approvals.services import gate_decide
from gateway.models import Artefact, TaskInstance, TaskTransition
from gateway.storage import get_store, tenant_key
from gateway.worker import task_execute, task_requeue

from .driver import submit

pytestmark = pytest.mark.django_db(transaction=True)


def rows(run) -> dict[str, TaskInstance]:
    return {t.key: t for t in TaskInstance.objects.filter(run=run)}


def run_one(recording, run, key: str) -> str:
    """Handle the pending dispatch message of task `key` as a worker would."""
    task = rows(run)[key]
    message = (task.id, task.attempt)
    assert message in recording.sent, f"no message for {key}"
    recording.sent.remove(message)
    return task_execute(*message)


def drain(recording, run) -> list[tuple[str, str]]:
    """Handle every message of the run, in the order sent, until none is left."""
    keys = {t.id: t.key for t in TaskInstance.objects.filter(run=run)}
    done = []
    while True:
        mine = [m for m in recording.sent if m[0] in keys]
        if not mine:
            return done
        recording.sent.remove(mine[0])
        done.append((keys[mine[0][0]], task_execute(*mine[0])))


def content(tenant, task: TaskInstance, name: str) -> bytes:
    artefact = Artefact.objects.get(task=task, name=name)
    return get_store().read_bytes(tenant_key(tenant.id), artefact.digest)


def test_each_instance_runs_once_with_its_item_and_the_fan_in_reads_them_all(recording, tenant, author):
    items = ["alpha", "two words", {"k": [1, 2]}]
    run = submit(tenant, author,
                 {"id": "score", "foreach": items,
                  "run": 'printf "%s|%s|%s" "$GATEHOUSE_INDEX" "$GATEHOUSE_ITEM" "$GATEHOUSE_TASK_ID" > out.txt',
                  "outputs": [{"name": "out", "path": "out.txt"}]},
                 {"id": "join", "needs": ["score"], "inputs": [{"from": "score/out", "path": "scores"}],
                  "run": "for i in 0 1 2; do cat scores/$i; echo; done > all.txt",
                  "outputs": [{"name": "all", "path": "all.txt"}]})
    tasks = rows(run)
    assert sorted(tasks) == ["join", "score[0]", "score[1]", "score[2]"]
    assert {k: t.state for k, t in tasks.items()} == {"score[0]": "QUEUED", "score[1]": "QUEUED",
                                                        "score[2]": "QUEUED", "join": "PENDING"}
    assert tasks["join"].needs_remaining == 3 and tasks["score[1]"].dependants == ["join"]
    assert run_one(recording, run, "score[2]") == "succeeded"
    assert run_one(recording, run, "score[0]") == "succeeded"
    assert rows(run)["join"].state == "PENDING"  # not before every instance succeeded
    assert run_one(recording, run, "score[1]") == "succeeded"
    assert rows(run)["join"].state == "QUEUED"
    assert drain(recording, run) == [("join", "succeeded")]

    tasks = rows(run)
    for i, item in enumerate(items):
        index, text, key = content(tenant, tasks[f"score[{i}]"], "out").decode().split("|")
        assert (int(index), json.loads(text), key) == (i, item, f"score[{i}]")
        # One claim each: N instances, N processes, each exactly once.
        assert TaskTransition.objects.filter(task=tasks[f"score[{i}]"], to_state="RUNNING").count() == 1
        assert tasks[f"score[{i}]"].spec["fanout"] == {"group": "score", "index": i, "count": 3, "item": item}
    assert content(tenant, tasks["join"], "all").decode().splitlines() == [
        '0|"alpha"|score[0]', '1|"two words"|score[1]', '2|{"k":[1,2]}|score[2]']
    run.refresh_from_db()
    assert run.state == "SUCCEEDED"


def test_matrix_instances_get_one_variable_per_name(recording, tenant, author):
    run = submit(tenant, author,
                 {"id": "grid", "matrix": {"lr": [0.5, "slow"], "depth": [3]},
                  "run": 'printf "%s %s" "$GATEHOUSE_MATRIX_LR" "$GATEHOUSE_MATRIX_DEPTH" > out.txt',
                  "outputs": [{"name": "out", "path": "out.txt"}]})
    assert sorted(r for _, r in drain(recording, run)) == ["succeeded", "succeeded"]
    tasks = rows(run)
    assert content(tenant, tasks["grid[0]"], "out") == b"0.5 3"
    assert content(tenant, tasks["grid[1]"], "out") == b"slow 3"


def test_an_item_is_data_never_shell_code(recording, tenant, author, tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`; touch {marker} '\" \n"
    run = submit(tenant, author,
                 {"id": "f", "matrix": {"name": [hostile]},
                  "run": 'printf "%s" "$GATEHOUSE_MATRIX_NAME" > out.txt; printf "%s" "$GATEHOUSE_ITEM" > item.txt',
                  "outputs": [{"name": "out", "path": "out.txt"}, {"name": "item", "path": "item.txt"}]})
    assert drain(recording, run) == [("f[0]", "succeeded")]
    task = rows(run)["f[0]"]
    assert content(tenant, task, "out").decode() == hostile
    assert json.loads(content(tenant, task, "item")) == {"name": hostile}
    assert not os.path.exists(marker)


def test_a_failing_instance_follows_its_retries_and_the_fan_in_is_skipped(recording, tenant, author):
    run = submit(tenant, author,
                 {"id": "f", "foreach": [0, 1, 2], "retries": {"count": 1, "backoff": {"initial": 0}},
                  "run": 'test "$GATEHOUSE_INDEX" != 1 || exit 3'},
                 {"id": "join", "needs": ["f"], "run": "true"})
    results = dict(drain(recording, run))
    assert results == {"f[0]": "succeeded", "f[1]": "retry", "f[2]": "succeeded"}
    failing = rows(run)["f[1]"]
    assert failing.state == "RETRY_WAIT" and (failing.id, 1) in [r[:2] for r in recording.retries]
    assert task_requeue(failing.id, 1) is True  # the retry is just that instance
    assert drain(recording, run) == [("f[1]", "failed")]
    tasks = rows(run)
    assert (tasks["f[1]"].state, tasks["f[1]"].attempt, tasks["f[1]"].failures) == ("FAILED", 2, 2)
    assert tasks["f[0]"].attempt == 1 and tasks["f[2]"].attempt == 1  # the others ran once
    assert tasks["join"].state == "SKIPPED" and tasks["join"].reason == "upstream: f[1] failed"
    assert not TaskTransition.objects.filter(task=tasks["join"], to_state="RUNNING").exists()
    run.refresh_from_db()
    assert run.state == "FAILED" and run.reason == "failed: f[1]"


def test_a_gate_on_a_fan_out_opens_after_every_instance_and_shows_them_all(recording, tenant, author, analyst):
    run = submit(tenant, author,
                 {"id": "f", "foreach": ["a", "b"], "run": 'printf "%s" "$GATEHOUSE_ITEM" > o.txt',
                  "outputs": [{"name": "o", "path": "o.txt"}]},
                 {"id": "review", "type": "gate", "needs": ["f"], "shows": ["f/o"]},
                 {"id": "after", "needs": ["review"], "run": "true"})
    assert run_one(recording, run, "f[0]") == "succeeded"
    assert rows(run)["review"].state == "PENDING"
    assert run_one(recording, run, "f[1]") == "succeeded"
    gate_task = rows(run)["review"]
    assert gate_task.state == "AWAITING_DECISION"
    assert gate_task.spec["gate"]["shows"] == ["f[0]/o", "f[1]/o"]
    gate_decide(gate=Gate.objects.get(task=gate_task), actor=analyst, option="confirm")
    assert rows(run)["after"].state == "QUEUED"
    assert drain(recording, run) == [("after", "succeeded")]
    run.refresh_from_db()
    assert run.state == "SUCCEEDED"


FAN = "apiVersion: gatehouse/v1\nkind: Workflow\nname: fan\ntasks:\n  - id: f\n    foreach: {items}\n    run: 'true'\n"


def test_the_api_serves_the_fan_out_schema_and_refuses_a_fan_out_over_the_limit(recording, api, author, settings):
    schema = api().get("/api/v1/workflows/schema").json()
    assert schema["$defs"]["plainTask"]["properties"]["foreach"] == {"$ref": "#/$defs/foreach"}
    settings.GATEHOUSE_SPEC_LIMITS = {**settings.GATEHOUSE_SPEC_LIMITS, "max_fanout": 3}
    client = api(author)
    response = client.post("/api/v1/runs", data=FAN.format(items="[1, 2, 3, 4]"), content_type="application/yaml")
    assert response.status_code == 400 and response.json()["code"] == "spec_invalid"
    assert response.json()["detail"] == [{
        "code": "too_many_instances", "line": 6, "task": "f", "path": "/tasks/0/foreach",
        "message": "foreach expands to more than 3 instances (4); the limit is 3 per task"}]
    assert not TaskInstance.objects.exists()  # nothing half-written
    response = client.post("/api/v1/runs", data=FAN.format(items="[1, 2, 3]"), content_type="application/yaml")
    assert response.status_code == 201
    assert [t["key"] for t in response.json()["tasks"]] == ["f[0]", "f[1]", "f[2]"]
