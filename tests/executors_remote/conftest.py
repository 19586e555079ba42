"""Remote jobs through the engine (gateway/remote.py) against the real single-node Slurm cluster
(deploy/test-slurm.sh) and moto's Batch server: submit without holding a worker, poll, collect,
cancel, adopt. Messages are recorded (RecordingDispatcher) so a test handles each one itself."""
from __future__ import annotations

import itertools
import subprocess
import time

import pytest
import yaml

from executors import registry
from executors.backends import backends_configure
from executors.slurm_tracker import SlurmTracker
from tests.executors_batch.conftest import (  # noqa: F401 - the same session fixtures: moto's server, its Batch world
    BUCKET,
    DEFINITION,
    QUEUE,
    REGION,
    aws_env,
    moto_server,
    world,
)
from tests.executors_slurm.conftest import slurm_cluster  # noqa: F401 - the same session fixture

_clusters = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the single-node Slurm cluster of deploy/test-slurm.sh")


def slurm_backends(cluster: str, *, local: bool = True, poll_interval: float = 0.2) -> str:
    backends = [{"name": "hpc", "kind": "slurm", "max_classification": "TOP SECRET",
                 "config": {"cluster": cluster, "poll_interval": poll_interval, "submit_rate": 100,
                            "submit_burst": 100, "command_timeout": 15}}]
    if local:
        backends.append({"name": "local", "kind": "local", "max_classification": "TOP SECRET", "preference": -1})
    return yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Backends", "backends": backends})


def batch_backends(world, **config) -> str:
    """A backends file with one AWS Batch backend `cloud` on moto's Batch world (its queue, job
    definition and bucket), `config` added to the backend's config."""
    backend = {"name": "cloud", "kind": "batch", "max_classification": "TOP SECRET",
               "config": {"job_queue": QUEUE, "job_definition": DEFINITION, "region": REGION,
                          "endpoint_url": world.endpoint_url, "artefact_bucket": BUCKET, **config}}
    return yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Backends", "backends": [backend]})


@pytest.fixture
def hpc(slurm_cluster, tenant, author, recording):
    """The tenant's backends: a Slurm cluster `hpc` (a fresh cluster name, so its tracker is this
    test's) and `local`. Every job of the cluster's name is cancelled at the end."""
    cluster = f"rtest-{next(_clusters)}-{int(time.time())}"
    backends_configure(tenant=tenant, actor=author, source=slurm_backends(cluster))
    yield cluster
    tracker = SlurmTracker._registry.get(cluster)
    if tracker is not None:
        for key in tracker.tracked:
            subprocess.run(["scancel", key], capture_output=True, check=False)
    SlurmTracker._registry.pop(cluster, None)
    registry.clear_cache()


def slurm_jobs(name: str) -> list[dict]:
    """Every job Slurm knows with this job name (squeue keeps finished ones for MinJobAge)."""
    from executors.slurm import parse_squeue_json

    out = subprocess.run(["squeue", "--json", "--states=all"], capture_output=True, text=True, check=True).stdout
    return [r for r in parse_squeue_json(out).values() if r["name"] == name]


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("JobState="):
            return part.split("=", 1)[1]
    return ""


def submit(tenant, author, *tasks, name="remote"):
    """A run of `tasks` (dicts as in a workflow file), through run_submit."""
    from gateway.services import run_submit

    spec = {"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "tasks": list(tasks)}
    return run_submit(tenant=tenant, actor=author, source=yaml.safe_dump(spec, sort_keys=False))


def execute(run, key) -> str:
    """The task `key` of `run` executed as its Celery message would be (its current attempt)."""
    from gateway.models import TaskInstance
    from gateway.worker import task_execute

    row = TaskInstance.objects.get(run=run, key=key)
    return task_execute(row.id, row.attempt)


def poll_until(predicate, what: str, timeout: float = 90.0):
    """Run the remote poller until `predicate()` gives something true (returned), or fail."""
    from gateway.remote import remote_poll

    deadline = time.monotonic() + timeout
    while True:
        remote_poll()
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def collect(recording) -> list[str]:
    """Handle the collect messages the poller sent, as the Celery task would."""
    from gateway.remote import remote_collect

    messages = list(recording.collects)
    recording.collects.clear()
    return [remote_collect(*message) for message in messages]
