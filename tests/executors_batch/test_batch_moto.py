"""The ``batch`` executor against moto's standalone server over HTTP: submit, batched describe,
array jobs, terminate, the rate limit, reattach and lookup from another executor, the derived
job definition, and the job's files through S3.

moto cannot run a Batch container here (its Batch runs jobs with Docker and there is no Docker
daemon: such a job FAILS at once, which one test checks). The job script the executor writes is
run by the last tests with ``sh`` and the real AWS CLI against the same server, as the container
would run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executors.base import ExecutorError, JobHandle, JobRequest, JobState, OutputRequest, StagedInput
from executors.batch import BOOTSTRAP, CANCEL_REASON, BatchExecutor, job_name
from executors.batch_tracker import BatchTracker
from executors.registry import get_executor
from tests.executors_batch.conftest import (
    BASE_IMAGE,
    BUCKET,
    DEFINITION,
    QUEUE,
    REGION,
    TENANT,
    BatchWorld,
    executor_config,
)

Make = Callable[..., Any]


def wait_for(executor: BatchExecutor, handle: JobHandle, *, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = executor.reattach(handle)
        if status.finished or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def record_submit_params(executor: BatchExecutor) -> list[dict[str, Any]]:
    """The parameters boto3 is about to send with each SubmitJob (botocore's own event hook)."""
    seen: list[dict[str, Any]] = []
    executor.client.meta.events.register("provide-client-params.batch.SubmitJob",
                                         lambda params, **_: seen.append(dict(params)))
    return seen


def test_registered_as_batch_backend(simple: BatchWorld) -> None:
    executor = get_executor("batch", **executor_config(simple))
    assert isinstance(executor, BatchExecutor)
    assert get_executor("batch", **executor_config(simple)) is executor


def test_submit_sends_the_built_parameters_and_moto_reports_them(simple: BatchWorld, make_executor: Make,
                                                                 make_req: Make) -> None:
    executor = make_executor(job_role_arn=simple.job_role)
    sent = record_submit_params(executor)
    req = make_req(("sh", "-c", "echo hi"), env={"MODE": "fast"}, timeout=90,
                   resources={"cpus": 2, "memory": "1G"}, container={"image": "ghcr.io/acme/tool:2"})
    handle = executor.submit(req)

    name = job_name(req.job_key)
    assert handle.backend == "batch" and handle.data["job_name"] == name
    assert len(sent) == 1
    expected = executor.build_submit([req], job_definition=sent[0]["jobDefinition"],
                                     batch_uri=f"s3://{BUCKET}/gatehouse/{TENANT}/batch/{name}")
    assert sent[0] == expected

    job = simple.describe(handle.external_id)
    assert job["jobName"] == name
    assert job["jobQueue"] == simple.queue_arn
    assert job["container"]["command"] == list(BOOTSTRAP)
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env["MODE"] == "fast" and env["GATEHOUSE_JOB_KEY"] == req.job_key
    assert env["GATEHOUSE_BATCH_URI"] == f"s3://{BUCKET}/gatehouse/{TENANT}/batch/{name}"
    assert job["tags"] == {"gatehouse:run": req.labels["run_id"], "gatehouse:task": "task",
                           "gatehouse:attempt": "1", "gatehouse:job-key": req.job_key}
    assert job["timeout"] == {"attemptDurationSeconds": 90}

    # The image and role a SubmitJob cannot override: a derived job definition holds them.
    definition = simple.batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
    assert definition["jobDefinitionName"].startswith(f"{DEFINITION}-gh-")
    assert definition["containerProperties"]["image"] == "ghcr.io/acme/tool:2"
    assert definition["containerProperties"]["jobRoleArn"] == simple.job_role

    # The job script is in the tenant's prefix.
    script = simple.s3.get_object(Bucket=BUCKET, Key=f"gatehouse/{TENANT}/batch/{name}/job.sh")["Body"].read()
    assert script.decode().startswith("#!/bin/sh\n") and "sh -c 'echo hi' >.gatehouse/stdout" in script.decode()


def test_derived_definition_registered_once_and_found_by_another_process(simple: BatchWorld, make_executor: Make,
                                                                         make_req: Make) -> None:
    image = "ghcr.io/acme/once:1"
    first = make_executor()
    arn = first.definition_for(image)
    assert first.definition_for(image) == arn
    assert first.calls["RegisterJobDefinition"] == 1
    second = make_executor()  # another process: describes, finds it, registers nothing
    assert second.definition_for(image) == arn
    assert second.calls["RegisterJobDefinition"] == 0
    assert first.definition_for(None) == DEFINITION
    assert first.definition_for(BASE_IMAGE).endswith(f"job-definition/{DEFINITION}:1")  # same image: the base


def test_job_succeeds_through_moto(simple: BatchWorld, make_executor: Make, make_req: Make) -> None:
    executor = make_executor(poll_interval=0.0)
    handle = executor.submit(make_req())
    status = executor.wait(handle, timeout=30, interval=0.1)
    assert (status.state, status.exit_code) == (JobState.SUCCEEDED, 0)


def test_docker_backed_job_fails_here_and_maps_to_failed(docker_mode: BatchWorld, make_executor: Make,
                                                         make_req: Make) -> None:
    executor = make_executor()
    handle = executor.submit(make_req())
    status = wait_for(executor, handle)
    assert status.state == JobState.FAILED
    assert status.reason == "failed in AWS Batch"


def test_describe_is_batched_100_ids_a_call_and_shared_by_callers(simple: BatchWorld, make_executor: Make,
                                                                  make_req: Make) -> None:
    executor = make_executor(poll_interval=3600.0)
    handles = [executor.submit(make_req()) for _ in range(250)]
    assert executor.calls["SubmitJob"] == 250
    assert executor.calls["DescribeJobs"] == 0

    results: list[dict] = []
    barrier = threading.Barrier(4)

    def poll() -> None:
        barrier.wait()
        results.append(executor.poll_many(handles))

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert executor.tracker.refreshes == 1
    assert executor.tracker.queries == 3  # 100 + 100 + 50
    assert executor.calls["DescribeJobs"] == 3
    for answer in results:
        assert {h.external_id for h in handles} == set(answer)
        assert {s.state for s in answer.values()} == {JobState.SUCCEEDED}

    # A second executor on the same queue (another tenant task, same account) shares the tracker;
    # finished jobs are never asked about again.
    other = make_executor(poll_interval=0.0)
    assert other.tracker is executor.tracker
    other.poll_many(handles)
    assert executor.tracker.queries == 3


def test_array_job_one_submit_and_elements_tracked(simple: BatchWorld, make_executor: Make, make_req: Make) -> None:
    executor = make_executor()
    sent = record_submit_params(executor)
    requests = [make_req(("sh", "-c", f"echo {i}"), env={"SHARD": str(i)}) for i in range(5)]
    handles = executor.submit_array(requests)
    assert executor.calls["SubmitJob"] == 1
    assert sent[0]["arrayProperties"] == {"size": 5}
    parent = handles[0].data["job_id"]
    assert [h.external_id for h in handles] == [f"{parent}:{i}" for i in range(5)]
    assert [h.data["array_index"] for h in handles] == list(range(5))
    statuses = executor.poll_many(handles)
    assert executor.calls["DescribeJobs"] == 1
    assert {s.state for s in statuses.values()} == {JobState.SUCCEEDED}
    prefix = f"gatehouse/{TENANT}/batch/{sent[0]['jobName']}"
    keys = {o["Key"] for o in simple.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]}
    assert keys == {f"{prefix}/{i}.sh" for i in range(5)}
    third = simple.s3.get_object(Bucket=BUCKET, Key=f"{prefix}/3.sh")["Body"].read().decode()
    assert "export SHARD=3\n" in third and "sh -c 'echo 3' >.gatehouse/stdout" in third
    # Taken up again by name from another process.
    BatchTracker.forget_all()
    again = make_executor().lookup_array(requests)
    assert again is not None and [h.external_id for h in again] == [h.external_id for h in handles]


def test_terminate_cancels_an_open_job(docker_mode: BatchWorld, make_executor: Make, make_req: Make) -> None:
    docker_mode.hold_submitted(True)
    executor = make_executor()
    handle = executor.submit(make_req())
    status = executor.reattach(handle)
    assert (status.state, status.reason) == (JobState.PENDING, "submitted to AWS Batch")
    executor.cancel(handle)
    assert executor.calls["TerminateJob"] == 1
    assert docker_mode.describe(handle.external_id)["statusReason"] == CANCEL_REASON
    docker_mode.hold_submitted(False)  # let moto move it on: it stops with our reason
    status = wait_for(executor, handle)
    assert (status.state, status.reason) == (JobState.CANCELLED, "cancelled in AWS Batch")
    executor.cancel(handle)  # a finished job: no error
    executor.cancel(JobHandle("batch", "00000000-0000-0000-0000-000000000000", {"job_queue": QUEUE}))


def test_submit_rate_limit_spaces_submissions(simple: BatchWorld, make_executor: Make, make_req: Make) -> None:
    executor = make_executor(submit_rate=5.0, submit_burst=1)
    requests = [make_req() for _ in range(4)]
    start = time.monotonic()
    for req in requests:
        executor.submit(req)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.55  # 3 waits of 0.2 s after the first token
    assert executor.calls["SubmitJob"] == 4


def test_no_token_in_time_is_rate_limited_without_submitting(simple: BatchWorld, make_executor: Make,
                                                            make_req: Make) -> None:
    executor = make_executor(submit_rate=0.1, submit_burst=1, submit_wait=0.0)
    executor.submit(make_req())
    with pytest.raises(ExecutorError) as caught:
        executor.submit(make_req())
    assert caught.value.code == "rate_limited"
    assert executor.calls["SubmitJob"] == 1
    same_account = make_executor(submit_rate=0.1, submit_burst=1, submit_wait=0.0)
    assert same_account.bucket is executor.bucket


def test_reattach_and_lookup_from_a_new_executor(simple: BatchWorld, make_executor: Make, make_req: Make) -> None:
    req = make_req()
    handle = make_executor().submit(req)
    stored = handle.to_dict()

    BatchTracker.forget_all()  # a new process
    fresh = make_executor()
    assert fresh.reattach(JobHandle.from_dict(stored)).state == JobState.SUCCEEDED
    assert fresh.calls["DescribeJobs"] == 1

    found = fresh.lookup(req)
    assert found is not None and found.external_id == handle.external_id
    assert found.data["io_prefix"] == handle.data["io_prefix"]
    assert fresh.lookup(make_req()) is None
    assert fresh.calls["ListJobs"] == 2
    assert fresh.calls["SubmitJob"] == 0

    with pytest.raises(ExecutorError, match="queue"):
        fresh.reattach(JobHandle("batch", handle.external_id, {**handle.data, "job_queue": "elsewhere"}))


def test_unknown_job_is_unknown_then_lost(simple: BatchWorld, make_executor: Make) -> None:
    executor = make_executor(missing_grace=0.3)
    ghost = JobHandle("batch", "11111111-2222-3333-4444-555555555555", {"job_queue": QUEUE, "region": REGION})
    assert executor.reattach(ghost).state == JobState.UNKNOWN
    time.sleep(0.35)
    status = executor.reattach(ghost)
    assert status.state == JobState.LOST and "no longer knows" in status.reason


def test_unreachable_batch_makes_jobs_unknown_and_backs_off(world: BatchWorld, make_req: Make) -> None:
    from tests.servers import free_port

    dead = BatchExecutor(**executor_config(world, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1,
                                           poll_interval=0.0))
    handle = JobHandle("batch", "11111111-2222-3333-4444-555555555555", {"job_queue": QUEUE, "region": REGION})
    status = dead.reattach(handle)
    assert status.state == JobState.UNKNOWN and "AWS Batch query failed" in status.reason
    assert dead.tracker.failures == 1
    queries = dead.tracker.queries
    dead.poll_many([handle])  # within the back-off: no new call
    assert dead.tracker.queries == queries


def test_explicit_credentials_are_used(simple: BatchWorld, make_req: Make) -> None:
    executor = BatchExecutor(**executor_config(simple, credentials={
        "aws_access_key_id": "AKIATENANTONE", "aws_secret_access_key": "tenant-secret"}))
    creds = executor.client._request_signer._credentials.get_frozen_credentials()
    assert creds.access_key == "AKIATENANTONE" and creds.token is None
    handle = executor.submit(make_req())
    assert executor.reattach(handle).state == JobState.SUCCEEDED
    assert "tenant-secret" not in repr(handle.to_dict())


# --------------------------------------------------------------------------- the job's files through S3

AWS_CLI = shutil.which("aws")
needs_aws_cli = pytest.mark.skipif(
    AWS_CLI is None, reason="the AWS CLI (aws) is not installed: the job script cannot be run as its container would"
)


def run_container(world: BatchWorld, job: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the submitted job's command and environment with sh and the AWS CLI, as its container
    would, against the moto server."""
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    env.update({
        "PATH": f"{os.path.dirname(AWS_CLI)}:/usr/local/bin:/usr/bin:/bin",  # type: ignore[arg-type]
        "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
        "AWS_ENDPOINT_URL": world.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.environ["AWS_CONFIG_FILE"],
        "AWS_SHARED_CREDENTIALS_FILE": os.environ["AWS_SHARED_CREDENTIALS_FILE"],
    })
    if "PYENV_VERSION" in os.environ:
        env["PYENV_VERSION"] = os.environ["PYENV_VERSION"]
    return subprocess.run(job["container"]["command"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@needs_aws_cli
def test_job_script_stages_inputs_runs_and_uploads_outputs(simple: BatchWorld, make_executor: Make, make_req: Make,
                                                           tmp_path: Path) -> None:
    executor = make_executor(container_work_root=str(tmp_path / "container"))
    source = tmp_path / "numbers.txt"
    source.write_text("3\n4\n")
    req = make_req(
        (),
        script='read a; read b; echo "sum $((a + b))" > result/sum.txt; echo "log for $MODE"; echo warn >&2\n',
        env={"MODE": "batch"},
        inputs=(StagedInput(path="data/numbers.txt", source=str(source)),),
        outputs=(OutputRequest(name="sum", path="result/sum.txt"), OutputRequest(name="absent", path="nope.txt")),
    )
    req = JobRequest(**{**req.__dict__, "argv": ("sh", "-c", "mkdir -p result && sh {script} < data/numbers.txt")})
    handle = executor.submit(req)
    proc = run_container(simple, simple.describe(handle.external_id), tmp_path)
    assert proc.returncode == 0, proc.stderr

    collected = executor.collect(handle, req)
    assert collected.missing == ("absent",)
    [output] = collected.outputs
    assert output.path == os.path.join(req.workdir, "result", "sum.txt")
    assert Path(output.path).read_text() == "sum 7\n"
    assert Path(collected.stdout_path).read_text() == "log for batch\n"
    assert Path(collected.stderr_path).read_text() == "warn\n"
    assert handle.external_id not in executor.tracker.tracked


@needs_aws_cli
def test_job_script_exits_111_when_an_input_cannot_be_staged(simple: BatchWorld, make_executor: Make,
                                                             make_req: Make, tmp_path: Path) -> None:
    executor = make_executor(container_work_root=str(tmp_path / "container"))
    source = tmp_path / "gone.txt"
    source.write_text("soon gone " + str(time.time()))
    req = make_req(("cat", "in.txt"), inputs=(StagedInput(path="in.txt", source=str(source)),))
    handle = executor.submit(req)
    blob = executor.store.put_file(TENANT, source)  # already there: the same key the script fetches
    simple.s3.delete_object(Bucket=BUCKET, Key=executor.store.key_for(TENANT, blob.digest))
    proc = run_container(simple, simple.describe(handle.external_id), tmp_path)
    assert proc.returncode == 111
    assert "gatehouse: cannot stage in.txt" in proc.stderr


def test_inputs_are_stored_content_addressed_once(simple: BatchWorld, make_executor: Make, make_req: Make,
                                                  tmp_path: Path) -> None:
    executor = make_executor()
    source = tmp_path / "shared.bin"
    source.write_bytes(b"same bytes for every task")
    for _ in range(2):
        executor.submit(make_req(("cat", "x"), inputs=(StagedInput(path="x", source=str(source)),)))
    assert executor.calls["SubmitJob"] == 2
    digest_keys = [o["Key"] for o in simple.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"gatehouse/{TENANT}/sha256/")[
        "Contents"]]
    import hashlib

    assert f"gatehouse/{TENANT}/sha256/{hashlib.sha256(source.read_bytes()).hexdigest()}" in digest_keys


def test_missing_staging_configuration_refused_before_any_call(simple: BatchWorld, make_req: Make) -> None:
    executor = BatchExecutor(**{**executor_config(simple), "artefact_bucket": None})
    with pytest.raises(ExecutorError, match="artefact_bucket"):
        executor.submit(make_req())
    assert executor.calls == {}
