"""Fixtures for the live container tests: Debian's podman with a local busybox image.

``make test`` prepares them (``deploy/test-services.sh`` calls ``deploy/test-containers.sh``:
podman, the host's container settings and the image ``localhost/gatehouse-test:1``, built from a
local root filesystem without any registry). When podman cannot run that image here, the session
tries that script once; the live tests then skip with podman's own error.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executors.base import JobRequest
from executors.local import LocalExecutor

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "deploy" / "test-containers.sh"
IMAGE = "localhost/gatehouse-test:1"


def _podman_problem() -> str | None:
    """None when podman runs the test image here, else what is missing (podman's own words)."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman is not installed"
    try:
        out = subprocess.run([podman, "run", "--rm", IMAGE, "echo", "container-ok"], capture_output=True,
                             text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return f"podman run {IMAGE} did not finish within 120 s"
    if out.returncode != 0 or out.stdout.strip() != "container-ok":
        return f"podman cannot run {IMAGE}: {(out.stderr or out.stdout).strip()[:300]}"
    return None


@pytest.fixture(scope="session")
def podman() -> str:
    """The podman binary, once it has run the test image (running deploy/test-containers.sh
    once if needed)."""
    problem = _podman_problem()
    if problem is not None and SETUP_SCRIPT.exists():
        subprocess.run([str(SETUP_SCRIPT)], capture_output=True, timeout=900, check=False)
        problem = _podman_problem()
    if problem is not None:
        pytest.skip(f"no container runtime to test live: {problem} (deploy/test-containers.sh could not fix it)")
    return str(shutil.which("podman"))


def containers(podman: str, **labels: str) -> list[str]:
    """Names of every container (running or not) carrying these labels."""
    argv = [podman, "ps", "-a", "--format", "{{.Names}}"]
    for key, value in labels.items():
        argv += ["--filter", f"label=gatehouse.{key}={value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


_counter = itertools.count(1)


@pytest.fixture
def executor(podman: str) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(kill_grace=1.0)
    yield ex
    for job in list(ex._jobs.values()):  # never leave a test's container behind
        if job.status is None and job.container:
            subprocess.run([podman, "rm", "-f", "--time", "0", job.container], capture_output=True, check=False)


@pytest.fixture
def make_req(tmp_path: Path) -> Callable[..., JobRequest]:
    """A container JobRequest on the test image with a fresh work dir (override by keyword)."""

    def make(argv: Any = (), **kw: Any) -> JobRequest:
        n = next(_counter)
        kw.setdefault("job_key", f"ctr-{n}/task/1")
        kw.setdefault("env", {})
        kw.setdefault("workdir", str(tmp_path / f"wd{n}"))
        kw.setdefault("labels", {"run_id": f"ctr-{tmp_path.name}-{n}", "task_id": "task", "attempt": "1"})
        kw.setdefault("container", {"image": IMAGE})
        return JobRequest(argv=tuple(argv), **kw)

    return make
