"""The ``slurm`` executor against the real single-node cluster of deploy/test-slurm.sh.

Nothing stands between the executor and Slurm: every test runs sbatch, squeue, scontrol and
scancel for real. The time-limit job is submitted when the module starts (Slurm's smallest time
limit is one minute and it checks limits every 30 s) and checked by the last test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executors import registry
from executors.base import (
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    OutputRequest,
    StagedInput,
)
from executors.slurm import SlurmExecutor
from executors.slurm_tracker import SlurmTracker

from .conftest import REPO_ROOT, SETUP_SCRIPT, read, wait_all

pytestmark = pytest.mark.slurm

MakeExecutor = Callable[..., SlurmExecutor]
MakeReq = Callable[..., JobRequest]




# --------------------------------------------------------------------------- time limit (started first)


@pytest.fixture(scope="module")
def time_limited(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    ex = SlurmExecutor(cluster="test-time-limit", poll_interval=1, command_timeout=15)
    req = JobRequest(job_key="run-tl/slow/1", argv=("/bin/sh", "{script}"), env={},
                     workdir=str(tmp_path_factory.mktemp("tl") / "wd"), script="echo started; sleep 300",
                     timeout=5, labels={"run_id": "run-tl", "task_id": "slow", "attempt": "1"})
    handle = ex.submit(req)
    yield ex, req, handle
    ex.cancel(handle)
    SlurmTracker._registry.pop(ex.cluster, None)


@pytest.fixture(autouse=True)
def _start_time_limited_job_first(time_limited: tuple) -> None:
    """Every test of this module depends on it, so it is submitted before the first one runs."""


# --------------------------------------------------------------------------- one job


def test_submit_collects_output_and_exit_code(
    make_executor: MakeExecutor, make_req: MakeReq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "worker-secret")  # the worker's environment must not reach the job
    ex = make_executor()
    source = tmp_path / "input.txt"
    source.write_text("input-bytes\n")
    req = make_req(
        'echo "hello from $GATEHOUSE_TASK_ID job $GATEHOUSE_SLURM_JOB_ID"; echo warning >&2\n'
        'cat in/data.txt > result.txt; echo "SECRET=${SECRET:-unset}" >> result.txt',
        outputs=(OutputRequest("result", "result.txt", "text/plain"), OutputRequest("absent", "nope.txt")),
        inputs=(StagedInput("in/data.txt", str(source)),),
    )
    handle = ex.submit(req)
    assert handle.backend == "slurm" and handle.external_id.isdigit()  # the id is known at once
    status = ex.wait(handle, timeout=60, interval=0.2)
    assert (status.state, status.exit_code, status.reason) == (JobState.SUCCEEDED, 0, "exit code 0")
    collected = ex.collect(handle, req)
    assert read(collected.stdout_path) == f"hello from {req.labels['task_id']} job {handle.external_id}\n"
    assert read(collected.stderr_path) == "warning\n"
    assert [(o.name, o.size) for o in collected.outputs] == [("result", len("input-bytes\nSECRET=unset\n"))]
    assert read(collected.outputs[0].path) == "input-bytes\nSECRET=unset\n"  # nothing of the worker's env
    assert collected.missing == ("absent",)
    # Slurm knows the job under its tags.
    shown = subprocess.run(["scontrol", "show", "job", "-o", handle.external_id], capture_output=True, text=True)
    assert "JobName=gatehouse-run-" in shown.stdout
    assert f"Comment=gatehouse;run={req.labels['run_id']};task={req.labels['task_id']};attempt=1;key={req.job_key}" \
        in shown.stdout


def test_a_failing_job_reports_its_exit_code(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    req = make_req("echo before failing; echo broken >&2; exit 3")
    handle = ex.submit(req)
    status = ex.wait(handle, timeout=60, interval=0.2)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert status.reason.startswith("exit code 3")
    collected = ex.collect(handle, req)
    assert read(collected.stdout_path) == "before failing\n" and read(collected.stderr_path) == "broken\n"


def test_cancel(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    req = make_req("echo started; sleep 60; echo never")
    handle = ex.submit(req)
    wait_all(ex, [handle], until=lambda s: s.state == JobState.RUNNING)
    ex.cancel(handle)
    status = wait_all(ex, [handle])[handle.external_id]
    assert status.state == JobState.CANCELLED and status.reason.startswith("cancelled in Slurm")
    ex.cancel(handle)  # idempotent once finished
    collected = ex.collect(handle, req)
    assert read(collected.stdout_path) == "started\n"
    assert f"JOB {handle.external_id} ON" in read(collected.stderr_path) and "CANCELLED" in read(collected.stderr_path)


def test_wait_cancels_when_the_engine_says_so(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    handle = ex.submit(make_req("sleep 60"))
    beats: list[float] = []
    status = ex.wait(handle, timeout=60, interval=0.2, heartbeat=lambda: beats.append(time.monotonic()),
                     should_cancel=lambda: len(beats) >= 3)
    assert status.state == JobState.CANCELLED and len(beats) == 3
    assert wait_all(ex, [handle])[handle.external_id].state == JobState.CANCELLED


def test_a_refused_submission_is_an_executor_error(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    with pytest.raises(ExecutorError) as info:
        ex.submit(make_req("true", resources={"partition": "no-such-partition"}))
    assert info.value.code == "submit_failed" and "partition" in info.value.message.lower()


# --------------------------------------------------------------------------- arrays, rate, polling


def test_array_fan_out(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    reqs = [
        make_req(f'echo "shard {i} of $GATEHOUSE_RUN_ID"; echo {i * i} > square.txt; sleep 1; exit {3 if i == 3 else 0}',
                 job_key=f"run-fan/shard-{i}/1", labels={"run_id": "run-fan", "task_id": f"shard-{i}"},
                 outputs=(OutputRequest("square", "square.txt"),))
        for i in range(5)
    ]
    handles = ex.submit_array(reqs)
    assert ex.commands.calls["sbatch"] == 1
    array_id = handles[0].data["job_id"]
    assert [h.external_id for h in handles] == [f"{array_id}_{i}" for i in range(5)]
    statuses = wait_all(ex, handles)
    assert [(statuses[h.external_id].state, statuses[h.external_id].exit_code) for h in handles] == [
        (JobState.SUCCEEDED, 0)] * 3 + [(JobState.FAILED, 3), (JobState.SUCCEEDED, 0)]
    for i, (handle, req) in enumerate(zip(handles, reqs)):
        collected = ex.collect(handle, req)
        assert read(collected.stdout_path) == f"shard {i} of run-fan\n"
        assert read(collected.outputs[0].path) == f"{i * i}\n"


def test_submission_rate_limit(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor(submit_rate=2, submit_burst=1)
    started = time.monotonic()
    handles = [ex.submit(make_req("true")) for _ in range(3)]
    elapsed = time.monotonic() - started
    assert elapsed >= 0.9, f"3 submissions at 2/s with a burst of 1 took only {elapsed:.2f}s"
    assert ex.commands.calls["sbatch"] == 3
    assert {s.state for s in wait_all(ex, handles).values()} == {JobState.SUCCEEDED}


def test_one_query_per_interval_for_many_jobs_and_callers(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor(poll_interval=1.0)
    handles = ex.submit_array([make_req("sleep 1") for _ in range(12)])
    handles += [ex.submit(make_req("sleep 1")) for _ in range(3)]
    other = make_executor(cluster=ex.cluster)  # another instance in the process shares the tracker
    assert other.tracker is ex.tracker
    before = ex.tracker.queries
    calls = [0]
    stop = time.monotonic() + 3.5

    def caller(executor: SlurmExecutor) -> None:
        while time.monotonic() < stop:
            statuses = executor.poll_many(handles)
            assert set(statuses) == {h.external_id for h in handles}
            calls[0] += 1
            time.sleep(0.01)

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(ex if i % 2 else other,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    queries = ex.tracker.queries - before
    assert calls[0] > 100
    assert 0 < queries <= int(elapsed / 1.0) + 1, f"{queries} queries in {elapsed:.1f}s for {calls[0]} calls"
    assert ex.commands.calls.get("squeue", 0) + other.commands.calls.get("squeue", 0) == ex.tracker.queries
    assert {s.state for s in wait_all(ex, handles).values()} == {JobState.SUCCEEDED}


# --------------------------------------------------------------------------- restarts and reattach


def test_reattach_from_a_new_process(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor()
    req = make_req("sleep 2; echo finished; exit 5")
    handle = ex.submit(req)
    program = (
        "import json, sys\n"
        "from executors.base import JobHandle, JobRequest\n"
        "from executors.slurm import SlurmExecutor\n"
        "raw = json.loads(sys.argv[1])\n"
        "ex = SlurmExecutor(cluster=raw['cluster'], poll_interval=0.3)\n"
        "handle = JobHandle.from_dict(raw['handle'])\n"
        "first = ex.reattach(handle)\n"
        "found = ex.lookup(JobRequest(**raw['req']))\n"
        "final = ex.wait(handle, timeout=60, interval=0.2)\n"
        "print(json.dumps({'first': first.state.value, 'found': found.external_id if found else None,\n"
        "                  'final': [final.state.value, final.exit_code], 'sbatch': ex.commands.calls.get('sbatch', 0)}))\n"
    )
    arg = json.dumps({"cluster": ex.cluster, "handle": json.loads(json.dumps(handle.to_dict())),
                      "req": {"job_key": req.job_key, "argv": list(req.argv), "env": {}, "workdir": req.workdir}})
    out = subprocess.run([sys.executable, "-c", program, arg], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["first"] in ("pending", "running")
    assert answer["found"] == handle.external_id  # found by its job name, not submitted again
    assert answer["final"] == ["failed", 5] and answer["sbatch"] == 0
    assert read(ex.collect(handle, req).stdout_path) == "finished\n"


def test_a_job_slurm_does_not_know_is_lost(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    status = ex.reattach(JobHandle("slurm", "987654", {"cluster": ex.cluster}))
    assert status.state == JobState.LOST and "no longer knows job 987654" in status.reason
    assert ex.tracker.confirmations == 1  # confirmed by scontrol show job, not guessed from squeue
    assert ex.poll_many([JobHandle("slurm", "1", {"cluster": "elsewhere"})])["1"].state == JobState.UNKNOWN


def _controller_up() -> bool:
    out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return "is UP" in out.stdout


def test_controller_restart_loses_nothing_and_resubmits_nothing(make_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = make_executor(command_timeout=5, max_backoff=2)
    reqs = [make_req(f"sleep 5; echo job {i} done") for i in range(3)]
    handles = [ex.submit(r) for r in reqs]
    ids = [h.external_id for h in handles]
    wait_all(ex, handles, until=lambda s: s.state == JobState.RUNNING)
    try:
        subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while _controller_up():
            assert time.monotonic() < deadline, "slurmctld did not stop"
            time.sleep(0.2)
        time.sleep(0.5)
        down = ex.tracker.statuses(ids, force=True)
        assert {s.state for s in down.values()} == {JobState.UNKNOWN}
        assert all("Slurm query failed" in s.reason for s in down.values())
        assert ex.tracker.failures >= 1
    finally:
        subprocess.run([str(SETUP_SCRIPT)], check=True, capture_output=True, timeout=300)
    assert _controller_up()
    final = wait_all(ex, handles, timeout=60)
    assert {final[i].state for i in ids} == {JobState.SUCCEEDED}
    assert ex.commands.calls["sbatch"] == 3  # nothing was submitted again
    for i, (handle, req) in enumerate(zip(handles, reqs)):
        assert handle.external_id == ids[i]
        assert read(ex.collect(handle, req).stdout_path) == f"job {i} done\n"
    assert ex.tracker.failures == 0


def test_registry_builds_the_slurm_backend(slurm_cluster: str) -> None:
    registry.clear_cache()
    ex = registry.get_executor("slurm", cluster="test-registry", partition="debug", poll_interval=2)
    assert isinstance(ex, SlurmExecutor) and ex.synchronous is False
    assert ex.defaults == {"partition": "debug"} and ex.tracker.poll_interval == 2
    assert registry.get_executor("slurm", cluster="test-registry", partition="debug", poll_interval=2) is ex
    registry.clear_cache()
    SlurmTracker._registry.pop("test-registry", None)


# --------------------------------------------------------------------------- last: the time limit


def test_time_limit_is_timed_out(time_limited: tuple) -> None:
    ex, req, handle = time_limited
    status = ex.wait(handle, timeout=req.timeout, interval=1)  # Slurm kills it 60-90 s after it started
    assert status.state == JobState.TIMED_OUT and status.reason == "killed by Slurm at its time limit of 1 min"
    collected = ex.collect(handle, req)
    assert read(collected.stdout_path) == "started\n"
    assert "DUE TO TIME LIMIT" in read(collected.stderr_path)
