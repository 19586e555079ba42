"""Container requests: the exact command built, and a missing runtime. No real runtime needed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from executors import local
from executors.base import ExecutorError, JobRequest, JobState
from executors.local import LocalExecutor, container_argv, container_env_file, find_container_runtime

MakeReq = Callable[..., JobRequest]

REQ = JobRequest(
    job_key="run1/task/1",
    argv=("python", "{script}", "--n", "3"),
    env={"A": "1"},
    workdir="/srv/work/run1-task-1",
    script="print(1)",
    container={"image": "docker.io/library/python:3.12-slim"},
    labels={"task_id": "task", "run_id": "run1"},
)


def with_container(**container: object) -> JobRequest:
    return JobRequest(**{**REQ.__dict__, "container": {"image": "alpine:3.20", **container}})


def test_container_argv_podman() -> None:
    assert container_argv(REQ, "/usr/bin/podman") == [
        "/usr/bin/podman", "run", "--rm",
        "--name", "gatehouse-run1-task-1-ecc7ce804d",
        "--label", "gatehouse.run_id=run1",
        "--label", "gatehouse.task_id=task",
        "-v", "/srv/work/run1-task-1:/srv/work/run1-task-1",
        "-w", "/srv/work/run1-task-1",
        "--env-file", "/srv/work/run1-task-1/.gatehouse/env",
        "docker.io/library/python:3.12-slim",
        "python", "/srv/work/run1-task-1/.gatehouse/script", "--n", "3",
    ]  # fmt: skip


def test_container_argv_docker_runs_as_the_worker_user() -> None:
    assert container_argv(REQ, "/usr/local/bin/docker") == [
        "/usr/local/bin/docker", "run", "--rm",
        "--name", "gatehouse-run1-task-1-ecc7ce804d",
        "--label", "gatehouse.run_id=run1",
        "--label", "gatehouse.task_id=task",
        "--user", f"{os.getuid()}:{os.getgid()}",
        "-v", "/srv/work/run1-task-1:/srv/work/run1-task-1",
        "-w", "/srv/work/run1-task-1",
        "--env-file", "/srv/work/run1-task-1/.gatehouse/env",
        "docker.io/library/python:3.12-slim",
        "python", "/srv/work/run1-task-1/.gatehouse/script", "--n", "3",
    ]  # fmt: skip


def test_container_user_can_be_set_or_dropped() -> None:
    assert container_argv(with_container(user="1000:1000"), "/usr/bin/podman")[9:11] == ["--user", "1000:1000"]
    assert "--user" not in container_argv(with_container(user=None), "/usr/bin/docker")


def test_container_without_argv_uses_the_image_command() -> None:
    req = JobRequest("k", (), {}, "/w", container={"image": "alpine"})
    assert container_argv(req, "/usr/bin/podman")[-1] == "alpine"


@pytest.mark.parametrize(
    "req",
    [
        with_container(image=""),
        with_container(image="--privileged"),
        JobRequest(**{**REQ.__dict__, "workdir": "/srv/a:b"}),
    ],
)
def test_container_argv_refuses_bad_requests(req: JobRequest) -> None:
    with pytest.raises(ExecutorError) as info:
        container_argv(req, "/usr/bin/podman")
    assert info.value.code == "bad_request"


def test_container_env_file() -> None:
    assert container_env_file(REQ) == (
        "A=1\n"
        "GATEHOUSE_JOB_KEY=run1/task/1\n"
        "GATEHOUSE_RUN_ID=run1\n"
        "GATEHOUSE_TASK_ID=task\n"
        "HOME=/srv/work/run1-task-1\n"
        "LANG=C.UTF-8\n"
    )
    with pytest.raises(ExecutorError):
        container_env_file(JobRequest(**{**REQ.__dict__, "env": {"A": "two\nlines"}}))


def test_missing_runtime(executor: LocalExecutor, make_req: MakeReq, monkeypatch: pytest.MonkeyPatch) -> None:
    req = make_req(["true"], container={"image": "alpine", "runtime": "gatehouse-no-such-runtime"})
    with pytest.raises(ExecutorError) as info:
        executor.submit(req)
    assert info.value.code == "no_container_runtime"
    assert "gatehouse-no-such-runtime" in info.value.message
    assert not os.path.exists(req.workdir)

    monkeypatch.setattr(local.shutil, "which", lambda name: None)
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], container={"image": "alpine"}))
    assert info.value.code == "no_container_runtime"
    assert "podman or docker" in info.value.message


def test_runtime_lookup_order(monkeypatch: pytest.MonkeyPatch) -> None:
    available = {"docker": "/usr/bin/docker", "podman": "/usr/bin/podman"}
    monkeypatch.setattr(local.shutil, "which", available.get)
    assert find_container_runtime({"image": "x"}) == "/usr/bin/podman"
    assert find_container_runtime({"image": "x", "runtime": "docker"}) == "/usr/bin/docker"
    del available["podman"]
    assert find_container_runtime({"image": "x"}) == "/usr/bin/docker"


def test_submit_runs_the_built_command(
    executor: LocalExecutor, make_req: MakeReq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake runtime that prints its arguments and environment stands in for docker."""
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\necho ---\nenv\n')
    fake.chmod(0o755)
    monkeypatch.setenv("GATEHOUSE_TEST_SECRET", "hunter2")
    req = make_req(
        ["sh", "{script}"],
        script="echo hi\n",
        env={"TOKEN": "for-the-task"},
        labels={"run_id": "r9"},
        container={"image": "alpine:3.20", "runtime": str(fake)},
    )
    handle = executor.submit(req)
    assert handle.data["container_name"] == local.container_name(req)
    assert executor.wait(handle, timeout=10).state is JobState.SUCCEEDED
    args, _, env = Path(executor.collect(handle, req).stdout_path).read_text().partition("---\n")
    assert args.splitlines() == container_argv(req, str(fake))[1:]
    assert Path(req.workdir, ".gatehouse", "env").read_text() == container_env_file(req)
    assert "TOKEN=for-the-task" in Path(req.workdir, ".gatehouse", "env").read_text()
    # the runtime CLI itself gets neither the worker's secrets nor the task's variables
    assert "hunter2" not in env and "for-the-task" not in env
