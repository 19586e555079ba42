"""``container.options``: passed to the runtime where allowed, refused before anything happens
otherwise; the exact commands built, and their effect with the real podman."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from executors.base import ExecutorError, JobRequest, JobState
from executors.local import LocalExecutor, container_argv
from executors.slurm import SlurmExecutor, container_command

from .conftest import IMAGE, containers

MakeReq = Callable[..., JobRequest]
REQ = JobRequest(job_key="r/t/1", argv=("sh", "-c", "true"), env={}, workdir="/srv/w/r-t-1",
                 container={"image": "img:1", "options": ["--read-only", "--network=none", "--memory=256m"]})


def test_local_options_go_before_the_image() -> None:
    argv = container_argv(REQ, "/usr/bin/podman")
    i = argv.index("img:1")
    assert argv[i - 5:i + 1] == ["--env-file", "/srv/w/r-t-1/.gatehouse/env", "--read-only", "--network=none",
                                 "--memory=256m", "img:1"]
    assert argv[i + 1:] == ["sh", "-c", "true"]


def test_slurm_options_follow_the_wrapper() -> None:
    req = JobRequest(**{**REQ.__dict__, "container": {"image": "img.sif", "options": ["--nv", "--containall"]}})
    assert container_command(req) == ["apptainer", "exec", "--bind", "/srv/w/r-t-1", "--pwd", "/srv/w/r-t-1",
                                      "--nv", "--containall", "img.sif", "sh", "-c", "true"]
    podman = ("podman", "run", "--rm", "-v", "{workdir}:{workdir}")
    assert container_command(REQ, podman)[5:9] == ["--read-only", "--network=none", "--memory=256m", "img:1"]
    with pytest.raises(ExecutorError) as info:  # apptainer options are not podman's, and the reverse
        container_command(REQ)
    assert info.value.code == "bad_request" and "'--read-only' is not allowed with apptainer" in info.value.message
    with pytest.raises(ExecutorError) as info:
        container_command(req, ("/site/bin/run-container", "{workdir}"))
    assert "wrapper 'run-container' takes no task options" in info.value.message
    assert container_command(JobRequest(**{**req.__dict__, "container": {"image": "i"}}), ("/site/x",))[:2] == \
        ["/site/x", "i"]


@pytest.mark.parametrize("option", [
    "--privileged", "-v", "--volume=/:/host", "--network=host", "--cap-add=SYS_ADMIN", "--device=/dev/sda",
    "--security-opt=seccomp=unconfined", "--user=0", "--read-only --privileged", "--memory=1g;id", "--pid=host",
])
def test_widening_options_are_refused_before_anything_is_staged(
    option: str, tmp_path: Path
) -> None:
    req = JobRequest(job_key="r/t/1", argv=("true",), env={}, workdir=str(tmp_path / "wd"),
                     container={"image": IMAGE, "runtime": "/usr/bin/podman", "options": [option]})
    with pytest.raises(ExecutorError) as info:
        LocalExecutor().submit(req)
    assert info.value.code == "bad_request" and repr(option) in info.value.message
    assert not os.path.exists(req.workdir)
    slurm = SlurmExecutor(cluster="options-refused", container_wrapper=("podman", "run", "--rm"))
    with pytest.raises(ExecutorError):
        slurm.submit(req)
    assert not os.path.exists(req.workdir)
    assert slurm.commands.calls == {}  # sbatch never ran


def test_options_must_be_a_list_of_strings() -> None:
    for bad in ("--read-only", [["--read-only"]], [1]):
        with pytest.raises(ExecutorError) as info:
            container_argv(JobRequest(**{**REQ.__dict__, "container": {"image": "i", "options": bad}}), "podman")
        assert info.value.message == "container options must be a list of strings"


def test_options_take_effect_in_podman(executor: LocalExecutor, make_req: MakeReq, podman: str) -> None:
    req = make_req(
        ["sh", "-c",
         "if touch /probe 2>/dev/null; then echo root-writable; else echo root-read-only; fi;"
         "echo ok > in-workdir.txt;"  # the work dir is still writable
         "grep -c : /proc/net/dev"],  # interfaces: lo only
        container={"image": IMAGE, "options": ["--read-only", "--network=none", "--pids-limit=64"]},
    )
    handle = executor.submit(req)
    status = executor.wait(handle, timeout=60)
    assert status.state is JobState.SUCCEEDED, Path(req.workdir, ".gatehouse", "stderr").read_text()
    assert Path(executor.collect(handle, req).stdout_path).read_text() == "root-read-only\n1\n"
    assert Path(req.workdir, "in-workdir.txt").read_text() == "ok\n"
    assert containers(podman, run_id=req.labels["run_id"]) == []
