"""The local executor's process lifecycle: real subprocesses, checked through /proc."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.executors.executor_testlib import proc_alive, wait_for

from executors.base import ExecutorError, JobHandle, JobRequest, JobState
from executors.local import SAFE_PATH, LocalExecutor

MakeReq = Callable[..., JobRequest]
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def read(path: str) -> str:
    return Path(path).read_text()


def child_pid(req: JobRequest) -> int:
    """The pid a job's shell wrote to child.pid (waits for it, bounded)."""
    path = Path(req.workdir, "child.pid")
    assert wait_for(lambda: path.exists() and path.read_text().strip() != "", 10), "child.pid never appeared"
    return int(path.read_text())


# ----------------------------------------------------------------------------- exit statuses


def test_success_captures_stdout_and_stderr(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["sh", "-c", "echo hello; echo oops >&2"])
    handle = executor.submit(req)
    status = executor.wait(handle, timeout=10)
    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0 and status.finished
    collected = executor.collect(handle, req)
    assert read(collected.stdout_path) == "hello\n"
    assert read(collected.stderr_path) == "oops\n"
    assert collected.stdout_path == os.path.join(req.workdir, ".gatehouse", "stdout")


def test_handle_describes_the_process(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["true"])
    handle = executor.submit(req)
    data = handle.data
    assert handle.backend == "local"
    assert handle.external_id == f"{data['host']}:{data['pid']}"
    assert data["pgid"] == data["pid"]
    assert data["workdir"] == req.workdir
    assert isinstance(data["started_at"], float)
    assert isinstance(data["start_time_ticks"], int)
    json.dumps(dict(data))  # stored in the database
    executor.wait(handle, timeout=10)


def test_nonzero_exit_is_failed(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sh", "-c", "exit 3"]))
    status = executor.wait(handle, timeout=10)
    assert (status.state, status.exit_code, status.reason) == (JobState.FAILED, 3, "exit code 3")


def test_killed_by_signal_is_failed(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sh", "-c", "kill -9 $$"]))
    status = executor.wait(handle, timeout=10)
    assert status.state is JobState.FAILED
    assert status.exit_code == -9
    assert status.reason.startswith("killed by signal 9")


def test_completion_is_noticed_without_waiting_for_the_interval(executor: LocalExecutor, make_req: MakeReq) -> None:
    beats: list[int] = []
    handle = executor.submit(make_req(["true"]))
    started = time.monotonic()
    status = executor.wait(handle, timeout=60, heartbeat=lambda: beats.append(1), interval=30)
    assert status.state is JobState.SUCCEEDED
    assert time.monotonic() - started < 10  # far below the 30 s interval
    assert beats == []


def test_spawn_failure(executor: LocalExecutor, make_req: MakeReq) -> None:
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["/nonexistent/gatehouse-binary"]))
    assert info.value.code == "spawn_failed"
    assert "/nonexistent/gatehouse-binary" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"argv": ()}, "argv is empty"),
        ({"argv": ("cat", "{script}")}, "no script"),
        ({"argv": ("true",), "env": {"BAD=NAME": "x"}}, "invalid environment variable name"),
        ({"argv": ("true",), "workdir": "relative/dir"}, "absolute"),
    ],
)
def test_bad_requests_are_refused_before_anything_happens(
    executor: LocalExecutor, make_req: MakeReq, kwargs: dict, fragment: str
) -> None:
    req = make_req(**kwargs)
    with pytest.raises(ExecutorError) as info:
        executor.submit(req)
    assert info.value.code == "bad_request"
    assert fragment in info.value.message
    assert not os.path.exists(req.workdir)


# ----------------------------------------------------------------------------- timeout, cancel


def test_timeout_kills_the_whole_process_group(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["sh", "-c", "sleep 60 & echo $! > child.pid; wait"], timeout=1.0)
    handle = executor.submit(req)
    child = child_pid(req)
    assert proc_alive(child)
    started = time.monotonic()
    status = executor.wait(handle, timeout=req.timeout, interval=0.1)
    elapsed = time.monotonic() - started
    assert status.state is JobState.TIMED_OUT
    assert status.reason == "timed out after 1s"
    assert 0.9 <= elapsed < 10
    assert wait_for(lambda: not proc_alive(child), 5), "the shell's background sleep survived the timeout"
    assert not proc_alive(handle.data["pid"])


def test_timeout_escalates_to_sigkill(executor: LocalExecutor, make_req: MakeReq) -> None:
    # Both the shell and its child ignore SIGTERM: only the SIGKILL after the grace stops them.
    req = make_req(["sh", "-c", "trap '' TERM; sleep 60 & echo $! > child.pid; wait; wait"])
    handle = executor.submit(req)
    child = child_pid(req)
    started = time.monotonic()
    status = executor.wait(handle, timeout=0.5, interval=0.1)
    elapsed = time.monotonic() - started
    assert status.state is JobState.TIMED_OUT
    assert status.exit_code == -signal.SIGKILL
    assert elapsed >= 0.5 + executor.kill_grace * 0.9
    assert wait_for(lambda: not proc_alive(child), 5)


def test_should_cancel_stops_the_job(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["sh", "-c", "sleep 60 & echo $! > child.pid; wait"])
    handle = executor.submit(req)
    child = child_pid(req)
    calls = {"heartbeat": 0, "should_cancel": 0}

    def heartbeat() -> None:
        calls["heartbeat"] += 1

    def should_cancel() -> bool:
        calls["should_cancel"] += 1
        return calls["should_cancel"] >= 3

    status = executor.wait(handle, timeout=30, heartbeat=heartbeat, should_cancel=should_cancel, interval=0.05)
    assert status.state is JobState.CANCELLED
    assert calls == {"heartbeat": 3, "should_cancel": 3}
    assert wait_for(lambda: not proc_alive(child), 5)
    assert not proc_alive(handle.data["pid"])
    # settled for good
    assert executor.poll_many([handle])[handle.external_id] == status


def test_a_failing_heartbeat_kills_the_job(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sleep", "60"]))

    def heartbeat() -> None:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        executor.wait(handle, timeout=30, heartbeat=heartbeat, interval=0.05)
    assert not proc_alive(handle.data["pid"])
    status = executor.poll_many([handle])[handle.external_id]
    assert status.state is JobState.CANCELLED
    assert "database went away" in status.reason


# ----------------------------------------------------------------------------- environment


def test_environment_is_clean(
    executor: LocalExecutor, make_req: MakeReq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEHOUSE_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    req = make_req(
        ["env", "-0"],  # prints its environment exactly (a shell or Python would add variables)
        env={"FOO": "bar", "LANG": "en_GB.UTF-8"},
        labels={"run_id": "run-7", "task_id": "fetch"},
    )
    handle = executor.submit(req)
    assert executor.wait(handle, timeout=20).state is JobState.SUCCEEDED
    stdout = read(executor.collect(handle, req).stdout_path)
    assert "hunter2" not in stdout and "hunter3" not in stdout
    env = dict(item.split("=", 1) for item in stdout.split("\0") if item)
    assert env == {
        "PATH": SAFE_PATH,
        "HOME": req.workdir,
        "LANG": "en_GB.UTF-8",  # req.env wins over the defaults
        "FOO": "bar",
        "GATEHOUSE_RUN_ID": "run-7",
        "GATEHOUSE_TASK_ID": "fetch",
        "GATEHOUSE_JOB_KEY": req.job_key,
    }


def test_workdir_is_private_and_is_the_cwd(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["pwd"])
    handle = executor.submit(req)
    executor.wait(handle, timeout=10)
    assert os.stat(req.workdir).st_mode & 0o777 == 0o700
    assert read(executor.collect(handle, req).stdout_path).strip() == os.path.realpath(req.workdir)


# ----------------------------------------------------------------------------- script mode


def test_script_mode(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["/bin/sh", "{script}", "two words"], script='echo "from script: $1"\necho "$0"\n')
    handle = executor.submit(req)
    assert executor.wait(handle, timeout=10).state is JobState.SUCCEEDED
    script = os.path.join(req.workdir, ".gatehouse", "script")
    assert read(executor.collect(handle, req).stdout_path) == f"from script: two words\n{script}\n"
    assert read(script) == req.script
    assert os.stat(script).st_mode & 0o777 == 0o700


def test_script_is_executable_and_argv_defaults_to_sh(executor: LocalExecutor, make_req: MakeReq) -> None:
    direct = make_req(["{script}"], script="#!/bin/sh\necho direct\n")
    default = make_req([], script="echo default; exit 4\n")
    h1, h2 = executor.submit(direct), executor.submit(default)
    assert executor.wait(h1, timeout=10).state is JobState.SUCCEEDED
    assert read(executor.collect(h1, direct).stdout_path) == "direct\n"
    assert executor.wait(h2, timeout=10).exit_code == 4
    assert read(executor.collect(h2, default).stdout_path) == "default\n"


# ----------------------------------------------------------------------------- poll_many


def test_poll_many_reports_running_and_finished_jobs_in_one_call(executor: LocalExecutor, make_req: MakeReq) -> None:
    ok = executor.submit(make_req(["true"]))
    bad = executor.submit(make_req(["sh", "-c", "exit 2"]))
    running = executor.submit(make_req(["sleep", "30"]))
    handles = [ok, bad, running]

    assert wait_for(lambda: executor.poll_many([ok, bad])[bad.external_id].finished
                    and executor.poll_many([ok])[ok.external_id].finished, 10)
    result = executor.poll_many(handles)
    assert set(result) == {h.external_id for h in handles}
    assert result[ok.external_id].state is JobState.SUCCEEDED
    assert (result[bad.external_id].state, result[bad.external_id].exit_code) == (JobState.FAILED, 2)
    assert result[running.external_id].state is JobState.RUNNING

    executor.cancel(running)
    assert executor.poll_many([running])[running.external_id].state is JobState.CANCELLED
    assert not proc_alive(running.data["pid"])
    # cancel is idempotent and leaves finished jobs alone
    executor.cancel(running)
    executor.cancel(ok)
    assert executor.poll_many([ok])[ok.external_id].state is JobState.SUCCEEDED
    # wait on a job already settled by poll_many returns the same status
    assert executor.wait(bad, timeout=1) == result[bad.external_id]


def test_finished_jobs_are_forgotten_oldest_first_and_running_ones_never(make_req: MakeReq) -> None:
    ex = LocalExecutor(kill_grace=0.5, max_finished=4)
    running = ex.submit(make_req(["sleep", "30"]))
    try:
        done = []
        for _ in range(7):
            handle = ex.submit(make_req(["true"]))
            assert ex.wait(handle, timeout=10).state is JobState.SUCCEEDED
            done.append(handle)
            assert len(ex._jobs) <= 5  # the limit, and the submission that went over it
        known = set(ex._jobs)
        assert running.external_id in known  # never forgotten while it runs
        assert {h.external_id for h in done[-2:]} <= known  # the newest finished ones are kept
        assert not {h.external_id for h in done[:3]} & known  # the oldest are forgotten
        # A kept job still reports its own status (an owned job, not a foreign one).
        assert ex.poll_many([done[-1]])[done[-1].external_id].state is JobState.SUCCEEDED
    finally:
        ex.cancel(running)
    assert not proc_alive(running.data["pid"])


def test_poll_many_of_another_backend_is_unknown(executor: LocalExecutor) -> None:
    status = executor.poll_many([JobHandle("slurm", "123", {})])["123"]
    assert status.state is JobState.UNKNOWN


# ----------------------------------------------------------------------------- restart: foreign handles


def _reload(handle: JobHandle) -> JobHandle:
    """What a restarted worker gets back from the database."""
    return JobHandle.from_dict(json.loads(json.dumps(handle.to_dict())))


def test_foreign_handle_is_running_then_lost(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sleep", "30"]))
    fresh = LocalExecutor(kill_grace=0.5)
    stored = _reload(handle)
    assert fresh.poll_many([stored])[stored.external_id].state is JobState.RUNNING

    executor.cancel(handle)  # the owner kills and reaps it
    status = fresh.poll_many([stored])[stored.external_id]
    assert status.state is JobState.LOST
    assert "exit status is unknown" in status.reason
    fresh.cancel(stored)  # no error: nothing to do


def test_foreign_cancel_kills_the_job(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["sh", "-c", "sleep 60 & echo $! > child.pid; wait"])
    handle = executor.submit(req)
    child = child_pid(req)
    LocalExecutor(kill_grace=0.5).cancel(_reload(handle))
    status = executor.wait(handle, timeout=10)
    assert status.state is JobState.FAILED and status.exit_code == -signal.SIGTERM
    assert wait_for(lambda: not proc_alive(child), 5)


def test_a_reused_pid_is_never_touched(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sleep", "30"]))
    data = dict(handle.data)
    data["start_time_ticks"] = data["start_time_ticks"] - 1  # "another process with the same pid"
    impostor = JobHandle("local", handle.external_id, data)
    fresh = LocalExecutor(kill_grace=0.5)
    assert fresh.poll_many([impostor])[handle.external_id].state is JobState.LOST
    fresh.cancel(impostor)
    assert proc_alive(handle.data["pid"])
    # the owner does not mistake the impostor for its own job either
    assert executor.poll_many([impostor])[handle.external_id].state is JobState.LOST
    executor.cancel(impostor)
    assert executor.poll_many([handle])[handle.external_id].state is JobState.RUNNING


def test_foreign_handle_from_another_host_or_boot(make_req: MakeReq) -> None:
    fresh = LocalExecutor()
    other_host = JobHandle("local", "elsewhere:1", {"pid": 1, "pgid": 1, "host": "elsewhere", "start_time_ticks": 1})
    assert fresh.poll_many([other_host])["elsewhere:1"].state is JobState.UNKNOWN
    rebooted = JobHandle(
        "local", f"{fresh.host}:1", {"pid": 1, "pgid": 1, "host": fresh.host, "boot_id": "old", "start_time_ticks": 1}
    )
    status = fresh.poll_many([rebooted])[rebooted.external_id]
    assert status.state is JobState.LOST and "rebooted" in status.reason


def test_wait_on_a_foreign_handle_polls_and_times_out(executor: LocalExecutor, make_req: MakeReq) -> None:
    handle = executor.submit(make_req(["sleep", "30"]))
    fresh = LocalExecutor(kill_grace=0.5)
    status = fresh.wait(_reload(handle), timeout=0.3, interval=0.05)
    assert status.state is JobState.TIMED_OUT
    # the base class cancelled it through the foreign path
    assert executor.wait(handle, timeout=10).exit_code == -signal.SIGTERM


# ----------------------------------------------------------------------------- parent death


def _start_helper(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, int]:
    helper = subprocess.Popen(
        [sys.executable, str(HERE / "pdeathsig_child.py"), str(workdir), *extra],
        stdout=subprocess.PIPE,
        env={"PATH": SAFE_PATH, "PYTHONPATH": str(REPO_ROOT)},
        cwd=str(REPO_ROOT),
        start_new_session=True,
    )
    assert helper.stdout is not None
    ready, _, _ = select.select([helper.stdout], [], [], 20)
    if not ready:
        helper.kill()
        pytest.fail("helper did not report its job")
    data = json.loads(helper.stdout.readline())
    return helper, data["pid"], data["start_time_ticks"]


def _kill_leftover(pid: int, ticks: int) -> None:
    if proc_alive(pid, ticks):
        os.kill(pid, signal.SIGKILL)


def _program(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return ""


@pytest.mark.parametrize("mechanism", [[], ["--preexec"]], ids=["setpriv", "preexec_fn"])
def test_task_dies_with_the_worker(tmp_path: Path, mechanism: list[str]) -> None:
    helper, pid, ticks = _start_helper(tmp_path / "wd", *mechanism)
    try:
        assert proc_alive(pid, ticks)
        # The guarantee holds once the task's own program runs: setpriv sets the parent-death
        # signal just before it execs it (executors/local.py says so), a moment a loaded machine
        # can stretch past the helper's report.
        assert wait_for(lambda: os.path.basename(_program(pid)) == "sleep", timeout=10), _program(pid)
        helper.kill()
        helper.wait(10)
        assert wait_for(lambda: not proc_alive(pid, ticks), timeout=5), "the task outlived its worker"
    finally:
        helper.kill()
        _kill_leftover(pid, ticks)


def test_without_pdeathsig_the_task_would_survive(tmp_path: Path) -> None:
    """Control for the test above: it can tell a surviving orphan from a killed one."""
    helper, pid, ticks = _start_helper(tmp_path / "wd", "--no-pdeathsig")
    try:
        helper.kill()
        helper.wait(10)
        time.sleep(0.3)
        assert proc_alive(pid, ticks)
    finally:
        _kill_leftover(pid, ticks)


def test_leftover_processes_are_killed_when_the_job_ends(executor: LocalExecutor, make_req: MakeReq) -> None:
    # The shell exits at once, leaving a background process in the job's process group.
    req = make_req(["sh", "-c", "sleep 60 & echo $! > child.pid"])
    handle = executor.submit(req)
    assert executor.wait(handle, timeout=10).state is JobState.SUCCEEDED
    child = child_pid(req)
    assert wait_for(lambda: not proc_alive(child), 5), "a background process outlived its job"


def test_the_package_does_not_import_django() -> None:
    code = (
        "import sys, executors, executors.local, executors.registry; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'celery')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), check=True, env={"PATH": SAFE_PATH})
