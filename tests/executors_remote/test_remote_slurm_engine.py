"""Slurm jobs through the engine, in this process: the worker's call returns once the job is
submitted and recorded; the poller asks Slurm once per cluster and round; the collect message
finishes the attempt; cancellation, retries, adoption and every end state of a job."""
from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta

import pytest
import yaml
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from executors import registry
from executors.backends import backends_configure
from executors.slurm import job_name
from executors.slurm_tracker import SlurmTracker
from gateway.models import Artefact, Run, TaskInstance, TaskTransition
from gateway.reconcile import reconcile
from gateway.remote import remote_cancel, remote_collect, remote_poll
from gateway.services import run_cancel
from gateway.storage import get_store, tenant_key
from gateway.worker import task_claim, task_execute, task_job_request, task_requeue
from gateway.spec import TaskSpec

from .conftest import collect, execute, poll_until, slurm_jobs, slurm_state, submit

pytestmark = [pytest.mark.slurm, pytest.mark.django_db(transaction=True)]


def task(run, key) -> TaskInstance:
    return TaskInstance.objects.get(run=run, key=key)


def job_of(run, key) -> str:
    return task(run, key).external["external_id"]


def test_the_worker_returns_once_the_job_is_recorded_and_its_end_readies_the_successor(hpc, tenant, author, recording):
    run = submit(tenant, author,
                 {"id": "a", "backend": "hpc", "run": "sleep 1; echo remote > out.txt; echo done",
                  "outputs": [{"name": "out", "path": "out.txt"}]},
                 {"id": "b", "needs": ["a"], "backend": "local", "run": "true"})
    started = time.monotonic()
    assert execute(run, "a") == "submitted"
    assert time.monotonic() - started < 10  # it did not wait for the job
    row = task(run, "a")
    assert row.state == "RUNNING" and row.external["phase"] == "submitted" and row.external["kind"] == "slurm"
    job_id = row.external["external_id"]
    assert job_id.isdigit() and row.external["data"]["cluster"] == hpc
    # The handle and its audit entry were committed together.
    entry = AuditEntry.objects.get(event="executor.submitted", object_id=str(row.id))
    assert entry.body["data"]["external_id"] == job_id and entry.body["data"]["attempt"] == 1
    assert [j["job_id"] for j in slurm_jobs(job_name(f"{run.id}/a/1"))] == [job_id]
    assert task(run, "b").state == "PENDING"
    # The run's API shows the job (its id and phase), never the backend's configuration.
    client = APIClient()
    client.force_authenticate(author)
    shown = {t["key"]: t for t in client.get(f"/api/v1/runs/{run.id}").json()["tasks"]}
    assert shown["a"]["remote_job"]["job_id"] == job_id and shown["a"]["remote_job"]["phase"] == "submitted"
    assert shown["a"]["remote_job"]["backend"] == "hpc" and "config" not in shown["a"]["remote_job"]
    assert shown["b"]["remote_job"] is None

    poll_until(lambda: recording.collects, "the poller to see the job finish")
    assert task(run, "a").external["phase"] == "collecting"
    assert collect(recording) == ["succeeded"]
    row = task(run, "a")
    assert (row.state, row.exit_code) == ("SUCCEEDED", 0)
    out = Artefact.objects.get(task=row, name="out")
    assert get_store().read_bytes(tenant_key(tenant.id), out.digest) == b"remote\n"
    stdout = Artefact.objects.get(task=row, name="stdout")
    assert get_store().read_bytes(tenant_key(tenant.id), stdout.digest) == b"done\n"
    # The successor was queued in the same transaction and its message sent after commit.
    successor = task(run, "b")
    assert successor.state == "QUEUED" and (successor.id, 1) in recording.sent
    # A repeated collect (a redelivered message) finds the attempt finished: nothing moves twice.
    assert remote_collect(row.id, 1, {"state": "succeeded", "exit_code": 0, "reason": ""}) == "stale"
    assert TaskTransition.objects.filter(transition_id=f"finish:{row.id}:1").count() == 1
    assert not os.path.exists(row.external["workdir"])  # removed once collected


def test_a_redelivered_message_never_submits_again(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "sleep 20"})
    assert execute(run, "a") == "submitted"
    assert task_execute(task(run, "a").id, 1) == "stale"
    assert len(slurm_jobs(job_name(f"{run.id}/a/1"))) == 1


def test_one_query_per_cluster_and_round_whatever_the_number_of_jobs(hpc, tenant, author, recording, settings):
    run = submit(tenant, author, *[{"id": f"t{i}", "backend": "hpc", "run": "sleep 60"} for i in range(12)])
    for i in range(12):
        assert execute(run, f"t{i}") == "submitted"
    tracker = SlurmTracker._registry[hpc]
    commands = tracker.commands
    time.sleep(0.3)  # past the tracker's interval
    queries, squeues = tracker.queries, commands.calls.get("squeue", 0)
    leases = []
    for _ in range(3):
        counts = remote_poll()
        assert counts["groups"] == 1 and counts["running"] == 12
        leases.append(task(run, "t0").lease_expires_at)
        time.sleep(0.3)
    assert tracker.queries - queries == 3  # one per round, for twelve jobs
    assert commands.calls.get("squeue", 0) - squeues == 3
    assert tracker.confirmations == 0 and commands.calls.get("scontrol", 0) == 0
    assert leases[0] < leases[1] < leases[2]  # the poller renews the leases

    # Cancelling the run stops every job after commit, audited.
    run_cancel(run=run, actor=author)
    assert len(recording.cancels) == 12
    results = [remote_cancel(*message) for message in recording.cancels]
    assert results == ["cancelled"] * 12
    for i in range(12):
        row = task(run, f"t{i}")
        assert row.state == "CANCELLED" and row.external["phase"] == "cancelled"
        assert slurm_state(row.external["external_id"]) == "CANCELLED"
    assert AuditEntry.objects.filter(event="executor.cancelled", tenant_id=tenant.id).count() == 12
    assert Run.objects.get(id=run.id).state == "CANCELLED"


def test_a_failing_job_is_retried_per_the_spec_then_fails(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "echo bad >&2; exit 3",
                                  "retries": {"count": 1, "backoff": {"initial": "1s"}}})
    assert execute(run, "a") == "submitted"
    first_job = job_of(run, "a")
    poll_until(lambda: recording.collects, "the first job to end")
    assert collect(recording) == ["retry"]
    row = task(run, "a")
    assert (row.state, row.failures) == ("RETRY_WAIT", 1) and row.reason.startswith("exit code 3")
    stderr = Artefact.objects.get(task=row, name="stderr", attempt=1)
    assert b"bad" in get_store().read_bytes(tenant_key(tenant.id), stderr.digest)
    assert recording.retries and recording.retries[0][:2] == (row.id, 1)
    assert task_requeue(row.id, 1)
    assert execute(run, "a") == "submitted"
    second_job = job_of(run, "a")
    assert second_job != first_job
    poll_until(lambda: recording.collects, "the second job to end")
    assert collect(recording) == ["failed"]
    row = task(run, "a")
    assert (row.state, row.failures, row.attempt) == ("FAILED", 2, 2)
    assert len(slurm_jobs(job_name(f"{run.id}/a/1"))) == 1 and len(slurm_jobs(job_name(f"{run.id}/a/2"))) == 1
    assert Run.objects.get(id=run.id).state == "FAILED"


def test_a_job_cancelled_outside_gatehouse_ends_the_task_cancelled(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "sleep 60"},
                 {"id": "b", "needs": ["a"], "backend": "hpc", "run": "true"})
    assert execute(run, "a") == "submitted"
    subprocess.run(["scancel", job_of(run, "a")], check=True)
    poll_until(lambda: recording.collects, "the poller to see the cancellation")
    assert collect(recording) == ["cancelled"]
    row = task(run, "a")
    assert row.state == "CANCELLED" and "cancelled outside Gatehouse" in row.reason and row.failures == 0
    assert task(run, "b").state == "SKIPPED"
    assert recording.cancels == []  # nothing to stop: the job already was
    assert Run.objects.get(id=run.id).state == "CANCELLED"


def test_end_states_from_the_poller_map_to_clear_task_states(hpc, tenant, author, recording):
    """Time limit, node failure, preemption and a job Slurm forgot, as the poller reports them
    in the collect message (Slurm's smallest time limit is a minute; the cluster has one node)."""
    run = submit(tenant, author, *[{"id": key, "backend": "hpc", "run": "sleep 30", "retries": {"count": 1}}
                                   for key in ("timeout", "node", "preempted", "lost")])
    for key in ("timeout", "node", "preempted", "lost"):
        assert execute(run, key) == "submitted"
    ids = {key: task(run, key).id for key in ("timeout", "node", "preempted", "lost")}
    messages = {
        "timeout": {"state": "timed_out", "exit_code": None, "reason": "killed by Slurm at its time limit of 1 min"},
        "node": {"state": "failed", "exit_code": None, "reason": "node failure on vm, exit status unknown"},
        "preempted": {"state": "failed", "exit_code": None, "reason": "preempted by a higher-priority job",
                      "interrupted": True},
        "lost": {"state": "lost", "exit_code": None, "reason": "Slurm no longer knows job 1"},
    }
    results = {key: remote_collect(ids[key], 1, message) for key, message in messages.items()}
    assert results == {"timeout": "retry", "node": "retry", "preempted": "requeued", "lost": "retry"}
    rows = {key: task(run, key) for key in messages}
    assert rows["timeout"].reason.startswith("timed out: killed by Slurm")
    assert rows["node"].reason.startswith("node failure")
    assert rows["lost"].reason.startswith("lost: ")
    assert all(rows[k].failures == 1 for k in ("timeout", "node", "lost"))
    # Preempted: a new attempt at once, counting no failure.
    assert (rows["preempted"].state, rows["preempted"].attempt, rows["preempted"].failures,
            rows["preempted"].recoveries) == ("QUEUED", 2, 0, 1)
    assert (ids["preempted"], 2) in recording.sent


def test_a_job_submitted_by_a_worker_that_died_before_recording_it_is_adopted(hpc, tenant, author, recording,
                                                                               settings):
    """The state a worker leaves when it dies between sbatch and its commit: the row marked
    `submitting`, the job in Slurm, no handle. The reconciler adopts the job by name."""
    from executors.backends import tenant_backends
    from gateway.remote import build_executor

    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "sleep 2"})
    row = task(run, "a")
    claimed = task_claim(row.id, 1)
    backend = next(b for b in tenant_backends(tenant.id)[0] if b.name == "hpc")
    executor = build_executor(kind="slurm", config=backend.config, tenant_id=tenant.id, backend="hpc")
    request = task_job_request(claimed, TaskSpec.from_dict(claimed.spec), 1)
    TaskInstance.objects.filter(id=row.id).update(external={
        "phase": "submitting", "attempt": 1, "kind": "slurm", "backend_name": "hpc", "config": backend.config,
        "workdir": request.workdir, "job_key": request.job_key})
    job = executor.submit(request)  # what the dead worker did last
    TaskInstance.objects.filter(id=row.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    reconcile()
    row = task(run, "a")
    assert row.state == "RUNNING" and row.attempt == 1 and row.external["phase"] == "submitted"
    assert row.external["external_id"] == job.external_id
    assert AuditEntry.objects.get(event="executor.submitted", object_id=str(row.id)).body["data"]["adopted"] is True
    poll_until(lambda: recording.collects, "the adopted job to end")
    assert collect(recording) == ["succeeded"]
    assert len(slurm_jobs(job_name(f"{run.id}/a/1"))) == 1  # never submitted again


def test_a_submission_that_never_reached_slurm_starts_a_new_attempt(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "true"})
    row = task(run, "a")
    task_claim(row.id, 1)
    TaskInstance.objects.filter(id=row.id).update(
        external={"phase": "submitting", "attempt": 1, "kind": "slurm", "backend_name": "hpc",
                  "config": {"cluster": hpc, "poll_interval": 0.2}, "workdir": "/nonexistent/gatehouse/a.1",
                  "job_key": f"{run.id}/a/1"},
        lease_expires_at=timezone.now() - timedelta(seconds=1))
    reconcile()
    row = task(run, "a")
    assert (row.state, row.attempt, row.recoveries) == ("QUEUED", 2, 1)
    assert slurm_jobs(job_name(f"{run.id}/a/1")) == []


def test_a_dead_poller_is_replaced_by_the_reconciler(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "true"})
    assert execute(run, "a") == "submitted"
    job = job_of(run, "a")
    deadline = time.monotonic() + 60
    while slurm_state(job) != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    # No poller ran; a fresh process (no tracker state) sees the lease expired.
    SlurmTracker._registry.pop(hpc, None)
    registry.clear_cache()
    TaskInstance.objects.filter(run=run).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    counts = reconcile()
    assert counts["remote_reattached"] == 1 and counts["lost_workers"] == 0
    assert collect(recording) == ["succeeded"]
    row = task(run, "a")
    assert (row.state, row.attempt, row.recoveries) == ("SUCCEEDED", 1, 0)


def test_a_job_unknown_longer_than_the_bound_is_confirmed_then_lost_and_retried(hpc, tenant, author, recording,
                                                                                settings, tmp_path):
    """Slurm's tools stop answering after the submission (their directory is gone): the job is
    UNKNOWN, visibly, and once REMOTE_UNKNOWN_SECONDS have passed and a forced query still cannot
    confirm it, LOST: a failure retried per the task's spec."""
    tools = tmp_path / "slurm-bin"
    tools.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        path = tools / name
        path.write_text(f'#!/bin/sh\nexec /usr/bin/{name} "$@"\n')
        path.chmod(0o755)
    cluster = f"{hpc}-tools"
    backends_configure(tenant=tenant, actor=author, source=yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Backends", "backends": [
            {"name": "hpc", "kind": "slurm", "max_classification": "TOP SECRET",
             "config": {"cluster": cluster, "poll_interval": 0.2, "bin_dir": str(tools), "command_timeout": 10}}]}))
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "REMOTE_UNKNOWN_SECONDS": 0.5}
    run = submit(tenant, author, {"id": "a", "backend": "hpc", "run": "sleep 30", "retries": {"count": 1}})
    try:
        assert execute(run, "a") == "submitted"
        for path in tools.iterdir():
            path.unlink()  # the cluster's tools are gone
        remote_poll()
        row = task(run, "a")
        assert row.state == "RUNNING" and row.external["remote_state"] == "unknown"
        assert "query failed" in row.external["remote_reason"] and row.external["unknown_since"]
        assert recording.collects == []  # unknown is not an end
        poll_until(lambda: recording.collects, "the bound to pass", timeout=30)
        assert recording.collects[0][2]["state"] == "lost"
        assert collect(recording) == ["retry"]
        row = task(run, "a")
        assert (row.state, row.failures) == ("RETRY_WAIT", 1) and row.reason.startswith("lost: ")
    finally:
        subprocess.run(["scancel", job_of(run, "a")], capture_output=True, check=False)
        SlurmTracker._registry.pop(cluster, None)
