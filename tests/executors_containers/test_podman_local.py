"""The ``local`` executor with a real container runtime: podman running the local busybox image.

Each test runs the exact command :func:`executors.local.container_argv` builds, through
:meth:`LocalExecutor.submit`/``wait``/``collect``, and looks at what podman did.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from executors.base import ExecutorError, JobRequest, JobState, OutputRequest
from executors.local import LocalExecutor, container_argv, container_name

from .conftest import IMAGE, containers

MakeReq = Callable[..., JobRequest]


def test_the_task_runs_inside_the_container_and_its_output_is_collected(
    executor: LocalExecutor, make_req: MakeReq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEHOUSE_TEST_WORKER_SECRET", "hunter2")
    req = make_req(
        ["sh", "{script}"],
        script=(
            "test ! -e /etc/os-release || { echo 'this is the host'; exit 90; }\n"  # the image has no /etc/os-release
            "test \"$(readlink /bin/sh)\" = busybox || exit 91\n"
            "echo \"greeting=$GREETING\" > result.txt\n"
            "env | sort > env.txt\n"
            "pwd > pwd.txt\n"
            "echo to-stdout; echo to-stderr >&2\n"
        ),
        env={"GREETING": "hello from the task"},
        outputs=(OutputRequest(name="result", path="result.txt"), OutputRequest(name="env", path="env.txt")),
    )
    handle = executor.submit(req)
    assert handle.data["container_name"] == container_name(req)
    assert handle.data["runtime"].endswith("/podman")
    status = executor.wait(handle, timeout=60)
    stderr = Path(req.workdir, ".gatehouse", "stderr").read_text()
    assert (status.state, status.exit_code) == (JobState.SUCCEEDED, 0), stderr

    collected = executor.collect(handle, req)
    assert collected.missing == ()
    assert {o.name for o in collected.outputs} == {"result", "env"}
    workdir = Path(req.workdir)
    assert (workdir / "result.txt").read_text() == "greeting=hello from the task\n"
    assert (workdir / "pwd.txt").read_text() == f"{req.workdir}\n"  # -w: the same path inside and out
    assert Path(collected.stdout_path).read_text() == "to-stdout\n"
    assert "to-stderr" in Path(collected.stderr_path).read_text()

    env = dict(line.split("=", 1) for line in (workdir / "env.txt").read_text().splitlines() if "=" in line)
    # what the executor intends: the task's variables, its labels, HOME = work dir, the image's PATH
    assert env["GREETING"] == "hello from the task"
    assert env["GATEHOUSE_JOB_KEY"] == req.job_key
    assert env["GATEHOUSE_RUN_ID"] == req.labels["run_id"]
    assert env["HOME"] == req.workdir
    assert env["PATH"] == "/bin"  # from the image (ENV PATH=/bin), not the worker's
    # ... and nothing of the worker's environment
    assert "GATEHOUSE_TEST_WORKER_SECRET" not in env and "hunter2" not in (workdir / "env.txt").read_text()
    # --rm: nothing left behind
    assert containers(handle.data["runtime"], run_id=req.labels["run_id"]) == []


def test_a_failing_command_fails_with_its_exit_code(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["sh", "-c", "echo about to fail >&2; exit 7"])
    handle = executor.submit(req)
    status = executor.wait(handle, timeout=60)
    assert (status.state, status.exit_code) == (JobState.FAILED, 7)
    assert "about to fail" in Path(executor.collect(handle, req).stderr_path).read_text()


def test_a_missing_program_in_the_image_fails_the_task(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["python3", "-c", "print(1)"])  # the image has no python3
    status = executor.wait(executor.submit(req), timeout=60)
    assert status.state is JobState.FAILED
    assert status.exit_code == 127  # podman: the command cannot be found in the container


def test_an_unknown_image_fails_the_task_with_podmans_error(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["true"], container={"image": "localhost/gatehouse-no-such-image:1", "options": []})
    status = executor.wait(executor.submit(req), timeout=120)
    assert status.state is JobState.FAILED and status.exit_code == 125  # podman's own failure, not the task's
    assert "gatehouse-no-such-image" in Path(req.workdir, ".gatehouse", "stderr").read_text()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_timeout_and_cancel_kill_and_remove_the_container(
    executor: LocalExecutor, make_req: MakeReq, podman: str, how: str
) -> None:
    # `sleep` as the container's PID 1 ignores SIGTERM (no handler): only a kill stops it.
    req = make_req(["sh", "-c", "echo started > started.txt; exec sleep 300"])
    handle = executor.submit(req)
    name = handle.data["container_name"]
    deadline = time.monotonic() + 60
    while not Path(req.workdir, "started.txt").exists():  # it really runs in its container
        assert time.monotonic() < deadline, Path(req.workdir, ".gatehouse", "stderr").read_text()
        time.sleep(0.1)
    assert containers(podman, run_id=req.labels["run_id"]) == [name]

    t0 = time.monotonic()
    if how == "timeout":
        status = executor.wait(handle, timeout=1.0)
        assert status.state is JobState.TIMED_OUT
    else:
        calls = iter(range(1000))
        status = executor.wait(handle, timeout=None, should_cancel=lambda: next(calls) >= 2, interval=0.2)
        assert status.state is JobState.CANCELLED
    elapsed = time.monotonic() - t0
    assert containers(podman, run_id=req.labels["run_id"]) == []  # stopped and removed
    assert elapsed < 1.0 + executor.kill_grace + 8, f"took {elapsed:.1f}s to stop"
    assert not subprocess.run(["pgrep", "-f", f"conmon.*{name}"], capture_output=True).stdout


def test_no_runtime_is_a_clear_error_and_nothing_runs(
    executor: LocalExecutor, make_req: MakeReq, podman: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With podman and docker off the worker's PATH, the task is refused before anything exists."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    req = make_req(["sh", "-c", "touch ran"])
    with pytest.raises(ExecutorError) as info:
        executor.submit(req)
    assert info.value.code == "no_container_runtime"
    assert "needs a container runtime (podman or docker)" in info.value.message
    assert "none is installed on host" in info.value.message
    assert not os.path.exists(req.workdir)  # nothing staged, so nothing could run
    assert executor._jobs == {}
    monkeypatch.undo()
    assert containers(podman, run_id=req.labels["run_id"]) == []


def test_the_exact_command_is_what_podman_ran(executor: LocalExecutor, make_req: MakeReq, podman: str) -> None:
    """The container podman started carries the name, labels, mount and work dir of the argv built."""
    req = make_req(["sh", "-c", "exec sleep 300"])
    argv = container_argv(req, podman)
    handle = executor.submit(req)
    try:
        name = handle.data["container_name"]
        deadline = time.monotonic() + 60
        while name not in containers(podman, run_id=req.labels["run_id"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        fmt = ("{{.Config.WorkingDir}}|{{range .Mounts}}{{.Source}}:{{.Destination}}{{end}}|{{.ImageName}}|"
               "{{.Config.Labels}}")
        out = subprocess.run([podman, "inspect", "--format", fmt, name], capture_output=True, text=True,
                             check=True).stdout.strip()
        workdir, mounts, image, labels = out.split("|")
        assert workdir == req.workdir
        assert mounts == f"{req.workdir}:{req.workdir}"
        assert image == IMAGE
        for key, value in req.labels.items():
            assert f"gatehouse.{key}:{value}" in labels
        assert argv[argv.index(IMAGE) + 1:] == ["sh", "-c", "exec sleep 300"]
    finally:
        executor.cancel(handle)
    assert containers(podman, run_id=req.labels["run_id"]) == []


def test_the_exact_remove_and_runtime_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from executors.local import _runtime_env, container_rm_argv

    assert container_rm_argv("/usr/bin/podman", "gatehouse-x") == ["/usr/bin/podman", "rm", "-f", "--time", "0",
                                                                   "gatehouse-x"]
    assert container_rm_argv("/usr/local/bin/docker", "gatehouse-x") == ["/usr/local/bin/docker", "rm", "-f",
                                                                         "gatehouse-x"]
    monkeypatch.setenv("GATEHOUSE_TEST_WORKER_SECRET", "hunter2")
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/site/containers.conf")
    env = _runtime_env("/usr/local/bin:/usr/bin:/bin")
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"  # netavark needs iptables
    assert env["CONTAINERS_CONF"] == "/etc/site/containers.conf"
    assert "GATEHOUSE_TEST_WORKER_SECRET" not in env
    assert _runtime_env("/opt/bin:/usr/sbin")["PATH"] == "/opt/bin:/usr/sbin:/usr/local/sbin:/sbin"
