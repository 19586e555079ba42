"""A workflow task with ``container:`` through the worker's real code path (``task_execute``: claim,
stage, the local executor running podman, collect, artefacts, finish) on the built-in ``local``
backend, with the local busybox image."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.models import AuditEntry
from gateway.models import Artefact, TaskInstance
from gateway.storage import get_store, tenant_key
from gateway.worker import task_execute
from tests.engine.driver import submit

from .conftest import IMAGE, containers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keep_workdirs(settings, recording):
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "KEEP_WORKDIRS": True}
    return Path(settings.GATEHOUSE_ENGINE["WORKDIR_ROOT"])


def _content(task: TaskInstance, name: str) -> bytes:
    artefact = Artefact.objects.get(task=task, name=name)
    return get_store().read_bytes(tenant_key(task.tenant_id), artefact.digest)


def test_a_container_task_runs_and_its_output_becomes_an_artefact(podman, keep_workdirs, tenant, author):
    run = submit(tenant, author, {
        "id": "report",
        "run": "test ! -e /etc/os-release && echo \"$GREETING from $(readlink /bin/sh)\" > report.txt && echo done",
        "env": {"GREETING": "hello"},
        "container": {"image": IMAGE},
        "outputs": [{"name": "report", "path": "report.txt"}],
    })
    task = TaskInstance.objects.get(run=run, key="report")
    assert task_execute(task.id, task.attempt) == "succeeded"
    task.refresh_from_db()
    assert (task.state, task.exit_code) == ("SUCCEEDED", 0)
    assert _content(task, "report") == b"hello from busybox\n"  # made inside the image
    assert _content(task, "stdout") == b"done\n"
    workdir = keep_workdirs / str(run.id) / f"report.{task.attempt}"
    assert (workdir / "report.txt").read_text() == "hello from busybox\n"  # in the work dir on the host
    submitted = AuditEntry.objects.get(event="executor.submitted", object_id=str(task.id))
    assert submitted.body["data"]["backend"] == "local"
    assert containers(podman, run_id=str(run.id)) == []


def test_a_failing_container_command_fails_the_task(podman, keep_workdirs, tenant, author):
    run = submit(tenant, author, {
        "id": "bad", "run": "echo nope >&2; exit 4", "container": {"image": IMAGE},
        "outputs": [{"name": "never", "path": "never.txt"}],
    })
    task = TaskInstance.objects.get(run=run, key="bad")
    assert task_execute(task.id, task.attempt) == "failed"
    task.refresh_from_db()
    assert (task.state, task.exit_code, task.reason) == ("FAILED", 4, "exit code 4")
    assert _content(task, "stderr") == b"nope\n"
    assert not Artefact.objects.filter(task=task, name="never").exists()


def test_a_timed_out_container_task_leaves_no_container(podman, keep_workdirs, tenant, author):
    run = submit(tenant, author, {
        "id": "slow", "run": "echo started; exec sleep 300", "timeout": "2s", "container": {"image": IMAGE},
    })
    task = TaskInstance.objects.get(run=run, key="slow")
    assert task_execute(task.id, task.attempt) == "failed"
    task.refresh_from_db()
    assert task.state == "FAILED" and "timed out after 2s" in task.reason
    assert _content(task, "stdout") == b"started\n"  # it did run, in its container
    assert containers(podman, run_id=str(run.id)) == []
