"""The engine with real Celery worker processes, PostgreSQL and Redis: the demo pipeline end
to end, a worker killed mid-task, racing workers and reconcilers, a lost message, cancel."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml
from django.conf import settings

from approvals.models import Gate
from approvals.services import gate_decide
from gateway.models import Artefact, Run, TaskInstance, TaskTransition
from gateway.services import run_cancel, run_submit
from gateway.storage import get_store, tenant_key

from .conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
DEMO = Path(settings.BASE_DIR) / "deploy" / "examples" / "threat-validation.yaml"


def states(run) -> dict[str, str]:
    return dict(TaskInstance.objects.filter(run=run).values_list("key", "state"))


def run_state(run) -> str:
    return Run.objects.get(id=run.id).state


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def submit(tenant, author, tasks, name="it"):
    source = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "tasks": tasks})
    return run_submit(tenant=tenant, actor=author, source=source)


def test_demo_pipeline_with_a_gate_end_to_end(processes, tenant, author, analyst):
    processes.worker("w1", concurrency=2)
    run = run_submit(tenant=tenant, actor=author, source=DEMO.read_bytes())
    # The gate opens; the independent statistics branch finishes while it waits.
    wait_until(lambda: states(run)["validate"] == "AWAITING_DECISION" and states(run)["statistics"] == "SUCCEEDED",
               timeout=60, what=f"gate open and statistics done ({processes.log('w1')[-2000:]})")
    assert states(run)["retrain"] == "PENDING" and states(run)["publish"] == "PENDING"
    gate = Gate.objects.get(run=run)
    assert [s["ref"] for s in gate.shows] == ["detect/detections"] and gate.shows[0]["digest"]
    detections = json.loads(get_store().read_bytes(tenant_key(tenant.id), gate.shows[0]["digest"]))
    first = detections[0]["id"]
    gate_decide(gate=gate, actor=analyst, option="correct", input_value={"corrections": [{"id": first, "label": "benign"}]})
    wait_until(lambda: run_state(run) != "RUNNING", timeout=60, what="the run to end")
    assert run_state(run) == "SUCCEEDED", states(run)
    # The analyst's input reached the retraining task, and the report says so.
    report = Artefact.objects.get(run=run, task__key="publish", name="report")
    text = get_store().read_bytes(tenant_key(tenant.id), report.digest).decode()
    assert "analyst corrections: 1" in text
    stdout = Artefact.objects.get(run=run, task__key="ingest", name="stdout")
    assert b"ingested 200 readings" in get_store().read_bytes(tenant_key(tenant.id), stdout.digest)


def test_a_worker_killed_mid_task_is_recovered_by_the_reconciler(processes, tenant, author):
    processes.worker("doomed")
    run = submit(tenant, author, [{"id": "slow", "run": "sleep 2; echo done > out.txt",
                                   "outputs": [{"name": "out", "path": "out.txt"}]}])
    task = TaskInstance.objects.get(run=run)
    # Wait until the task runs and its process is recorded by the first heartbeat.
    wait_until(lambda: TaskInstance.objects.get(id=task.id).external, timeout=30, what="the task to run")
    pid = TaskInstance.objects.get(id=task.id).external["data"]["pid"]
    assert pid_alive(pid)
    processes.kill("doomed")  # SIGKILL the whole worker, mid-task
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the orphaned task process to die with its worker")
    processes.worker("rescuer")
    processes.reconciler("r1")
    wait_until(lambda: run_state(run) != "RUNNING", timeout=60, what="recovery")
    task.refresh_from_db()
    assert (run_state(run), task.state, task.attempt, task.recoveries) == ("SUCCEEDED", "SUCCEEDED", 2, 1)
    claims = list(TaskTransition.objects.filter(task=task, to_state="RUNNING").values_list("attempt", flat=True))
    assert sorted(claims) == [1, 2]
    assert Artefact.objects.filter(task=task, name="out", attempt=2).exists()


@pytest.mark.parametrize("window", ["0", "4"], ids=["every-task-sent", "window-4"])
def test_racing_workers_and_reconcilers_run_each_task_exactly_once(processes, tenant, author, tmp_path, window):
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"MARKS": str(marks)}
    fan = [{"id": f"t{i}", "needs": ["root"], "env": env, "run": 'echo "$GATEHOUSE_ATTEMPT" >> "$MARKS/$GATEHOUSE_TASK_ID"'}
           for i in range(60)]
    tasks = [{"id": "root", "run": "true"}, *fan,
             {"id": "join", "needs": [t["id"] for t in fan], "env": env, "run": 'echo "$GATEHOUSE_ATTEMPT" >> "$MARKS/join"'}]
    # An impatient dispatch timeout: reconcilers redispatch queued tasks while their first messages still wait.
    # With a window of 4, 56 of the 60 are held and claimed by the workers that run the other four.
    impatient = {"GATEHOUSE_DISPATCH_TIMEOUT_SECONDS": "0.2", "GATEHOUSE_DISPATCH_WINDOW": window}
    for name in ("w1", "w2"):
        processes.worker(name, concurrency=2, extra_env=impatient)
    for name in ("r1", "r2"):
        processes.reconciler(name, interval=0.1, extra_env=impatient)
    run = submit(tenant, author, tasks)
    # Duplicate every first message too, as a broker redelivery would.
    from gateway.tasks import execute_task_task

    for task in TaskInstance.objects.filter(run=run, key__startswith="t"):
        execute_task_task.delay(task.id, 1)
    wait_until(lambda: run_state(run) != "RUNNING", timeout=120, what="the fan-out to finish")
    assert run_state(run) == "SUCCEEDED", states(run)
    for key in [t["id"] for t in fan] + ["join"]:
        lines = (marks / key).read_text().split()
        assert len(lines) == 1, f"{key} ran {len(lines)} times (attempts {lines})"
    for task in TaskInstance.objects.filter(run=run):
        claims = list(TaskTransition.objects.filter(task=task, to_state="RUNNING").values_list("attempt", flat=True))
        assert len(claims) == 1, f"{task.key}: claims {claims}"


def test_held_tasks_run_on_the_workers_of_the_sent_ones(processes, tenant, author):
    """No reconciler runs: the 28 held tasks can only run because the workers that take the two sent
    messages claim them, each once, at attempt 1 (a short drain, so they also hand on by message)."""
    fan = [{"id": f"t{i}", "needs": ["root"], "run": "true"} for i in range(30)]
    env = {"GATEHOUSE_DISPATCH_WINDOW": "2", "GATEHOUSE_DRAIN_SECONDS": "0.3"}
    processes.worker("w1", concurrency=2, extra_env=env)
    run = submit(tenant, author, [{"id": "root", "run": "true"}, *fan,
                                  {"id": "join", "needs": [t["id"] for t in fan], "run": "true"}])
    wait_until(lambda: run_state(run) != "RUNNING", timeout=60, what=f"the fan-out ({processes.log('w1')[-2000:]})")
    assert run_state(run) == "SUCCEEDED", states(run)
    claims = TaskTransition.objects.filter(task__run=run, to_state="RUNNING")
    assert sorted(claims.values_list("task__key", "attempt")) == sorted(
        [("root", 1), ("join", 1), *((t["id"], 1) for t in fan)])
    assert not TaskInstance.objects.filter(run=run, held=True).exists()


def test_held_long_tasks_spread_over_every_free_worker_at_once(processes, tenant, author):
    """A window of 1 holds three of the four: each message's claim sends a held task a message in its
    place, so the four free pool processes all start one before any ends (without it, the held tasks
    would wait for a drain, one after another)."""
    fan = [{"id": f"t{i}", "needs": ["root"], "run": "sleep 2"} for i in range(4)]
    processes.worker("w1", concurrency=4, extra_env={"GATEHOUSE_DISPATCH_WINDOW": "1"})
    run = submit(tenant, author, [{"id": "root", "run": "true"}, *fan])
    wait_until(lambda: run_state(run) != "RUNNING", timeout=60, what=f"the fan-out ({processes.log('w1')[-2000:]})")
    assert run_state(run) == "SUCCEEDED", states(run)
    moves = TaskTransition.objects.filter(task__run=run, task__key__startswith="t")
    claims = list(moves.filter(to_state="RUNNING").values_list("at", flat=True))
    ends = list(moves.filter(to_state="SUCCEEDED").values_list("at", flat=True))
    assert len(claims) == len(ends) == 4
    assert max(claims) < min(ends), f"claims {sorted(claims)}, ends {sorted(ends)}"
    assert len(set(TaskInstance.objects.filter(run=run, key__startswith="t").values_list("worker", flat=True))) == 4


def test_a_lost_broker_message_is_redispatched(processes, tenant, author):
    run = submit(tenant, author, [{"id": "a", "run": "true"}])
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # the dispatch message is lost
    processes.worker("w1", extra_env={"GATEHOUSE_DISPATCH_TIMEOUT_SECONDS": "1"})
    processes.reconciler("r1", extra_env={"GATEHOUSE_DISPATCH_TIMEOUT_SECONDS": "1"})
    wait_until(lambda: run_state(run) != "RUNNING", timeout=60, what="redispatch")
    task = TaskInstance.objects.get(run=run)
    assert run_state(run) == "SUCCEEDED"
    # The lost attempt 1 never ran; the reconciler redispatched it as a new attempt (more than one
    # when the worker was slower to start than the 1 s dispatch timeout), and exactly one ran.
    claims = list(TaskTransition.objects.filter(task=task, to_state="RUNNING").values_list("attempt", flat=True))
    assert task.attempt >= 2
    assert claims == [task.attempt]


def test_cancel_stops_a_running_task(processes, tenant, author, tmp_path):
    processes.worker("w1")
    marker = tmp_path / "finished"
    run = submit(tenant, author, [{"id": "long", "run": f"sleep 30; touch {marker}"}, {"id": "after", "needs": ["long"], "run": "true"}])
    wait_until(lambda: TaskInstance.objects.get(run=run, key="long").external, timeout=30, what="the task to run")
    pid = TaskInstance.objects.get(run=run, key="long").external["data"]["pid"]
    run_cancel(run=run, actor=author)
    wait_until(lambda: not pid_alive(pid), timeout=15, what="the cancelled process to stop")
    assert not marker.exists()
    assert states(run) == {"long": "CANCELLED", "after": "CANCELLED"}
    from audit.models import AuditEntry

    wait_until(lambda: AuditEntry.objects.filter(event="executor.cancelled", body__data__task="long").exists(),
               timeout=10, what="the worker to record the stopped job")
    assert run_state(run) == "CANCELLED"
