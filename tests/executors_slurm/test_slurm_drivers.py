"""What the two Slurm drivers share, and which one an executor gets.

The CLI driver (``sbatch`` options) and the pyslurm driver (``JobSubmitDescription`` arguments) are
both rendered from one :func:`job_fields`, and both drivers' job records go through one
:func:`record_status`: these tests need no pyslurm. The driver choice is checked live on this
machine, where pyslurm is not importable (no release builds against its Slurm 22.05).
"""

from __future__ import annotations

import json
import logging

import pytest

from executors import slurm
from executors.base import ExecutorError, JobRequest, JobState, JobStatus
from executors.slurm import (
    RESOURCE_OPTIONS,
    SlurmCommands,
    SlurmExecutor,
    choose_driver,
    detect_pyslurm_version,
    detect_slurm_version,
    job_fields,
    parse_squeue_json,
    record_status,
    sbatch_job_options,
)
from executors.slurm_pyslurm import SUBMIT_ATTRIBUTES, PyslurmTracker, job_records, submit_description
from executors.slurm_tracker import SlurmTracker

REQ = JobRequest(
    job_key="run1/train/2",
    argv=("python3", "{script}"),
    env={"MODE": "fast"},
    workdir="/shared/work/run1/train.2",
    script="print(1)",
    timeout=150,
    resources={"partition": "gpu", "cpus": 4, "memory": "16G", "gres": "gpu:a100:1", "colour": "ignored"},
    labels={"run_id": "run1", "task_id": "train", "attempt": "2"},
)
LOG = "/shared/work/run1/train.2/.gatehouse/slurm.log"


def req_with(**kw: object) -> JobRequest:
    return JobRequest(**{**REQ.__dict__, **kw})


# --------------------------------------------------------------------------- JobRequest -> Slurm job


def test_one_field_set_feeds_both_drivers() -> None:
    fields = job_fields([REQ], log_path=LOG, defaults={"account": "proj7", "partition": "batch"})
    assert fields == {
        "name": "gatehouse-run1-train-2-f1182c391c",
        "comment": "gatehouse;run=run1;task=train;attempt=2;key=run1/train/2",
        "workdir": "/shared/work/run1/train.2",
        "output": LOG,
        "open_mode": "append",
        "requeue": False,
        "resources": {"partition": "gpu", "account": "proj7", "cpus": 4, "memory": 16384, "gres": "gpu:a100:1",
                      "time": 3},
        "array": None,
    }
    # The CLI driver: exactly what the executor hands sbatch.
    ex = SlurmExecutor(cluster="drv-fields", driver="cli", defaults={"account": "proj7", "partition": "batch"})
    argv, script = ex.build_sbatch([REQ], log_path=LOG)
    assert argv == ["sbatch", "--parsable", *sbatch_job_options(fields)]
    assert sbatch_job_options(fields) == [
        "--job-name=gatehouse-run1-train-2-f1182c391c",
        "--comment=gatehouse;run=run1;task=train;attempt=2;key=run1/train/2",
        "--chdir=/shared/work/run1/train.2",
        "--output=" + LOG,
        "--open-mode=append",
        "--no-requeue",
        "--partition=gpu", "--account=proj7", "--cpus-per-task=4", "--mem=16384M", "--gres=gpu:a100:1",
        "--time=3",
    ]  # fmt: skip
    # The pyslurm driver: the same values under JobSubmitDescription's names.
    description = submit_description(fields, script_path="/shared/work/run1/train.2/.gatehouse/batch.sh",
                                     path="/usr/bin:/bin")
    assert description == {
        "name": "gatehouse-run1-train-2-f1182c391c",
        "comment": "gatehouse;run=run1;task=train;attempt=2;key=run1/train/2",
        "working_directory": "/shared/work/run1/train.2",
        "standard_output": LOG,
        "log_files_open_mode": "append",
        "is_requeueable": False,
        "script": "/shared/work/run1/train.2/.gatehouse/batch.sh",
        "environment": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        "partitions": "gpu", "account": "proj7", "cpus_per_task": 4, "memory_per_node": 16384,
        "gres_per_node": "gpu:a100:1", "time_limit": 3,
    }  # fmt: skip
    assert script.startswith("#!/bin/sh\n")  # one batch script for both (pyslurm refuses one without #!)


def test_every_resource_reaches_pyslurm_under_a_name() -> None:
    assert set(SUBMIT_ATTRIBUTES) == set(RESOURCE_OPTIONS) | {"time"}
    every = {"partition": "p", "account": "a", "qos": "q", "cpus": 2, "memory": "1G", "gpus": 1, "gres": "gpu",
             "constraint": "avx2", "nodes": 1, "time": "1-00:00:00"}
    fields = job_fields([req_with(resources=every)], log_path=LOG, requeue=True)
    options = sbatch_job_options(fields)
    description = submit_description(fields, script_path="/s", path="/bin")
    assert "--requeue" in options and description["is_requeueable"] is True
    assert options[6:] == ["--partition=p", "--account=a", "--qos=q", "--cpus-per-task=2", "--mem=1024M",
                           "--gpus=1", "--gres=gpu", "--constraint=avx2", "--nodes=1", "--time=1-00:00:00"]
    assert {k: description[k] for k in SUBMIT_ATTRIBUTES.values()} == {
        "partitions": "p", "account": "a", "qos": "q", "cpus_per_task": 2, "memory_per_node": 1024, "gpus": 1,
        "gres_per_node": "gpu:1",  # sbatch reads "gpu" as one; pyslurm's parser wants the count written
        "constraints": "avx2", "nodes": 1, "time_limit": "1-00:00:00"}
    assert submit_description({**fields, "resources": {"gres": "gpu:a100:2,nic"}}, script_path="/s",
                              path="/bin")["gres_per_node"] == "gpu:a100:2,nic:1"


def test_an_array_is_one_submission_for_both_drivers() -> None:
    reqs = [req_with(job_key=f"run1/shard-{i}/1", workdir=f"/w/s{i}", labels={"run_id": "run1"}) for i in range(3)]
    fields = job_fields(reqs, log_path="/w/.slurm-x/%a.log")
    assert fields["array"] == "0-2" and fields["name"] == "gatehouse-run1-shard-0-1-2-a4e6e00e6b"
    assert fields["comment"] == "gatehouse;array=3;run=run1;key=run1/shard-0/1"
    assert sbatch_job_options(fields)[-1] == "--array=0-2"
    description = submit_description(fields, script_path="/w/.slurm-x/batch.sh", path="/bin")
    assert description["array"] == "0-2" and description["standard_output"] == "/w/.slurm-x/%a.log"
    assert "array" not in submit_description(job_fields([REQ], log_path=LOG), script_path="/s", path="/bin")


def test_bad_resources_are_refused_before_either_driver() -> None:
    for bad in ({"partition": "gpu --uid=0"}, {"memory": "lots"}, {"cpus": 0}, {"time": "soon"}):
        with pytest.raises(ExecutorError) as info:
            job_fields([req_with(resources=bad)], log_path=LOG)
        assert info.value.code == "bad_request"
    with pytest.raises(ExecutorError):
        job_fields([], log_path=LOG)


# --------------------------------------------------------------------------- Slurm state -> task state


def _squeue(**job: object) -> dict:
    base = {"job_id": 7, "array_job_id": 0, "array_task_id": None, "array_task_string": "", "job_state": "PENDING",
            "state_reason": "None", "exit_code": 0, "restart_cnt": 0, "nodes": "", "time_limit": 5,
            "name": "gatehouse-x", "comment": "gatehouse;key=x"}
    doc = {"meta": {}, "errors": [], "jobs": [{**base, **job}]}
    return parse_squeue_json(json.dumps(doc))


def _pyslurm(**job: object) -> dict:
    base = {"job_id": 7, "array_id": None, "array_task_id": None, "array_tasks_waiting": None, "state": "PENDING",
            "state_reason": "None", "exit_code": 0, "exit_code_signal": 0, "requeue_count": 0, "nodes": None,
            "time_limit": 5, "name": "gatehouse-x", "comment": "gatehouse;key=x"}
    return job_records(**{**base, **job})


# (squeue --json of Slurm 22.05, the same job as pyslurm.Job reports it, the task state both map to)
SAME_JOB = [
    ({"job_state": "COMPLETED", "nodes": "n1"}, {"state": "COMPLETED", "nodes": "n1"},
     JobStatus(JobState.SUCCEEDED, 0, "exit code 0")),
    ({"job_state": "FAILED", "exit_code": 3 << 8}, {"state": "FAILED", "exit_code": 3},
     JobStatus(JobState.FAILED, 3, "exit code 3")),
    ({"job_state": "CANCELLED", "exit_code": 9}, {"state": "CANCELLED", "exit_code_signal": 9},
     JobStatus(JobState.CANCELLED, -9, "cancelled in Slurm")),
    ({"job_state": "TIMEOUT"}, {"state": "TIMEOUT"},
     JobStatus(JobState.TIMED_OUT, 0, "killed by Slurm at its time limit of 5 min")),
    ({"job_state": "RUNNING", "nodes": "n1"}, {"state": "RUNNING", "nodes": "n1"},
     JobStatus(JobState.RUNNING, None, "running on n1")),
    ({"job_state": "PENDING", "restart_cnt": 2, "state_reason": "BeginTime"},
     {"state": "PENDING", "requeue_count": 2, "state_reason": "BeginTime"},
     JobStatus(JobState.PENDING, None, "requeued (2 time(s)), pending (BeginTime)")),
    ({"job_state": "NODE_FAIL", "nodes": "n1"}, {"state": "NODE_FAIL", "nodes": ["n1"]},
     JobStatus(JobState.FAILED, 0, "node failure on n1, exit code 0")),
    ({"job_state": "PREEMPTED"}, {"state": "PREEMPTED"},
     JobStatus(JobState.FAILED, 0, "preempted by a higher-priority job, exit code 0", interrupted=True)),
]


@pytest.mark.parametrize(("squeue", "pyslurm", "expected"), SAME_JOB)
def test_both_drivers_records_map_to_one_state(squeue: dict, pyslurm: dict, expected: JobStatus) -> None:
    from_cli, from_pyslurm = _squeue(**squeue)["7"], _pyslurm(**pyslurm)["7"]
    assert record_status(from_cli) == record_status(from_pyslurm) == expected
    assert {k: from_cli[k] for k in ("job_id", "state", "nodes", "name", "comment", "key")} == {
        k: from_pyslurm[k] for k in ("job_id", "state", "nodes", "name", "comment", "key")}


def test_array_records_are_keyed_alike() -> None:
    # The pending remainder of array 40 (elements 2-4) and its running element 1 (own id 42).
    cli = {**_squeue(job_id=40, array_job_id=40, array_task_string="2-4"),
           **_squeue(job_id=42, array_job_id=40, array_task_id=1, job_state="RUNNING", nodes="n1")}
    own = {**_pyslurm(job_id=40, array_id=40, array_tasks_waiting="2-4"),
           **_pyslurm(job_id=42, array_id=40, array_task_id=1, state="RUNNING", nodes="n1")}
    assert sorted(cli) == sorted(own) == ["40_1", "40_2", "40_3", "40_4"]
    assert {k: record_status(v) for k, v in cli.items()} == {k: record_status(v) for k, v in own.items()}
    assert record_status(own["40_3"]).state == JobState.PENDING and own["40_1"]["job_id"] == "42"


# --------------------------------------------------------------------------- which driver


def test_driver_choice_for_configurations_pyslurm_cannot_serve() -> None:
    chosen = choose_driver("auto", pyslurm_version="22.05.1", slurm_version="22.05.8",
                           unsupported="a login node over SSH")
    assert chosen == ("cli", "the Slurm command-line tools (pyslurm 22.05.1 cannot serve this cluster's "
                             "configuration: a login node over SSH)")
    with pytest.raises(ExecutorError) as info:
        choose_driver("pyslurm", pyslurm_version="22.05.1", slurm_version="22.05.8", unsupported="a per-tenant JWT")
    assert info.value.code == "driver_unavailable" and "a per-tenant JWT" in info.value.message
    # pyslurm is built in now: a matching, importable pyslurm is what auto picks.
    assert choose_driver("auto", pyslurm_version="25.11.2", slurm_version="25.11.0") == (
        "pyslurm", "pyslurm 25.11.2 matches Slurm 25.11.0")


@pytest.fixture
def no_pyslurm_here() -> str:
    """This machine's Slurm version; skips if pyslurm is importable (then the fallback is not what
    happens here)."""
    version = detect_pyslurm_version()
    if version is not None:
        pytest.skip(f"pyslurm {version} is importable here: the fallback needs a machine without it")
    slurm_version = detect_slurm_version(SlurmCommands())
    if slurm_version is None:
        pytest.skip("no Slurm here: `sinfo --version` does not answer")
    return slurm_version


def test_auto_uses_the_cli_here_and_logs_why(no_pyslurm_here: str, caplog: pytest.LogCaptureFixture) -> None:
    assert no_pyslurm_here.startswith("22.05")
    with caplog.at_level(logging.INFO, logger="executors.slurm"):
        ex = SlurmExecutor(cluster="drv-auto")
    assert (ex.driver, ex.driver_reason) == ("cli", "the Slurm command-line tools (pyslurm is not importable)")
    assert isinstance(ex.tracker, SlurmTracker) and ex._pyslurm is None
    logged = [r.getMessage() for r in caplog.records if r.name == "executors.slurm"]
    assert logged == ["Slurm cluster 'drv-auto': cli driver, the Slurm command-line tools (pyslurm is not importable)"]
    SlurmTracker._registry.pop("drv-auto", None)


def test_requesting_pyslurm_here_is_refused_and_sets_nothing_up(no_pyslurm_here: str) -> None:
    with pytest.raises(ExecutorError) as info:
        SlurmExecutor(cluster="drv-refused", driver="pyslurm")
    assert info.value.code == "driver_unavailable"
    assert info.value.message == "the pyslurm driver cannot be used: pyslurm is not importable"
    # Nothing was set up for the refused executor: no tracker, no rate-limit bucket.
    assert "drv-refused" not in SlurmTracker._registry and "drv-refused" not in PyslurmTracker._registry
    assert "drv-refused" not in slurm._buckets
