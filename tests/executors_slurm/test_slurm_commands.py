"""The exact commands the ``slurm`` executor builds, how Slurm's answers map to job states, the
driver choice and the rate limit. Pure: no cluster needed (the live tests are in
test_slurm_cluster.py)."""

from __future__ import annotations

import json

import pytest

from executors.base import ExecutorError, JobRequest, JobState
from executors.slurm import (
    SlurmCommands,
    SlurmExecutor,
    SshTarget,
    TokenBucket,
    batch_script,
    choose_driver,
    container_command,
    parse_scontrol_jobs,
    parse_squeue_json,
    record_status,
    sbatch_options,
)

REQ = JobRequest(
    job_key="run1/train/2",
    argv=("python3", "{script}", "--epochs", "3"),
    env={"MODE": "fast lane"},
    workdir="/shared/work/run1/train.2",
    script="print(1)",
    timeout=150,
    resources={"partition": "gpu", "cpus": 4, "memory": "16G", "gres": "gpu:a100:1", "colour": "ignored",
               "fast": True},
    labels={"run_id": "run1", "task_id": "train", "attempt": "2"},
)


def req_with(**kw: object) -> JobRequest:
    return JobRequest(**{**REQ.__dict__, **kw})


def test_sbatch_argv_from_a_task_spec() -> None:
    ex = SlurmExecutor(cluster="argv-1", defaults={"account": "proj7", "partition": "batch"})
    argv, _script = ex.build_sbatch([REQ], log_path="/shared/work/run1/train.2/.gatehouse/slurm.log")
    assert argv == [
        "sbatch", "--parsable",
        "--job-name=gatehouse-run1-train-2-f1182c391c",
        "--comment=gatehouse;run=run1;task=train;attempt=2;key=run1/train/2",
        "--chdir=/shared/work/run1/train.2",
        "--output=/shared/work/run1/train.2/.gatehouse/slurm.log",
        "--open-mode=append",
        "--no-requeue",
        "--partition=gpu",
        "--account=proj7",
        "--cpus-per-task=4",
        "--mem=16384M",
        "--gres=gpu:a100:1",
        "--time=3",
    ]  # fmt: skip


def test_resource_forms_and_refusals() -> None:
    # The spec's forms: memory in bytes or with a 1024-based unit, durations, fractional CPUs.
    assert sbatch_options({"memory": 512 * 1024**2, "time": "1-00:00:00", "nodes": 2}, 30) == [
        "--mem=512M", "--nodes=2", "--time=1-00:00:00"]
    assert sbatch_options({"memory": "1.5GiB", "cpus": 0.5, "gpus": 2, "time": "1h30m"}, 30) == [
        "--cpus-per-task=1", "--mem=1536M", "--gpus=2", "--time=90"]
    assert sbatch_options({"memory": "100 k", "time": "90s"}, None) == ["--mem=1M", "--time=2"]
    assert sbatch_options({"time": "45:00"}, None) == ["--time=45:00"]  # Slurm's own form passes
    assert sbatch_options({}, 59.5) == ["--time=1"]  # Slurm counts whole minutes: round up
    assert sbatch_options({}, None, defaults={"qos": "low"}) == ["--qos=low"]
    refused = ({"memory": "lots"}, {"memory": 0}, {"cpus": 0}, {"cpus": "4"}, {"partition": "gpu --uid=0"},
               {"gres": "gpu\n#SBATCH --uid=0"}, {"time": "soon"})
    for bad in refused:
        with pytest.raises(ExecutorError) as info:
            sbatch_options(bad, None)
        assert info.value.code == "bad_request"


def test_array_argv_and_script() -> None:
    ex = SlurmExecutor(cluster="argv-2")
    reqs = [req_with(job_key=f"run1/shard-{i}/1", workdir=f"/w/s{i}", labels={"run_id": "run1"}) for i in range(3)]
    argv, script = ex.build_sbatch(reqs, log_path="/w/.slurm-x/%a.log")
    assert argv[:4] == ["sbatch", "--parsable", "--job-name=gatehouse-run1-shard-0-1-2-a4e6e00e6b",
                        "--comment=gatehouse;array=3;run=run1;key=run1/shard-0/1"]
    assert argv[-1] == "--array=0-2"
    assert 'case "${SLURM_ARRAY_TASK_ID:-}" in' in script
    for i in range(3):
        assert f"{i})\n  cd /w/s{i} || exit 111\n  exec >>/w/s{i}/.gatehouse/stdout 2>>/w/s{i}/.gatehouse/stderr\n" in script


def test_batch_script_runs_the_task_under_a_clean_environment() -> None:
    assert batch_script([REQ]) == (
        "#!/bin/sh\n"
        "# Gatehouse batch job: run1/train/2\n"
        "cd /shared/work/run1/train.2 || exit 111\n"
        "exec >>/shared/work/run1/train.2/.gatehouse/stdout 2>>/shared/work/run1/train.2/.gatehouse/stderr\n"
        "exec env -i GATEHOUSE_ATTEMPT=2 GATEHOUSE_JOB_KEY=run1/train/2 GATEHOUSE_RUN_ID=run1 "
        "GATEHOUSE_TASK_ID=train HOME=/shared/work/run1/train.2 LANG=C.UTF-8 "
        "'MODE=fast lane' PATH=/usr/local/bin:/usr/bin:/bin "
        '"GATEHOUSE_SLURM_JOB_ID=${SLURM_JOB_ID:-}" '
        "python3 /shared/work/run1/train.2/.gatehouse/script --epochs 3\n"
    )


def test_container_task_runs_under_apptainer_exec() -> None:
    req = req_with(container={"image": "docker://python:3.12-slim"})
    assert container_command(req) == [
        "apptainer", "exec", "--bind", "/shared/work/run1/train.2", "--pwd", "/shared/work/run1/train.2",
        "docker://python:3.12-slim",
        "python3", "/shared/work/run1/train.2/.gatehouse/script", "--epochs", "3",
    ]  # fmt: skip
    custom = ("singularity", "exec", "--nv", "-B", "{workdir}")
    assert container_command(req, custom)[:6] == [
        "singularity", "exec", "--nv", "-B", "/shared/work/run1/train.2", "docker://python:3.12-slim"]
    ex = SlurmExecutor(cluster="argv-3", container_wrapper=custom)
    _argv, script = ex.build_sbatch([req], log_path="/l")
    assert script.splitlines()[-1].endswith(
        "singularity exec --nv -B /shared/work/run1/train.2 docker://python:3.12-slim "
        "python3 /shared/work/run1/train.2/.gatehouse/script --epochs 3")
    with pytest.raises(ExecutorError):
        container_command(req_with(container={"image": "--bind=/:/host"}))


def test_squeue_scancel_scontrol_argv() -> None:
    cmds = SlurmCommands(bin_dir="/opt/slurm/bin")
    assert cmds.squeue_argv(["12", "15"]) == ["/opt/slurm/bin/squeue", "--json", "--states=all", "--jobs=12,15"]
    assert cmds.scancel_argv("15_3") == ["/opt/slurm/bin/scancel", "15_3"]
    assert cmds.scontrol_show_argv("15_3") == ["/opt/slurm/bin/scontrol", "show", "job", "-o", "15_3"]
    assert cmds.sbatch_argv(["--time=1"]) == ["/opt/slurm/bin/sbatch", "--parsable", "--time=1"]
    assert set(cmds.env()) == {"PATH", "LANG"}  # nothing of the worker's environment


def test_ssh_argv_checks_the_host_key_strictly() -> None:
    target = SshTarget(host="login1.hpc.example.org", known_hosts="/etc/gatehouse/known_hosts", user="svc-gh",
                       port=2222, identity_file="/etc/gatehouse/id_ed25519")
    cmds = SlurmCommands(ssh=target)
    assert cmds.full_argv(cmds.scancel_argv("42")) == [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/etc/gatehouse/known_hosts",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=3",
        "-T",
        "-p", "2222",
        "-i", "/etc/gatehouse/id_ed25519", "-o", "IdentitiesOnly=yes",
        "-l", "svc-gh",
        "--", "login1.hpc.example.org", "scancel 42",
    ]  # fmt: skip
    # The remote side is a shell: every argument is quoted for it.
    assert cmds.full_argv(["sbatch", "--comment=a b;c"])[-1] == "sbatch '--comment=a b;c'"
    for bad in ({"host": "-oProxyCommand=x", "known_hosts": "/k"}, {"host": "h", "known_hosts": ""},
                {"host": "h", "known_hosts": "relative/file"}):
        with pytest.raises(ExecutorError):
            SshTarget(**bad)  # type: ignore[arg-type]
    ex = SlurmExecutor(cluster="argv-ssh", ssh={"host": "login1", "known_hosts": "/k"})
    assert ex.commands.full_argv(ex.commands.squeue_argv([]))[-2:] == ["login1", "squeue --json --states=all"]


def test_driver_choice() -> None:
    here = choose_driver("auto", pyslurm_version=None, slurm_version="22.05.8")
    assert here == ("cli", "the Slurm command-line tools (pyslurm is not importable)")
    mismatch = choose_driver("auto", pyslurm_version="25.11.0", slurm_version="22.05.8")
    assert mismatch[0] == "cli" and "pyslurm 25.11.0 does not match Slurm 22.05.8" in mismatch[1]
    both = frozenset({"cli", "pyslurm"})
    assert choose_driver("auto", pyslurm_version="22.05.1", slurm_version="22.05.8", implemented=both)[0] == "pyslurm"
    none_built = choose_driver("auto", pyslurm_version="22.05.1", slurm_version="22.05.8", implemented=frozenset({"cli"}))
    assert none_built[0] == "cli" and "no pyslurm driver is built in" in none_built[1]
    assert choose_driver("cli", pyslurm_version="22.05.1", slurm_version="22.05.8", implemented=both)[0] == "cli"
    with pytest.raises(ExecutorError) as info:
        choose_driver("pyslurm", pyslurm_version="25.11.0", slurm_version="22.05.8", implemented=both)
    assert info.value.code == "driver_unavailable"
    # On this machine pyslurm is not installed: the executor says so.
    assert SlurmExecutor(cluster="argv-drv").driver_reason == here[1]
    with pytest.raises(ExecutorError):
        SlurmExecutor(cluster="argv-drv2", driver="pyslurm")


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.acquire(timeout=0) for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back at 2/s
    assert bucket.acquire(timeout=0) is True
    assert bucket.acquire(timeout=0) is False
    now[0] += 10  # never more than the burst
    assert sum(bucket.acquire(timeout=0) for _ in range(5)) == 3


def _squeue(*jobs: dict) -> str:
    base = {"array_job_id": 0, "array_task_id": None, "array_task_string": "", "state_reason": "None",
            "exit_code": 0, "restart_cnt": 0, "nodes": "n1", "time_limit": 5, "name": "x", "comment": ""}
    return json.dumps({"meta": {}, "errors": [], "jobs": [{**base, **j} for j in jobs]})


def test_states_map_to_job_states_with_reasons() -> None:
    # The shapes squeue --json of Slurm 22.05 (openapi/v0.0.38) prints; exit_code is the wait status.
    records = parse_squeue_json(_squeue(
        {"job_id": 1, "job_state": "COMPLETED"},
        {"job_id": 2, "job_state": "FAILED", "exit_code": 3 << 8, "state_reason": "NonZeroExitCode"},
        {"job_id": 3, "job_state": "TIMEOUT", "exit_code": 15, "state_reason": "TimeLimit"},
        {"job_id": 4, "job_state": "CANCELLED", "exit_code": 15},
        {"job_id": 5, "job_state": "NODE_FAIL", "nodes": "c17", "exit_code": 9},
        {"job_id": 6, "job_state": "PREEMPTED", "exit_code": 15},
        {"job_id": 7, "job_state": "PENDING", "restart_cnt": 1, "state_reason": "BeginTime"},
        {"job_id": 8, "job_state": "REQUEUED"},
        {"job_id": 9, "job_state": "OUT_OF_MEMORY", "exit_code": 9},
        {"job_id": 10, "job_state": "RUNNING"},
        {"job_id": 11, "job_state": "COMPLETED", "exit_code": 2 << 8},
        {"job_id": 12, "job_state": ["PENDING", "REQUEUED"], "restart_cnt": 2},  # later versions: a list
        {"job_id": 20, "array_job_id": 20, "array_task_string": "2-3", "job_state": "PENDING"},
        {"job_id": 21, "array_job_id": 20, "array_task_id": 0, "job_state": "RUNNING"},
    ))
    got = {k: record_status(r) for k, r in records.items()}
    assert (got["1"].state, got["1"].exit_code) == (JobState.SUCCEEDED, 0)
    assert (got["2"].state, got["2"].exit_code, got["2"].reason) == (
        JobState.FAILED, 3, "exit code 3 (NonZeroExitCode)")
    assert (got["3"].state, got["3"].reason) == (JobState.TIMED_OUT, "killed by Slurm at its time limit of 5 min")
    assert (got["4"].state, got["4"].exit_code) == (JobState.CANCELLED, -15)
    assert (got["5"].state, got["5"].reason) == (JobState.FAILED, "node failure on c17, killed by signal 9 (SIGKILL)")
    assert got["6"].state == JobState.FAILED and got["6"].reason.startswith("preempted")
    assert (got["7"].state, got["7"].reason) == (JobState.PENDING, "requeued (1 time(s)), pending (BeginTime)")
    assert got["8"].state == JobState.PENDING and got["8"].reason.startswith("requeued")
    assert got["9"].state == JobState.FAILED and got["9"].reason.startswith("out of memory")
    assert got["10"].state == JobState.RUNNING
    assert (got["11"].state, got["11"].exit_code) == (JobState.FAILED, 2)
    assert got["12"].state == JobState.PENDING and "2 time(s)" in got["12"].reason
    assert {k: got[k].state for k in ("20_0", "20_2", "20_3")} == {
        "20_0": JobState.RUNNING, "20_2": JobState.PENDING, "20_3": JobState.PENDING}


def test_later_json_shapes_parse() -> None:
    # squeue --json of Slurm 23.02 and later: numbers wrapped, states and exit codes structured.
    doc = {"jobs": [
        {"job_id": {"set": True, "number": 41}, "array_job_id": {"set": True, "number": 0},
         "array_task_id": {"set": False, "number": 0}, "job_state": ["FAILED"], "state_reason": "NonZeroExitCode",
         "exit_code": {"status": ["EXITED"], "return_code": {"set": True, "number": 7},
                       "signal": {"id": {"set": False, "number": 0}, "name": ""}},
         "restart_cnt": {"set": True, "number": 0}, "time_limit": {"set": True, "number": 10}},
        {"job_id": {"set": True, "number": 43}, "array_job_id": {"set": True, "number": 42},
         "array_task_id": {"set": True, "number": 1}, "job_state": ["CANCELLED"],
         "exit_code": {"status": ["SIGNALED"], "return_code": {"set": True, "number": 0},
                       "signal": {"id": {"set": True, "number": 9}, "name": "KILL"}}},
    ]}
    got = {k: record_status(r) for k, r in parse_squeue_json(json.dumps(doc)).items()}
    assert (got["41"].state, got["41"].exit_code) == (JobState.FAILED, 7)
    assert (got["42_1"].state, got["42_1"].exit_code) == (JobState.CANCELLED, -9)


def test_scontrol_oneliner_parses() -> None:
    # A line as scontrol show job -o prints it on Slurm 22.05 (shortened).
    line = ("JobId=31 ArrayJobId=30 ArrayTaskId=1 JobName=gatehouse-x UserId=root(0) JobState=TIMEOUT "
            "Reason=TimeLimit Restarts=0 ExitCode=0:15 TimeLimit=00:01:00 NodeList=vm "
            "Comment=gatehouse;run=r1;key=r1/t/1 StdErr=/w/.gatehouse/slurm.log Power=\n"
            "JobId=30 ArrayJobId=30 ArrayTaskId=2-3 JobName=gatehouse-x JobState=PENDING Reason=Resources "
            "ExitCode=0:0 Restarts=0\n")
    records = parse_scontrol_jobs(line)
    assert set(records) == {"30_1", "30_2", "30_3"}
    assert records["30_1"]["comment"] == "gatehouse;run=r1;key=r1/t/1"
    status = record_status(records["30_1"])
    assert (status.state, status.exit_code) == (JobState.TIMED_OUT, -15)
    assert record_status(records["30_3"]).state == JobState.PENDING
