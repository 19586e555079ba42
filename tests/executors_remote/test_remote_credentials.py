"""A backend's credentials at dispatch, from a real OpenBao server, for an AWS Batch backend on
moto's server: Vault not answering makes the task wait with a visible reason, counts no failure
and submits nothing; Vault back, the task runs. Credentials are read per use and audited."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest
import yaml

from audit.models import AuditEntry
from executors import registry
from executors.backends import backends_configure
from executors.batch import job_name
from executors.batch_tracker import BatchTracker
from executors.credentials import credentials_set, forget_credential_store
from gateway.models import TaskInstance, TaskTransition
from gateway.remote import remote_collect, remote_poll
from gateway.services import run_submit
from gateway.worker import task_execute, task_requeue
from tests.executors_credentials.conftest import gateway_approle, openbao, vault_config  # noqa: F401

from .conftest import QUEUE, batch_backends

pytestmark = pytest.mark.django_db(transaction=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def cloud(world, tenant, author, settings, openbao, gateway_approle, recording):  # noqa: F811
    world.docker_less(True)
    backends_configure(tenant=tenant, actor=author, source=batch_backends(
        world, artefact_prefix="remote-tests/", poll_interval=0.2, submit_rate=100, submit_burst=100, max_attempts=1))
    vault_config(settings, openbao, gateway_approle)
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "CREDENTIALS_RETRY_SECONDS": 2.0}
    credentials_set(tenant=tenant, backend="cloud", actor=author,
                    values={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    yield world
    forget_credential_store()
    BatchTracker.forget_all()
    registry.clear_cache()


def batch_jobs(world, name: str) -> list[dict]:  # noqa: F811
    return world.batch.list_jobs(jobQueue=QUEUE, filters=[{"name": "JOB_NAME", "values": [name]}])["jobSummaryList"]


def test_vault_down_the_task_waits_and_nothing_is_submitted_vault_back_it_runs(cloud, tenant, author, settings,
                                                                               recording, openbao,
                                                                               gateway_approle):  # noqa: F811
    source = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "creds",
                             "tasks": [{"id": "a", "run": "echo hello", "retries": {"count": 1}}]})
    run = run_submit(tenant=tenant, actor=author, source=source)
    row = TaskInstance.objects.get(run=run)
    assert row.backend == "cloud"

    # Vault stops answering.
    vault_config(settings, SimpleNamespace(url=f"http://127.0.0.1:{closed_port()}"), gateway_approle)
    assert task_execute(row.id, 1) == "waiting_for_credentials"
    row.refresh_from_db()
    assert row.state == "RETRY_WAIT" and row.reason.startswith("waiting_for_credentials: ")
    assert (row.failures, row.recoveries) == (0, 0)  # no retry of the spec's is spent
    assert recording.retries[-1][:2] == (row.id, 1) and recording.retries[-1][2] == pytest.approx(2.0)
    assert batch_jobs(cloud, job_name(f"{run.id}/a/1")) == []  # nothing left for AWS
    failed_read = AuditEntry.objects.filter(event="credential.read", tenant_id=tenant.id, outcome="error")
    assert failed_read.count() == 1 and failed_read.get().body["data"]["backend"] == "cloud"

    # Still down at the next attempt: it waits again, twice as long, and still submits nothing.
    assert task_requeue(row.id, 1)
    assert task_execute(row.id, 2) == "waiting_for_credentials"
    row.refresh_from_db()
    assert (row.state, row.failures, row.attempt) == ("RETRY_WAIT", 0, 2)
    assert recording.retries[-1][2] == pytest.approx(4.0)
    assert batch_jobs(cloud, job_name(f"{run.id}/a/2")) == []
    waits = TaskTransition.objects.filter(task=row, to_state="RETRY_WAIT", reason__startswith="waiting_for_credentials")
    assert waits.count() == 2

    # Vault is back: the next attempt reads the credentials and runs.
    vault_config(settings, openbao, gateway_approle)
    assert task_requeue(row.id, 2)
    assert task_execute(row.id, 3) == "submitted"
    row.refresh_from_db()
    assert row.state == "RUNNING" and row.external["kind"] == "batch"
    jobs = batch_jobs(cloud, job_name(f"{run.id}/a/3"))
    assert [j["jobId"] for j in jobs] == [row.external["external_id"]]
    assert "credentials" not in row.external["config"]  # the handle keeps no secret
    assert "testing" not in str(row.external)
    deadline = time.monotonic() + 30
    while not recording.collects:
        remote_poll()
        assert time.monotonic() < deadline, "the Batch job did not finish"
        time.sleep(0.2)
    message = recording.collects.pop()
    assert remote_collect(*message) == "succeeded"
    row.refresh_from_db()
    assert (row.state, row.failures, row.attempt) == ("SUCCEEDED", 0, 3)
    reads = AuditEntry.objects.filter(event="credential.read", tenant_id=tenant.id, outcome="success")
    assert reads.exists() and all("testing" not in str(e.body) for e in reads)


def test_a_batch_backend_without_credentials_fails_clearly_and_submits_nothing(world, tenant, author, settings,
                                                                               recording, tmp_path):  # noqa: F811
    world.docker_less(True)
    settings.GATEHOUSE_CREDENTIALS = {**settings.GATEHOUSE_CREDENTIALS, "STORE": "local", "CACHE_SECONDS": 0,
                                      "LOCAL_DIR": str(tmp_path / "credentials"),
                                      "MASTER_KEY_FILE": str(tmp_path / "credentials.key")}
    forget_credential_store()
    backends_configure(tenant=tenant, actor=author, source=batch_backends(world))
    source = yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "nocreds",
                             "tasks": [{"id": "a", "run": "true"}]})
    run = run_submit(tenant=tenant, actor=author, source=source)
    row = TaskInstance.objects.get(run=run)
    assert task_execute(row.id, 1) == "failed"
    row.refresh_from_db()
    assert row.state == "FAILED" and "no credentials are set" in row.reason
    assert batch_jobs(world, job_name(f"{run.id}/a/1")) == []
    forget_credential_store()
