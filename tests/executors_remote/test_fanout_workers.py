"""A foreach on Slurm through real Celery worker processes racing on the instances' messages, a
real poller process, PostgreSQL, Redis and the single-node Slurm cluster: every instance is
claimed and submitted exactly once, in whichever array took it, and the fan-in runs after all."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from audit.models import AuditEntry
from executors.backends import backends_configure
from gateway.models import Artefact, Run, TaskInstance, TaskTransition
from gateway.services import run_submit
from gateway.storage import get_store, tenant_key
from tests.integration.conftest import processes, shared_artefacts, wait_until  # noqa: F401 - the same fixtures

from .conftest import slurm_backends, slurm_state

pytestmark = [pytest.mark.slurm, pytest.mark.django_db(transaction=True)]
REMOTE_ENV = {"GATEHOUSE_REMOTE_POLL_SECONDS": "0.3", "GATEHOUSE_REMOTE_SUBMIT_GRACE_SECONDS": "1"}


@pytest.fixture
def cluster(slurm_cluster, tenant, author):
    name = f"fan-it-{int(time.time() * 1000)}"
    backends_configure(tenant=tenant, actor=author, source=slurm_backends(name, poll_interval=0.3))
    yield name
    for task in TaskInstance.objects.filter(tenant=tenant).exclude(external=None):  # nothing left running
        external = task.external if isinstance(task.external, dict) else {}
        if external.get("kind") == "slurm" and external.get("external_id"):
            subprocess.run(["scancel", external["external_id"]], capture_output=True, check=False)


def test_racing_workers_submit_each_instance_once_and_the_fan_in_runs(processes, cluster, tenant, author):  # noqa: F811
    count = 6
    source = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "fan-it", "tasks": [
        {"id": "part", "backend": "hpc", "foreach": [f"p{i}" for i in range(count)],
         "run": 'printf "%s" "$GATEHOUSE_ITEM" > out.json', "outputs": [{"name": "out", "path": "out.json"}]},
        {"id": "join", "needs": ["part"], "backend": "local", "inputs": [{"from": "part/out", "path": "parts"}],
         "run": "cat parts/* > all.txt", "outputs": [{"name": "all", "path": "all.txt"}]},
    ]})
    processes.worker("w1", concurrency=2, extra_env=REMOTE_ENV)
    processes.worker("w2", concurrency=2, extra_env=REMOTE_ENV)
    processes._start("poller", [sys.executable, "manage.py", "remote_poll", "--loop", "--interval", "0.3"],
                     REMOTE_ENV)
    run = run_submit(tenant=tenant, actor=author, source=source)
    wait_until(lambda: Run.objects.get(id=run.id).state != "RUNNING", timeout=120,
               what=f"the run to end ({processes.log('w1')[-1500:]}{processes.log('w2')[-1500:]})")
    tasks = {t.key: t for t in TaskInstance.objects.filter(run=run)}
    assert Run.objects.get(id=run.id).state == "SUCCEEDED", {k: (t.state, t.reason) for k, t in tasks.items()}
    parts = [tasks[f"part[{i}]"] for i in range(count)]
    elements = [p.external["external_id"] for p in parts]
    assert len(set(elements)) == count and all("_" in e or e.isdigit() for e in elements)
    arrays = {e.split("_")[0] for e in elements}
    assert len(arrays) < count  # the instances went out together (one array, or a few when workers raced)
    for p in parts:
        assert (p.state, p.attempt) == ("SUCCEEDED", 1)
        assert TaskTransition.objects.filter(task=p, to_state="RUNNING").count() == 1
        assert AuditEntry.objects.filter(event="executor.submitted", object_id=str(p.id)).count() == 1
        assert slurm_state(p.external["external_id"]) in ("COMPLETED", "")
    all_txt = Artefact.objects.get(task=tasks["join"], name="all")
    assert get_store().read_bytes(tenant_key(tenant.id), all_txt.digest).decode() == "".join(
        f'"p{i}"' for i in range(count))
