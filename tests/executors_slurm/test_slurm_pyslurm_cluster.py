"""The ``slurm`` executor's pyslurm driver against the real cluster of deploy/test-slurm.sh.

These run where pyslurm is importable and built for the installed Slurm (same major.minor); they
use the same cluster fixtures as test_slurm_cluster.py, and nothing stands between the executor
and Slurm's C API. Elsewhere they are skipped with the reason: on the Debian bookworm test machine
Slurm is 22.05 and no pyslurm release on PyPI builds against it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from executors.base import ExecutorError, JobHandle, JobRequest, JobState, OutputRequest
from executors.slurm import SlurmCommands, SlurmExecutor, choose_driver, detect_pyslurm_version, detect_slurm_version
from executors.slurm_pyslurm import PyslurmTracker

from .conftest import read, wait_all


def _missing() -> str | None:
    """None when the pyslurm driver can run here, else exactly what is missing."""
    pyslurm_version = detect_pyslurm_version()
    slurm_version = detect_slurm_version(SlurmCommands())
    if pyslurm_version is None:
        return (f"pyslurm is not importable: no pyslurm release builds against Slurm {slurm_version or '(none found)'} "
                "(PyPI's are 25.11.x, which builds only against Slurm 25.11, and old ones for Slurm 17.11 and 18.08)")
    try:
        choose_driver("pyslurm", pyslurm_version=pyslurm_version, slurm_version=slurm_version)
    except ExecutorError as exc:
        return exc.message
    return None


MISSING = _missing()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

MakeExecutor = Callable[..., SlurmExecutor]
MakeReq = Callable[..., JobRequest]


@pytest.fixture
def pyslurm_executor(make_executor: MakeExecutor) -> Iterator[MakeExecutor]:
    """Executors on the pyslurm driver (the shared fixture cancels their jobs afterwards)."""

    def make(**config: object) -> SlurmExecutor:
        ex = make_executor(driver="pyslurm", **config)
        assert ex.driver == "pyslurm", ex.driver_reason
        return ex

    yield make
    PyslurmTracker.forget_all()




def test_submit_runs_the_task_and_tags_the_job(pyslurm_executor: MakeExecutor, make_req: MakeReq,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET", "worker-secret")  # the worker's environment must not reach the task
    ex = pyslurm_executor()
    req = make_req('echo "hello from $GATEHOUSE_TASK_ID job $GATEHOUSE_SLURM_JOB_ID"; echo warning >&2\n'
                   'echo "SECRET=${SECRET:-unset}" > result.txt',
                   outputs=(OutputRequest("result", "result.txt", "text/plain"),))
    handle = ex.submit(req)
    assert handle.external_id.isdigit() and ex._pyslurm.calls["submit"] == 1
    status = ex.wait(handle, timeout=60, interval=0.2)
    assert (status.state, status.exit_code, status.reason) == (JobState.SUCCEEDED, 0, "exit code 0")
    collected = ex.collect(handle, req)
    assert read(collected.stdout_path) == f"hello from {req.labels['task_id']} job {handle.external_id}\n"
    assert read(collected.stderr_path) == "warning\n"
    assert read(collected.outputs[0].path) == "SECRET=unset\n"
    assert "sbatch" not in ex.commands.calls and "squeue" not in ex.commands.calls  # no CLI on this path
    shown = subprocess.run(["scontrol", "show", "job", "-o", handle.external_id], capture_output=True, text=True)
    assert f"Comment=gatehouse;run={req.labels['run_id']};task={req.labels['task_id']};attempt=1;key={req.job_key}" \
        in shown.stdout


def test_a_failing_job_reports_its_exit_code(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor()
    handle = ex.submit(make_req("echo broken >&2; exit 3"))
    status = ex.wait(handle, timeout=60, interval=0.2)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)


def test_a_refused_submission_is_an_executor_error(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor()
    with pytest.raises(ExecutorError) as info:
        ex.submit(make_req("true", resources={"partition": "no-such-partition"}))
    assert info.value.code == "submit_failed"


def test_array_fan_out_is_one_submission(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor()
    reqs = [make_req(f'echo "shard {i}"; exit {3 if i == 2 else 0}', job_key=f"run-pfan/shard-{i}/1",
                     labels={"run_id": "run-pfan", "task_id": f"shard-{i}"}) for i in range(4)]
    handles = ex.submit_array(reqs)
    assert ex._pyslurm.calls["submit"] == 1
    array_id = handles[0].data["job_id"]
    assert [h.external_id for h in handles] == [f"{array_id}_{i}" for i in range(4)]
    statuses = wait_all(ex, handles)
    assert [(statuses[h.external_id].state, statuses[h.external_id].exit_code) for h in handles] == [
        (JobState.SUCCEEDED, 0), (JobState.SUCCEEDED, 0), (JobState.FAILED, 3), (JobState.SUCCEEDED, 0)]
    for i, (handle, req) in enumerate(zip(handles, reqs)):
        assert read(ex.collect(handle, req).stdout_path) == f"shard {i}\n"


def test_one_jobs_load_per_interval_for_all_jobs(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor(poll_interval=1.0)
    handles = ex.submit_array([make_req("sleep 1") for _ in range(8)])
    handles += [ex.submit(make_req("sleep 1")) for _ in range(3)]
    before_queries, before_loads = ex.tracker.queries, ex._pyslurm.calls.get("Jobs.load", 0)
    polls = 0
    stop = time.monotonic() + 3.5
    while time.monotonic() < stop:
        assert set(ex.poll_many(handles)) == {h.external_id for h in handles}
        polls += 1
        time.sleep(0.01)
    queries = ex.tracker.queries - before_queries
    assert polls > 50 and 1 <= queries <= 5, (polls, queries)
    assert ex._pyslurm.calls["Jobs.load"] - before_loads == queries  # one controller call per refresh
    assert {s.state for s in wait_all(ex, handles).values()} == {JobState.SUCCEEDED}


def test_cancel_a_job_and_an_array_element(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor()
    single = ex.submit(make_req("echo started; sleep 60"))
    wait_all(ex, [single], until=lambda s: s.state == JobState.RUNNING)
    ex.cancel(single)
    assert ex._pyslurm.calls["cancel"] == 1
    assert wait_all(ex, [single])[single.external_id].state == JobState.CANCELLED
    ex.cancel(single)  # idempotent once finished
    elements = ex.submit_array([make_req("sleep 2"), make_req("sleep 60")])
    ex.cancel(elements[1])
    statuses = wait_all(ex, elements)
    assert (statuses[elements[0].external_id].state, statuses[elements[1].external_id].state) == (
        JobState.SUCCEEDED, JobState.CANCELLED)


def test_lookup_finds_a_job_by_its_name(pyslurm_executor: MakeExecutor, make_req: MakeReq) -> None:
    ex = pyslurm_executor()
    req = make_req("sleep 5")
    handle = ex.submit(req)
    found = ex.lookup(req)
    assert found is not None and found.external_id == handle.external_id
    assert ex.lookup(make_req("true")) is None  # never submitted
