"""With an S3 bucket configured, the engine keeps artefacts there (boto3 against a moto server
over HTTP) and the next task's inputs come back from it, digest-checked."""
from __future__ import annotations

import uuid

import boto3
import pytest

from gateway.models import Artefact, TaskInstance
from gateway.storage import tenant_key
from gateway.worker import task_execute
from tests.servers import MotoServer

from .driver import submit

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_settings(settings, recording, moto, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"artefacts-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    settings.GATEHOUSE_ARTEFACT_STORE = {"backend": "s3", "bucket": bucket, "prefix": "gh/",
                                         "endpoint_url": moto.endpoint_url, "region_name": "us-east-1"}
    return client, bucket


def test_artefacts_go_to_s3_and_come_back_as_inputs(s3_settings, tenant, author):
    client, bucket = s3_settings
    run = submit(tenant, author,
                 {"id": "make", "run": "printf payload > out.bin", "outputs": [{"name": "out", "path": "out.bin"}]},
                 {"id": "use", "needs": ["make"], "inputs": [{"from": "make/out", "path": "in.bin"}],
                  "run": "test \"$(cat in.bin)\" = payload"})
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    out = Artefact.objects.get(task=make, name="out")
    body = client.get_object(Bucket=bucket, Key=f"gh/{tenant_key(tenant.id)}/sha256/{out.digest}")["Body"].read()
    assert body == b"payload"
    use = TaskInstance.objects.get(run=run, key="use")
    assert task_execute(use.id, use.attempt) == "succeeded"
    run.refresh_from_db()
    assert run.state == "SUCCEEDED"


def test_a_tampered_input_in_s3_fails_the_task_that_reads_it(s3_settings, tenant, author):
    client, bucket = s3_settings
    run = submit(tenant, author,
                 {"id": "make", "run": "printf payload > out.bin", "outputs": [{"name": "out", "path": "out.bin"}]},
                 {"id": "use", "needs": ["make"], "inputs": [{"from": "make/out", "path": "in.bin"}], "run": "touch ran"})
    make = TaskInstance.objects.get(run=run, key="make")
    task_execute(make.id, make.attempt)
    out = Artefact.objects.get(task=make, name="out")
    client.put_object(Bucket=bucket, Key=f"gh/{tenant_key(tenant.id)}/sha256/{out.digest}", Body=b"forged!")
    use = TaskInstance.objects.get(run=run, key="use")
    assert task_execute(use.id, use.attempt) == "failed"
    use.refresh_from_db()
    assert "digest_mismatch" in use.reason
    assert not Artefact.objects.filter(task=use, name="stdout").exists()  # it never ran
