"""What the ``batch`` executor builds (SubmitJob parameters, the job script, names, tags,
resources) and how every AWS Batch state maps to a job state. Pure: no server needed."""

from __future__ import annotations

import re

import pytest

from executors.base import ExecutorError, JobRequest, JobState, OutputRequest
from executors.batch import (
    BATCH_STATES,
    BOOTSTRAP,
    CANCEL_REASON,
    BatchExecutor,
    _credential_values,
    attempt_duration,
    batch_status,
    element_script,
    job_name,
    job_tags,
    resource_requirements,
)

REQ = JobRequest(
    job_key="run1/train/2",
    argv=("python3", "{script}", "--epochs", "3"),
    env={"MODE": "fast lane"},
    workdir="/var/gatehouse/work/run1/train.2",
    script="print(1)",
    timeout=150,
    resources={"cpus": 4, "memory": "16G", "gpus": 1, "partition": "ignored"},
    container={"image": "ghcr.io/acme/train:1.4"},
    outputs=(OutputRequest(name="model", path="out/model.bin"),),
    labels={"run_id": "run1", "task_id": "train", "attempt": "2"},
)


def req_with(**kw: object) -> JobRequest:
    return JobRequest(**{**REQ.__dict__, **kw})


@pytest.fixture
def executor(aws_env: dict[str, str]) -> BatchExecutor:
    # Building an executor makes boto3 clients but calls nothing.
    return BatchExecutor(job_queue="q1", job_definition="jd1", region="eu-west-1", artefact_bucket="b1",
                         artefact_prefix="gh/", tenant="acme", defaults={"memory": "1G", "time": "2h"})


def test_job_name_is_batch_safe_and_unique_per_key() -> None:
    assert job_name("run1/train/2") == "gatehouse-run1-train-2-f1182c391c"
    assert job_name("run1-train-2") != job_name("run1/train/2")
    long = job_name("x" * 300)
    assert len(long) <= 128 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{1,127}", long)


def test_tags_carry_run_task_attempt_and_key() -> None:
    assert job_tags(REQ) == {"gatehouse:run": "run1", "gatehouse:task": "train", "gatehouse:attempt": "2",
                             "gatehouse:job-key": "run1/train/2"}
    odd = req_with(labels={"run_id": "r#1", "task_id": "t\n"})
    assert job_tags(odd)["gatehouse:run"] == "r_1" and job_tags(odd)["gatehouse:task"] == "t_"


def test_resources_become_resource_requirements() -> None:
    assert resource_requirements({"cpus": 4, "memory": "16G", "gpus": 1}) == [
        {"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "16384"}, {"type": "GPU", "value": "1"}]
    assert resource_requirements({"vcpus": 0.25, "memory": 1536 * 1024 * 1024}) == [
        {"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "1536"}]
    assert resource_requirements({"gpus": 0}, defaults={"cpus": 2}) == [{"type": "VCPU", "value": "2"}]
    assert resource_requirements({}) == []
    for bad in ({"cpus": 0}, {"cpus": "many"}, {"memory": "lots"}, {"gpus": 1.5}, {"cpus": True}):
        with pytest.raises(ExecutorError) as caught:
            resource_requirements(bad)
        assert caught.value.code == "bad_request"


def test_timeout_becomes_attempt_duration() -> None:
    assert attempt_duration({}, 150) == 150
    assert attempt_duration({}, 150.2) == 151
    assert attempt_duration({}, 5) == 60  # Batch's minimum
    assert attempt_duration({"time": "1h30m"}, 150) == 5400  # resources win
    assert attempt_duration({}, None) is None
    with pytest.raises(ExecutorError):
        attempt_duration({"time": "soon"}, None)


def test_exact_submit_job_parameters_from_a_task_spec(executor: BatchExecutor) -> None:
    params = executor.build_submit([REQ], job_definition="arn:jd", batch_uri="s3://b1/gh/acme/batch/N")
    assert params["jobName"] == "gatehouse-run1-train-2-f1182c391c"
    assert params["jobQueue"] == "q1" and params["jobDefinition"] == "arn:jd"
    assert params["containerOverrides"] == {
        "command": list(BOOTSTRAP),
        "environment": [
            {"name": "GATEHOUSE_ATTEMPT", "value": "2"},
            {"name": "GATEHOUSE_BATCH_URI", "value": "s3://b1/gh/acme/batch/N"},
            {"name": "GATEHOUSE_JOB_KEY", "value": "run1/train/2"},
            {"name": "GATEHOUSE_RUN_ID", "value": "run1"},
            {"name": "GATEHOUSE_TASK_ID", "value": "train"},
            {"name": "MODE", "value": "fast lane"},
        ],
        "resourceRequirements": [
            {"type": "VCPU", "value": "4"},
            {"type": "MEMORY", "value": "16384"},
            {"type": "GPU", "value": "1"},
        ],
    }
    assert params["retryStrategy"] == {"attempts": 1} and params["propagateTags"] is True
    assert params["tags"] == {"gatehouse:run": "run1", "gatehouse:task": "train", "gatehouse:attempt": "2",
                              "gatehouse:job-key": "run1/train/2"}
    # The backend's default `time` (2h) is a resource, and resources win over the task's timeout.
    assert params["timeout"] == {"attemptDurationSeconds": 7200}
    assert set(params) == {"jobName", "jobQueue", "jobDefinition", "containerOverrides", "retryStrategy",
                           "propagateTags", "tags", "timeout"}


def test_defaults_fill_resources_and_no_timeout_means_none(aws_env: dict[str, str]) -> None:
    ex = BatchExecutor(job_queue="q1", job_definition="jd1", region="eu-west-1", defaults={"memory": "2G"})
    params = ex.build_submit([req_with(resources={}, timeout=None)], job_definition="jd1", batch_uri="s3://b/x")
    assert params["containerOverrides"]["resourceRequirements"] == [{"type": "MEMORY", "value": "2048"}]
    assert "timeout" not in params


def test_array_parameters_share_common_env_and_name_the_array(executor: BatchExecutor) -> None:
    elements = [req_with(job_key=f"run1/shard/{i}", env={"MODE": "fast", "SHARD": str(i)},
                         labels={"run_id": "run1", "task_id": f"shard{i}", "attempt": "1"}) for i in range(3)]
    params = executor.build_submit(elements, job_definition="jd1", batch_uri="s3://b1/gh/acme/batch/A")
    assert params["arrayProperties"] == {"size": 3}
    assert params["jobName"] == job_name("run1/shard/0+2")
    assert params["containerOverrides"]["environment"] == [
        {"name": "GATEHOUSE_ATTEMPT", "value": "1"},
        {"name": "GATEHOUSE_BATCH_URI", "value": "s3://b1/gh/acme/batch/A"},
        {"name": "GATEHOUSE_RUN_ID", "value": "run1"},
        {"name": "MODE", "value": "fast"},
    ]
    assert params["tags"] == {"gatehouse:array": "3", "gatehouse:job-key": "run1/shard/0+2",
                              "gatehouse:run": "run1", "gatehouse:attempt": "1"}
    # What differs goes into each element's script.
    assert executor._exports(elements, 2) == {"GATEHOUSE_JOB_KEY": "run1/shard/2", "GATEHOUSE_TASK_ID": "shard2",
                                              "SHARD": "2"}


def test_element_script_stages_runs_and_uploads() -> None:
    script = element_script(
        REQ,
        workdir="/tmp/gatehouse/J",
        inputs=[("s3://b1/gh/acme/sha256/abc", "data/in.csv"), ("s3://b1/gh/acme/sha256/def", ".gatehouse/script")],
        io_uri="s3://b1/gh/acme/batch/J",
        exports={"SHARD": "it's 2"},
    )
    assert script == "\n".join([
        "#!/bin/sh",
        "# Gatehouse batch job run1/train/2: inputs from S3, the task, outputs to S3.",
        "set -u",
        "W=/tmp/gatehouse/J",
        'mkdir -p "$W/.gatehouse" && cd "$W" || exit 111',
        "fetch() {",
        '  mkdir -p "$(dirname "$2")" && aws s3 cp --only-show-errors "$1" "$2" && return 0',
        '  echo "gatehouse: cannot stage $2 from $1" >&2; exit 111',
        "}",
        "put() {",
        '  aws s3 cp --only-show-errors "$1" "$2" || echo "gatehouse: cannot upload $1 to $2" >&2',
        "}",
        "fetch s3://b1/gh/acme/sha256/abc data/in.csv",
        "fetch s3://b1/gh/acme/sha256/def .gatehouse/script",
        "export 'SHARD=it'\"'\"'s 2'",
        "python3 /tmp/gatehouse/J/.gatehouse/script --epochs 3 >.gatehouse/stdout 2>.gatehouse/stderr",
        "rc=$?",
        "put .gatehouse/stdout s3://b1/gh/acme/batch/J/stdout",
        "put .gatehouse/stderr s3://b1/gh/acme/batch/J/stderr",
        "if [ -f out/model.bin ] && [ ! -L out/model.bin ]; then"
        " put out/model.bin s3://b1/gh/acme/batch/J/out/model; fi",
        'exit "$rc"',
    ]) + "\n"


def test_bootstrap_fetches_the_element_script_by_array_index() -> None:
    assert BOOTSTRAP[:2] == ("sh", "-c")
    assert '"$GATEHOUSE_BATCH_URI/${AWS_BATCH_JOB_ARRAY_INDEX:-job}.sh"' in BOOTSTRAP[2]
    assert BOOTSTRAP[2].endswith('exec sh "$s"')


def test_requests_refused_before_any_call(executor: BatchExecutor) -> None:
    for bad, code in [
        (req_with(env={"AWS_BATCH_JOB_ID": "x"}), "bad_request"),
        (req_with(env={"1BAD": "x"}), "bad_request"),
        (req_with(argv=("{script}",), script=None), "bad_request"),
        (req_with(container={"image": "-rm"}), "bad_request"),
        (req_with(outputs=(OutputRequest(name="a/b", path="x"),)), "bad_request"),
        (req_with(outputs=(OutputRequest(name="a", path="../x"),)), "bad_request"),
        (req_with(workdir="relative"), "bad_request"),
    ]:
        with pytest.raises(ExecutorError) as caught:
            executor._check(bad)
        assert caught.value.code == code
    assert executor.calls == {}


def test_configuration_is_required(aws_env: dict[str, str]) -> None:
    with pytest.raises(ExecutorError, match="job_queue and job_definition"):
        BatchExecutor(job_definition="jd")
    with pytest.raises(ExecutorError, match="container_work_root"):
        BatchExecutor(job_queue="q", job_definition="jd", container_work_root="rel")


def test_credentials_are_checked_without_showing_values(aws_env: dict[str, str]) -> None:
    assert _credential_values({"AWS_ACCESS_KEY_ID": "AKIA1", "aws_secret_access_key": "s3cr3t"}) == {
        "aws_access_key_id": "AKIA1", "aws_secret_access_key": "s3cr3t"}
    with pytest.raises(ExecutorError) as caught:
        _credential_values({"aws_access_key_id": "AKIA1", "password": "s3cr3t"})
    assert "password" in caught.value.message and "s3cr3t" not in caught.value.message
    with pytest.raises(ExecutorError) as caught:
        _credential_values({"aws_access_key_id": "AKIA1"})
    assert "AKIA1" not in caught.value.message
    ex = BatchExecutor(job_queue="q", job_definition="jd", region="eu-west-1",
                       credentials={"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "very-secret"})
    assert "very-secret" not in repr(ex) and "AKIAEXAMPLE" not in repr(ex)
    assert "very-secret" not in ex.tracker.key and "AKIAEXAMPLE" not in ex.tracker.key
    other = BatchExecutor(job_queue="q", job_definition="jd", region="eu-west-1",
                          credentials={"aws_access_key_id": "AKIAOTHER", "aws_secret_access_key": "x"})
    assert other.tracker is not ex.tracker  # another account never shares a tracker or a rate limit
    assert other.bucket is not ex.bucket


def test_the_default_submit_rate_is_aws_documented_50_per_second(aws_env: dict[str, str]) -> None:
    ex = BatchExecutor(job_queue="q", job_definition="jd", region="eu-west-1")
    assert ex.bucket.rate == 50.0
    assert BatchExecutor(job_queue="q2", job_definition="jd", region="eu-west-1").bucket is ex.bucket


# ----------------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("job", "state", "exit_code", "reason"),
    [
        ({"status": "SUBMITTED"}, JobState.PENDING, None, "submitted to AWS Batch"),
        ({"status": "PENDING"}, JobState.PENDING, None, "pending in AWS Batch: waiting for dependencies"),
        ({"status": "RUNNABLE", "statusReason": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - no instance fits"},
         JobState.PENDING, None,
         "runnable: waiting for compute resources (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - no instance fits)"),
        ({"status": "STARTING"}, JobState.PENDING, None, "starting: its container is being launched"),
        ({"status": "RUNNING", "container": {"logStreamName": "jd/default/abc"}}, JobState.RUNNING, None,
         "running (log stream jd/default/abc)"),
        ({"status": "SUCCEEDED", "container": {"exitCode": 0}}, JobState.SUCCEEDED, 0, "exit code 0"),
        ({"status": "FAILED", "statusReason": "Essential container in task exited", "container": {"exitCode": 3}},
         JobState.FAILED, 3, "Essential container in task exited, exit code 3"),
        ({"status": "FAILED", "statusReason": "Essential container in task exited",
          "attempts": [{"container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory "
                                                                   "usage"}}]},
         JobState.FAILED, 137,
         "Essential container in task exited, OutOfMemoryError: Container killed due to memory usage, exit code 137"),
        ({"status": "FAILED", "statusReason": "Essential container in task exited", "container": {"exitCode": 111}},
         JobState.FAILED, 111,
         "Essential container in task exited, exit code 111 (the job script could not stage an input)"),
        ({"status": "FAILED", "statusReason": "Host EC2 (instance i-0abc) terminated."}, JobState.FAILED, None,
         "Host EC2 (instance i-0abc) terminated."),
        ({"status": "FAILED"}, JobState.FAILED, None, "failed in AWS Batch"),
        ({"status": "FAILED", "statusReason": "Job attempt duration exceeded timeout"}, JobState.TIMED_OUT, None,
         "killed by AWS Batch at its attempt duration (Job attempt duration exceeded timeout)"),
        ({"status": "FAILED", "statusReason": CANCEL_REASON}, JobState.CANCELLED, None, "cancelled in AWS Batch"),
        ({"status": "PAUSED"}, JobState.UNKNOWN, None, "unrecognised AWS Batch state 'PAUSED'"),
    ],
)
def test_batch_state_mapping(job: dict, state: JobState, exit_code: int | None, reason: str) -> None:
    status = batch_status(job)
    assert (status.state, status.exit_code, status.reason) == (state, exit_code, reason)


def test_every_batch_state_is_mapped() -> None:
    mapped = {s: batch_status({"status": s}).state for s in BATCH_STATES}
    assert mapped == {"SUBMITTED": JobState.PENDING, "PENDING": JobState.PENDING, "RUNNABLE": JobState.PENDING,
                      "STARTING": JobState.PENDING, "RUNNING": JobState.RUNNING, "SUCCEEDED": JobState.SUCCEEDED,
                      "FAILED": JobState.FAILED}
