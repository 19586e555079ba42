"""A ``container:`` task as a live Slurm job on the single-node cluster of deploy/test-slurm.sh.

Debian bookworm packages neither apptainer nor singularity, so the default wrapper
(``apptainer exec --bind W --pwd W``) is checked as the exact batch script built, and the live
job uses the configurable wrapper with podman, as a site without apptainer would set it:
``podman run --rm --env-host --network=none -v W:W -w W``. ``--env-host`` gives the container
the job's environment, which is exactly the task's (the script runs it under ``env -i``), as
apptainer does by default.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from executors.base import JobRequest, JobState, OutputRequest
from executors.slurm import SlurmExecutor
from executors.slurm_tracker import SlurmTracker
from tests.executors_slurm.conftest import _cluster_problem

from .conftest import IMAGE

PODMAN_WRAPPER = ("podman", "run", "--rm", "--env-host", "--network=none", "-v", "{workdir}:{workdir}",
                  "-w", "{workdir}", "--label", "gatehouse.slurm_workdir={workdir}")
_clusters = itertools.count(1)


@pytest.fixture
def slurm_podman(podman: str, tmp_path: Path):
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(f"no Slurm cluster: {problem} (deploy/test-slurm.sh starts one)")
    ex = SlurmExecutor(cluster=f"containers-{next(_clusters)}", poll_interval=0.3, command_timeout=15,
                       submit_rate=100, submit_burst=100, container_wrapper=PODMAN_WRAPPER)
    handles = []
    original = ex.submit
    ex.submit = lambda req: handles.append(original(req)) or handles[-1]  # type: ignore[method-assign]
    yield ex
    for handle in handles:
        ex.cancel(handle)
    SlurmTracker._registry.pop(ex.cluster, None)


def _req(tmp_path: Path, name: str, script: str, **kw) -> JobRequest:
    return JobRequest(job_key=f"ctr-slurm/{name}/1", argv=("/bin/sh", "{script}"), env=kw.pop("env", {}),
                      workdir=str(tmp_path / name), script=script, container={"image": IMAGE},
                      labels={"run_id": "ctr-slurm", "task_id": name, "attempt": "1"}, timeout=120, **kw)


def test_default_wrapper_is_apptainer_exec_in_the_exact_script(tmp_path: Path) -> None:
    req = _req(tmp_path, "apptainer", "echo hi\n", env={"MODE": "x"})
    ex = SlurmExecutor(cluster="containers-argv")
    _argv, script = ex.build_sbatch([req], log_path="/l")
    workdir = req.workdir
    assert script.splitlines()[-1] == (
        f"exec env -i GATEHOUSE_ATTEMPT=1 GATEHOUSE_JOB_KEY=ctr-slurm/apptainer/1 GATEHOUSE_RUN_ID=ctr-slurm "
        f"GATEHOUSE_TASK_ID=apptainer HOME={workdir} LANG=C.UTF-8 MODE=x PATH=/usr/local/bin:/usr/bin:/bin "
        f'"GATEHOUSE_SLURM_JOB_ID=${{SLURM_JOB_ID:-}}" '
        f"apptainer exec --bind {workdir} --pwd {workdir} {IMAGE} /bin/sh {workdir}/.gatehouse/script"
    )


def test_a_container_job_runs_on_slurm_with_the_tasks_environment(slurm_podman: SlurmExecutor, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_TEST_WORKER_SECRET", "hunter2")
    req = _req(tmp_path, "ok",
               "test ! -e /etc/os-release || exit 90\n"  # inside the image, not on the host
               'echo "mode=$MODE job=$GATEHOUSE_SLURM_JOB_ID secret=${GATEHOUSE_TEST_WORKER_SECRET:-unset}" > out.txt\n'
               "pwd\n",
               env={"MODE": "fast lane"}, outputs=(OutputRequest("out", "out.txt"),))
    _argv, script = slurm_podman.build_sbatch([req], log_path="/l")
    assert f"podman run --rm --env-host --network=none -v {req.workdir}:{req.workdir} -w {req.workdir}" in script
    handle = slurm_podman.submit(req)
    status = slurm_podman.wait(handle, timeout=120, interval=0.3)
    collected = slurm_podman.collect(handle, req)
    assert (status.state, status.exit_code) == (JobState.SUCCEEDED, 0), Path(collected.stderr_path).read_text()
    assert Path(req.workdir, "out.txt").read_text() == f"mode=fast lane job={handle.external_id} secret=unset\n"
    assert Path(collected.stdout_path).read_text() == f"{req.workdir}\n"
    assert [o.name for o in collected.outputs] == ["out"]
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label=gatehouse.slurm_workdir={req.workdir}"],
                          capture_output=True, text=True, check=True).stdout
    assert left == ""


def test_a_failing_container_job_reports_its_exit_code(slurm_podman: SlurmExecutor, tmp_path: Path) -> None:
    req = _req(tmp_path, "bad", "echo broken >&2; exit 5\n")
    handle = slurm_podman.submit(req)
    status = slurm_podman.wait(handle, timeout=120, interval=0.3)
    assert (status.state, status.exit_code) == (JobState.FAILED, 5)
    assert "broken" in Path(slurm_podman.collect(handle, req).stderr_path).read_text()
