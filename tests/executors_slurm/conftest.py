"""Fixtures for the ``slurm`` executor tests: a real single-node Slurm cluster on this machine.

``make test`` starts it (``deploy/test-services.sh`` calls ``deploy/test-slurm.sh``). When it is
not up, the session tries that script once; the live tests skip, naming what is missing, only if
Slurm still cannot be reached. The argv and parser tests need no cluster.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executors.base import JobHandle, JobRequest, JobStatus
from executors.slurm import SlurmExecutor
from executors.slurm_tracker import SlurmTracker

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "deploy" / "test-slurm.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the single-node Slurm cluster of deploy/test-slurm.sh")


def _node_state() -> str:
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=False).stdout.strip()
    out = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                         timeout=20, check=False)
    return (out.stdout.strip().splitlines() or [out.stderr.strip() or "no answer"])[0]


def _cluster_problem() -> str | None:
    """None when Slurm takes jobs here, else what is missing."""
    for tool in ("sbatch", "squeue", "scancel", "scontrol", "sinfo"):
        if shutil.which(tool) is None:
            return f"the Slurm client tool {tool!r} is not installed"
    state = _node_state()
    if state.rstrip("*~#") not in ("idle", "mixed", "allocated", "completing"):
        return f"the Slurm node is not ready (sinfo: {state})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Make sure the cluster is up (running deploy/test-slurm.sh once if needed)."""
    problem = _cluster_problem()
    if problem is not None and SETUP_SCRIPT.exists():
        subprocess.run([str(SETUP_SCRIPT)], capture_output=True, timeout=600, check=False)
        problem = _cluster_problem()
    if problem is not None:
        pytest.skip(f"no Slurm cluster: {problem} (deploy/test-slurm.sh could not start one)")
    return "ready"


_clusters = itertools.count(1)


@pytest.fixture
def make_executor(slurm_cluster: str) -> Iterator[Callable[..., SlurmExecutor]]:
    """Executors on the live cluster, each under its own cluster name (so its tracker and rate
    limit are its own). Every job they submitted is cancelled at the end of the test."""
    built: list[SlurmExecutor] = []
    submitted: list[tuple[SlurmExecutor, JobHandle]] = []

    def make(**config: Any) -> SlurmExecutor:
        config.setdefault("cluster", f"test-{next(_clusters)}")
        config.setdefault("poll_interval", 0.3)
        config.setdefault("command_timeout", 15)
        config.setdefault("submit_rate", 100)
        config.setdefault("submit_burst", 100)
        ex = SlurmExecutor(**config)
        original_submit, original_array = ex.submit, ex.submit_array

        def submit(req: JobRequest) -> JobHandle:
            handle = original_submit(req)
            submitted.append((ex, handle))
            return handle

        def submit_array(reqs: list[JobRequest]) -> list[JobHandle]:
            handles = original_array(reqs)
            submitted.extend((ex, h) for h in handles)
            return handles

        ex.submit, ex.submit_array = submit, submit_array  # type: ignore[method-assign]
        built.append(ex)
        return ex

    yield make
    for ex, handle in submitted:
        try:
            ex.cancel(handle)
        except Exception:  # noqa: BLE001 - best effort cleanup of a live cluster
            pass
    for ex in built:
        SlurmTracker._registry.pop(ex.cluster, None)


_keys = itertools.count(1)


@pytest.fixture
def make_req(tmp_path: Path) -> Callable[..., JobRequest]:
    """A JobRequest with a fresh work dir under tmp_path (override anything by keyword)."""

    def make(script: str = "", **kw: Any) -> JobRequest:
        n = next(_keys)
        kw.setdefault("job_key", f"run-{n}/task-{n}/1")
        kw.setdefault("argv", ("/bin/sh", "{script}"))
        kw.setdefault("env", {})
        kw.setdefault("workdir", str(tmp_path / f"wd{n}"))
        kw.setdefault("labels", {"run_id": f"run-{n}", "task_id": f"task-{n}", "attempt": "1"})
        kw.setdefault("timeout", 120)
        return JobRequest(script=script or None, **kw)

    return make


def wait_all(ex: SlurmExecutor, handles: list[JobHandle], *, timeout: float = 60,
             until: Callable[[JobStatus], bool] = lambda s: s.finished) -> dict[str, JobStatus]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = ex.poll_many(handles)
        if all(until(statuses[h.external_id]) for h in handles):
            return statuses
        assert time.monotonic() < deadline, f"jobs did not get there in {timeout}s: {statuses}"
        time.sleep(0.2)


def read(path: str) -> str:
    return Path(path).read_text()
