"""foreach on a remote backend: the queued instances of one fan-out are submitted as ONE job
array (one sbatch against the real Slurm cluster, one SubmitJob with arrayProperties against
moto's Batch server), each instance then tracked, collected, cancelled and retried on its own
element; a redelivered message for an instance never submits again."""
from __future__ import annotations

import subprocess
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from executors import registry
from executors.backends import backends_configure, tenant_backends
from executors.batch import job_name as batch_job_name
from executors.batch_tracker import BatchTracker
from executors.credentials import credentials_set
from executors.slurm import job_name
from gateway.models import Artefact, TaskInstance, TaskTransition
from gateway.reconcile import reconcile
from gateway.remote import build_executor, remote_cancel
from gateway.services import run_cancel
from gateway.storage import get_store, tenant_key
from gateway.worker import task_execute, task_requeue

from .conftest import QUEUE, batch_backends, collect, execute, poll_until, slurm_jobs, slurm_state, submit

pytestmark = pytest.mark.django_db(transaction=True)


def rows(run) -> dict[str, TaskInstance]:
    return {t.key: t for t in TaskInstance.objects.filter(run=run)}


def executor_of(tenant, name: str):
    """The executor the worker used (the registry keeps one per backend configuration)."""
    backend = next(b for b in tenant_backends(tenant.id)[0] if b.name == name)
    return build_executor(kind=backend.kind, config=backend.config, tenant_id=tenant.id, backend=name)


def read(tenant, task, name) -> bytes:
    return get_store().read_bytes(tenant_key(tenant.id), Artefact.objects.get(task=task, name=name).digest)


# ---------------------------------------------------------------- Slurm


@pytest.mark.slurm
def test_a_foreach_on_slurm_is_one_job_array_and_its_successor_runs(hpc, tenant, author, recording):
    run = submit(tenant, author,
                 {"id": "shard", "backend": "hpc", "foreach": ["a", "b c", {"n": 3}],
                  "run": 'printf "%s %s" "$GATEHOUSE_INDEX" "$GATEHOUSE_ITEM" > out.txt',
                  "outputs": [{"name": "out", "path": "out.txt"}]},
                 {"id": "join", "needs": ["shard"], "backend": "local",
                  "inputs": [{"from": "shard/out", "path": "parts"}],
                  "run": "cat parts/0 parts/1 parts/2 > all.txt", "outputs": [{"name": "all", "path": "all.txt"}]})
    executor = executor_of(tenant, "hpc")
    sbatch = executor.commands.calls.get("sbatch", 0)
    messages = {key: (t.id, t.attempt) for key, t in rows(run).items() if key != "join"}
    assert all(m in recording.sent for m in messages.values())

    # The first message handled takes its queued siblings along: one sbatch for the three.
    assert execute(run, "shard[1]") == "submitted"
    assert executor.commands.calls.get("sbatch", 0) - sbatch == 1
    tasks = rows(run)
    array_id = tasks["shard[0]"].external["data"]["job_id"]
    assert array_id.isdigit()
    for i in range(3):
        row = tasks[f"shard[{i}]"]
        assert (row.state, row.attempt, row.external["phase"]) == ("RUNNING", 1, "submitted")
        assert row.external["external_id"] == f"{array_id}_{i}"  # its own element of the one array
        assert row.external["array"] == {"members": [tasks[f"shard[{j}]"].id for j in range(3)], "index": i}
        assert TaskTransition.objects.filter(transition_id=f"claim:{row.id}:1").count() == 1
        entry = AuditEntry.objects.get(event="executor.submitted", object_id=str(row.id))
        assert entry.body["data"]["external_id"] == f"{array_id}_{i}" and entry.body["data"]["attempt"] == 1
    # Slurm knows one job under the array's name, with three elements.
    assert {j["key"].split("_")[0] for j in slurm_jobs(job_name(f"{run.id}/shard[0]/1+2"))} == {array_id}
    shown = subprocess.run(["scontrol", "show", "job", "-o", array_id], capture_output=True, text=True).stdout
    assert {part.split("=", 1)[1] for line in shown.splitlines() for part in line.split()
            if part.startswith("ArrayJobId=")} == {array_id}

    # The siblings' own messages (and a redelivery of the first) find their instance taken.
    for key in ("shard[0]", "shard[2]", "shard[1]"):
        assert task_execute(*messages[key]) == "stale"
    assert executor.commands.calls.get("sbatch", 0) - sbatch == 1

    poll_until(lambda: len(recording.collects) == 3, "the three elements to finish")
    assert sorted(collect(recording)) == ["succeeded"] * 3
    tasks = rows(run)
    for i, item in enumerate(['"a"', '"b c"', '{"n":3}']):
        assert read(tenant, tasks[f"shard[{i}]"], "out").decode() == f"{i} {item}"
    assert tasks["join"].state == "QUEUED" and (tasks["join"].id, 1) in recording.sent
    assert execute(run, "join") == "succeeded"
    assert read(tenant, rows(run)["join"], "all").decode() == '0 "a"1 "b c"2 {"n":3}'
    run.refresh_from_db()
    assert run.state == "SUCCEEDED"


@pytest.mark.slurm
def test_a_failed_instance_is_retried_alone_as_a_single_job(hpc, tenant, author, recording):
    run = submit(tenant, author,
                 {"id": "f", "backend": "hpc", "foreach": [0, 1], "retries": {"count": 1, "backoff": {"initial": 0}},
                  "run": 'test "$GATEHOUSE_INDEX" != 1 || test -e "$HOME/../retry-ok" || '
                         '{ touch "$HOME/../retry-ok"; exit 4; }'})
    executor = executor_of(tenant, "hpc")
    sbatch = executor.commands.calls.get("sbatch", 0)
    assert execute(run, "f[0]") == "submitted"
    poll_until(lambda: len(recording.collects) == 2, "both elements to finish")
    assert sorted(collect(recording)) == ["retry", "succeeded"]
    failed = rows(run)["f[1]"]
    assert (failed.state, failed.failures) == ("RETRY_WAIT", 1)
    assert task_requeue(failed.id, 1)
    assert execute(run, "f[1]") == "submitted"
    row = rows(run)["f[1]"]
    assert row.attempt == 2 and "_" not in row.external["external_id"] and "array" not in row.external
    assert executor.commands.calls.get("sbatch", 0) - sbatch == 2  # the array, then the one retry
    poll_until(lambda: recording.collects, "the retry to finish")
    assert collect(recording) == ["succeeded"]
    assert rows(run)["f[0]"].attempt == 1
    run.refresh_from_db()
    assert run.state == "SUCCEEDED"


@pytest.mark.slurm
def test_cancelling_the_run_stops_every_element(hpc, tenant, author, recording):
    run = submit(tenant, author, {"id": "f", "backend": "hpc", "foreach": [1, 2, 3], "run": "sleep 120"})
    assert execute(run, "f[0]") == "submitted"
    elements = [rows(run)[f"f[{i}]"].external["external_id"] for i in range(3)]
    run_cancel(run=run, actor=author)
    assert sorted(recording.cancels) == sorted((rows(run)[f"f[{i}]"].id, 1) for i in range(3))
    for task_id, attempt in list(recording.cancels):
        assert remote_cancel(task_id, attempt) == "cancelled"
    for element in elements:
        deadline = time.monotonic() + 30
        while slurm_state(element) not in ("CANCELLED", ""):
            assert time.monotonic() < deadline, f"{element} still {slurm_state(element)}"
            time.sleep(0.3)
    for i in range(3):
        entry = AuditEntry.objects.get(event="executor.cancelled", object_id=str(rows(run)[f"f[{i}]"].id))
        assert entry.body["data"]["external_id"] == elements[i]


@pytest.mark.slurm
def test_members_left_submitting_by_a_lost_worker_are_adopted_never_resubmitted(hpc, tenant, author, recording):
    """The state a worker leaves when it dies between sbatch and the commit recording the array:
    every member `submitting` with the array's member list, no handle. The reconciler finds the
    array by its name and gives each member its own element."""
    run = submit(tenant, author, {"id": "f", "backend": "hpc", "foreach": [1, 2], "run": "sleep 3"})
    executor = executor_of(tenant, "hpc")
    assert execute(run, "f[0]") == "submitted"
    sbatch = executor.commands.calls.get("sbatch", 0)
    recorded = {}
    for key, row in rows(run).items():
        recorded[key] = row.external["external_id"]
        base = {k: v for k, v in row.external.items()
                if k in ("attempt", "kind", "backend_name", "config", "workdir", "job_key", "array")}
        TaskInstance.objects.filter(id=row.id).update(external={**base, "phase": "submitting"},
                                                      lease_expires_at=timezone.now() - timedelta(seconds=1))
    registry.clear_cache()  # a fresh process
    reconcile()
    executor = executor_of(tenant, "hpc")
    for key, row in rows(run).items():
        assert (row.state, row.attempt, row.external["phase"]) == ("RUNNING", 1, "submitted")
        assert row.external["external_id"] == recorded[key]
        adopted = AuditEntry.objects.filter(event="executor.submitted", object_id=str(row.id)).order_by("id").last()
        assert adopted.body["data"]["adopted"] is True
    assert executor.commands.calls.get("sbatch", 0) == 0 and sbatch >= 1  # nothing submitted again
    assert len({j["key"].split("_")[0] for j in slurm_jobs(job_name(f"{run.id}/f[0]/1+1"))}) == 1
    poll_until(lambda: len(recording.collects) == 2, "the adopted elements to finish")
    assert collect(recording) == ["succeeded", "succeeded"]


# ---------------------------------------------------------------- AWS Batch (moto server)


def _batch_backend(world, tenant, author, **options) -> None:
    """The tenant's "cloud" backend on moto's Batch server (no Docker: jobs run with sh), with its keys."""
    world.docker_less(True)
    backends_configure(tenant=tenant, actor=author, source=batch_backends(world, **options))
    credentials_set(tenant=tenant, backend="cloud", actor=author,
                    values={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"})


@pytest.fixture
def cloud(world, tenant, author, recording):  # noqa: F811
    _batch_backend(world, tenant, author, artefact_prefix="fanout-tests/", poll_interval=0.2, submit_rate=100,
                   submit_burst=100, max_attempts=1)
    BatchTracker.forget_all()
    registry.clear_cache()
    yield world
    BatchTracker.forget_all()
    registry.clear_cache()


def test_a_foreach_on_batch_is_one_array_job(cloud, tenant, author, recording):
    run = submit(tenant, author,
                 {"id": "f", "backend": "cloud", "matrix": {"shard": [1, 2, 3, 4]},
                  "run": "echo $GATEHOUSE_MATRIX_SHARD"},
                 {"id": "after", "needs": ["f"], "backend": "cloud", "run": "true"})
    executor = executor_of(tenant, "cloud")
    sent = []
    executor.client.meta.events.register("provide-client-params.batch.SubmitJob",
                                         lambda params, **_: sent.append(dict(params)))
    submits = executor.calls["SubmitJob"]
    messages = {key: (t.id, t.attempt) for key, t in rows(run).items() if key.startswith("f[")}
    assert execute(run, "f[2]") == "submitted"
    assert executor.calls["SubmitJob"] - submits == 1
    assert len(sent) == 1 and sent[0]["arrayProperties"] == {"size": 4}
    assert sent[0]["jobName"] == batch_job_name(f"{run.id}/f[0]/1+3")
    tasks = rows(run)
    parent = tasks["f[0]"].external["data"]["job_id"]
    assert [tasks[f"f[{i}]"].external["external_id"] for i in range(4)] == [f"{parent}:{i}" for i in range(4)]
    listed = cloud.batch.list_jobs(jobQueue=QUEUE, filters=[{"name": "JOB_NAME", "values": [sent[0]["jobName"]]}])
    assert {j["jobId"] for j in listed["jobSummaryList"] if ":" not in j["jobId"]} == {parent}  # one array job
    # Redelivered messages reattach (the claim is taken): nothing is submitted again.
    for message in messages.values():
        assert task_execute(*message) == "stale"
    assert executor.calls["SubmitJob"] - submits == 1
    poll_until(lambda: len(recording.collects) == 4, "the array's elements to finish")
    assert collect(recording) == ["succeeded"] * 4
    after = rows(run)["after"]
    assert after.state == "QUEUED" and (after.id, 1) in recording.sent


def test_workers_racing_on_siblings_never_submit_one_instance_twice(cloud, tenant, author, recording):
    """Several workers handle the instances' messages at the same moment: each instance is claimed
    and submitted exactly once, in whichever array took it."""
    count = 8
    run = submit(tenant, author, {"id": "f", "backend": "cloud", "foreach": list(range(count)), "run": "true"})
    executor = executor_of(tenant, "cloud")
    sent = []
    executor.client.meta.events.register("provide-client-params.batch.SubmitJob",
                                         lambda params, **_: sent.append(dict(params)))
    messages = [(t.id, t.attempt) for t in TaskInstance.objects.filter(run=run).order_by("id")]
    barrier = threading.Barrier(4)
    results: list[str] = []

    def worker(mine):
        from django.db import connection

        try:
            barrier.wait()
            for message in mine:
                results.append(task_execute(*message))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(messages[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == count and results.count("submitted") >= 1
    assert set(results) <= {"submitted", "stale"}
    # Every element submitted covers one instance, and every instance is covered exactly once.
    elements = sum(p.get("arrayProperties", {}).get("size", 1) for p in sent)
    assert elements == count and len(sent) == executor.calls["SubmitJob"]
    tasks = TaskInstance.objects.filter(run=run)
    assert len({t.external["external_id"] for t in tasks}) == count
    for t in tasks:
        assert (t.state, t.attempt, t.external["phase"]) == ("RUNNING", 1, "submitted")
        assert TaskTransition.objects.filter(task=t, to_state="RUNNING").count() == 1
        assert AuditEntry.objects.filter(event="executor.submitted", object_id=str(t.id)).count() == 1


def test_the_rate_limiter_counts_an_array_as_one_submission(world, tenant, author, recording):  # noqa: F811
    """One SubmitJob token in the bucket: the array of five takes it; the next submission finds none."""
    _batch_backend(world, tenant, author, artefact_prefix="fanout-rate/", poll_interval=0.2, submit_rate=0.001,
                   submit_burst=1, submit_wait=0.2)
    from executors import batch as batch_module

    batch_module._buckets.clear()
    registry.clear_cache()
    try:
        run = submit(tenant, author, {"id": "f", "backend": "cloud", "foreach": [1, 2, 3, 4, 5], "run": "true"},
                     {"id": "single", "backend": "cloud", "run": "true"})
        executor = executor_of(tenant, "cloud")
        assert execute(run, "f[0]") == "submitted"
        assert executor.calls["SubmitJob"] == 1
        assert {rows(run)[f"f[{i}]"].external["phase"] for i in range(5)} == {"submitted"}
        assert execute(run, "single") == "failed"
        single = rows(run)["single"]
        assert single.reason.startswith("rate_limited:") and executor.calls["SubmitJob"] == 1
    finally:
        batch_module._buckets.clear()
        BatchTracker.forget_all()
        registry.clear_cache()
