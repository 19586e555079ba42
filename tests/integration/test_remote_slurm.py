"""Slurm jobs through real Celery worker processes, a real poller process and reconciler, the real
single-node Slurm cluster, PostgreSQL and Redis: a remote job holds no worker slot, its end runs
its successor, a worker killed after sbatch leaves a job that is adopted (never resubmitted), a
killed poller is replaced by the reconciler, cancellation reaches Slurm, and one workflow file
runs on the local machine or on Slurm by the tenant's configuration alone."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from audit.models import AuditEntry
from executors.backends import backends_configure
from executors.slurm import job_name
from gateway.models import Artefact, Run, TaskInstance
from gateway.services import run_cancel, run_submit
from gateway.storage import get_store, tenant_key
from tests.executors_remote.conftest import slurm_backends, slurm_cluster, slurm_jobs, slurm_state  # noqa: F401

from .conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
REMOTE_ENV = {"GATEHOUSE_REMOTE_POLL_SECONDS": "0.3", "GATEHOUSE_REMOTE_SUBMIT_GRACE_SECONDS": "1"}


def submit(tenant, author, tasks, name="remote-it"):
    source = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "tasks": tasks})
    return run_submit(tenant=tenant, actor=author, source=source)


def row(run, key) -> TaskInstance:
    return TaskInstance.objects.get(run=run, key=key)


def run_state(run) -> str:
    return Run.objects.get(id=run.id).state


def phase(run, key) -> str | None:
    external = row(run, key).external
    return external.get("phase") if isinstance(external, dict) else None


def poller(processes, name="poller"):
    return processes._start(name, [sys.executable, "manage.py", "remote_poll", "--loop", "--interval", "0.3"],
                            REMOTE_ENV)


@pytest.fixture
def hpc(slurm_cluster, tenant, author):  # noqa: F811
    cluster = f"it-{int(time.time() * 1000)}"
    backends_configure(tenant=tenant, actor=author, source=slurm_backends(cluster, poll_interval=0.3))
    yield cluster
    for task in TaskInstance.objects.filter(tenant=tenant).exclude(external=None):  # nothing left running
        if isinstance(task.external, dict) and task.external.get("kind") == "slurm" and task.external.get("external_id"):
            subprocess.run(["scancel", task.external["external_id"]], capture_output=True, check=False)


def test_a_slurm_job_holds_no_worker_slot_and_its_end_runs_its_successor(processes, hpc, tenant, author):
    processes.worker("w1", concurrency=1, extra_env=REMOTE_ENV)
    poller(processes)
    run = submit(tenant, author, [
        {"id": "remote", "backend": "hpc", "run": "sleep 6; echo from-slurm > out.txt",
         "outputs": [{"name": "out", "path": "out.txt"}]},
        {"id": "after", "needs": ["remote"], "backend": "local", "inputs": [{"from": "remote/out", "path": "in.txt"}],
         "run": "tr a-z A-Z < in.txt > up.txt", "outputs": [{"name": "up", "path": "up.txt"}]},
        {"id": "quick", "backend": "local", "run": "echo quick"},
    ])
    # The single pool slot runs the local task to the end while the Slurm job is still running.
    wait_until(lambda: row(run, "quick").state == "SUCCEEDED", timeout=60,
               what=f"the local task to finish ({processes.log('w1')[-1500:]})")
    remote = row(run, "remote")
    assert remote.state == "RUNNING" and remote.external["phase"] == "submitted"
    assert slurm_state(remote.external["external_id"]) in ("PENDING", "RUNNING")
    wait_until(lambda: run_state(run) != "RUNNING", timeout=90,
               what=f"the run to end ({processes.log('w1')[-1500:]}{processes.log('poller')[-1500:]})")
    assert run_state(run) == "SUCCEEDED", {t.key: (t.state, t.reason) for t in TaskInstance.objects.filter(run=run)}
    assert slurm_state(remote.external["external_id"]) == "COMPLETED"
    up = Artefact.objects.get(task=row(run, "after"), name="up")
    assert get_store().read_bytes(tenant_key(tenant.id), up.digest) == b"FROM-SLURM\n"
    assert row(run, "remote").attempt == 1


def test_a_worker_killed_after_sbatch_leaves_a_job_that_is_adopted_not_resubmitted(processes, hpc, tenant, author):
    # This worker exits between sbatch's answer and the commit that records the job.
    processes.worker("doomed", extra_env={**REMOTE_ENV, "GATEHOUSE_TEST_CRASH_AFTER_SUBMIT": "1"})
    run = submit(tenant, author, [{"id": "a", "backend": "hpc", "run": "sleep 2; echo ok"}])
    name = job_name(f"{run.id}/a/1")
    wait_until(lambda: slurm_jobs(name), timeout=60, what="the job to reach Slurm")
    wait_until(lambda: "exited with 'signal 9" in processes.log("doomed") or "exitcode 137" in processes.log("doomed")
               or "WorkerLostError" in processes.log("doomed"), timeout=30, what="the worker's pool process to die")
    assert phase(run, "a") == "submitting"  # the job id was never recorded
    processes.kill("doomed")
    processes.worker("rescuer", extra_env=REMOTE_ENV)
    processes.reconciler("r1", extra_env=REMOTE_ENV)
    poller(processes)
    wait_until(lambda: run_state(run) != "RUNNING", timeout=90,
               what=f"adoption and the end ({processes.log('r1')[-1500:]}{processes.log('poller')[-1500:]})")
    task = row(run, "a")
    assert (run_state(run), task.state, task.attempt, task.recoveries) == ("SUCCEEDED", "SUCCEEDED", 1, 0)
    assert len(slurm_jobs(name)) == 1  # adopted, never submitted again
    assert [j["job_id"] for j in slurm_jobs(name)] == [task.external["external_id"]]
    entry = AuditEntry.objects.get(event="executor.submitted", object_id=str(task.id))
    assert entry.body["data"]["adopted"] is True


def test_a_killed_poller_is_replaced_by_the_reconciler(processes, hpc, tenant, author):
    processes.worker("w1", extra_env=REMOTE_ENV)
    poller(processes)
    run = submit(tenant, author, [{"id": "a", "backend": "hpc", "run": "sleep 4; echo ok"},
                                  {"id": "b", "needs": ["a"], "backend": "local", "run": "true"}])
    wait_until(lambda: phase(run, "a") == "submitted", timeout=60, what="the submission")
    processes.kill("poller")
    processes.reconciler("r1", extra_env=REMOTE_ENV)
    wait_until(lambda: run_state(run) != "RUNNING", timeout=90, what=f"the end ({processes.log('r1')[-1500:]})")
    task = row(run, "a")
    assert (run_state(run), task.attempt, task.recoveries) == ("SUCCEEDED", 1, 0)
    assert "remote_reattached=" in processes.log("r1")
    assert len(slurm_jobs(job_name(f"{run.id}/a/1"))) == 1


def test_cancelling_a_run_cancels_its_running_slurm_job(processes, hpc, tenant, author, tmp_path):
    processes.worker("w1", extra_env=REMOTE_ENV)
    poller(processes)
    marker = tmp_path / "finished"
    # `&&`: Slurm signals the job's processes one by one, so the shell may outlive the killed sleep by a
    # moment and start its next command; what must hold is that the job's work was stopped.
    run = submit(tenant, author, [{"id": "long", "backend": "hpc", "run": f"sleep 60 && touch {marker}"}])
    wait_until(lambda: phase(run, "long") == "submitted", timeout=60, what="the submission")
    job = row(run, "long").external["external_id"]
    wait_until(lambda: slurm_state(job) == "RUNNING", timeout=60, what="the job to start")
    run_cancel(run=run, actor=author)
    wait_until(lambda: slurm_state(job) == "CANCELLED", timeout=30, what="scancel")
    task = row(run, "long")
    assert task.state == "CANCELLED" and run_state(run) == "CANCELLED"
    wait_until(lambda: phase(run, "long") == "cancelled", timeout=15, what="the cancellation to be recorded")
    entry = AuditEntry.objects.get(event="executor.cancelled", object_id=str(task.id))
    assert entry.body["data"]["external_id"] == job
    assert not marker.exists()


WORKFLOW = [
    {"id": "make", "run": "echo portable > data.txt", "outputs": [{"name": "data", "path": "data.txt"}]},
    {"id": "use", "needs": ["make"], "inputs": [{"from": "make/data", "path": "in.txt"}],
     "run": "cat in.txt in.txt > twice.txt", "outputs": [{"name": "twice", "path": "twice.txt"}]},
]


def test_the_same_workflow_runs_locally_or_on_slurm_by_the_tenant_configuration(processes, slurm_cluster,  # noqa: F811
                                                                                make_tenant, make_member):
    processes.worker("w1", concurrency=2, extra_env=REMOTE_ENV)
    poller(processes)
    on_local, on_slurm = make_tenant("local-co"), make_tenant("hpc-co")
    author_local, author_slurm = make_member(on_local, "author"), make_member(on_slurm, "author")
    local_only = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Backends", "backends": [
        {"name": "main", "kind": "local", "max_classification": "TOP SECRET"}]})
    slurm_only = slurm_backends(f"it-same-{int(time.time() * 1000)}", local=False, poll_interval=0.3) \
        .replace("name: hpc", "name: main")
    backends_configure(tenant=on_local, actor=author_local, source=local_only)
    backends_configure(tenant=on_slurm, actor=author_slurm, source=slurm_only)
    runs = {"local": submit(on_local, author_local, WORKFLOW, name="portable"),
            "slurm": submit(on_slurm, author_slurm, WORKFLOW, name="portable")}
    assert runs["local"].spec_source == runs["slurm"].spec_source  # the same file
    for where, run in runs.items():
        wait_until(lambda: run_state(run) != "RUNNING", timeout=90,
                   what=f"the {where} run ({processes.log('w1')[-1500:]})")
        assert run_state(run) == "SUCCEEDED", where
        tenant = on_local if where == "local" else on_slurm
        twice = Artefact.objects.get(task=row(run, "use"), name="twice")
        assert get_store().read_bytes(tenant_key(tenant.id), twice.digest) == b"portable\nportable\n"
    for where, run in runs.items():
        for key in ("make", "use"):
            task = row(run, key)
            entry = AuditEntry.objects.get(event="executor.submitted", object_id=str(task.id))
            assert entry.body["data"]["backend"] == where
    for key in ("make", "use"):
        assert slurm_state(row(runs["slurm"], key).external["external_id"]) == "COMPLETED"
