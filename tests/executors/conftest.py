"""Fixtures for the executor tests: plain pytest, no Django, real subprocesses."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `python -m pytest` from the repo root puts it on sys.path already; be explicit anyway.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from executors.base import JobRequest  # noqa: E402
from executors.local import LocalExecutor  # noqa: E402

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("the local executor tests need Linux (/proc, prctl)", allow_module_level=True)

_counter = itertools.count(1)


@pytest.fixture
def executor() -> Iterator[LocalExecutor]:
    ex = LocalExecutor(kill_grace=0.5)
    yield ex
    # Never leave a test's processes behind, whatever the test did.
    for job in list(ex._jobs.values()):
        if job.status is None:
            try:
                os.killpg(job.pgid, signal.SIGKILL)
            except OSError:
                pass
            job.proc.wait()


@pytest.fixture
def make_req(tmp_path: Path) -> Callable[..., JobRequest]:
    """Build a JobRequest with a fresh work dir under tmp_path (override anything by keyword)."""

    def _make(argv: Any = (), **kw: Any) -> JobRequest:
        n = next(_counter)
        kw.setdefault("job_key", f"run-{n}/task/1")
        kw.setdefault("env", {})
        kw.setdefault("workdir", str(tmp_path / f"wd{n}"))
        return JobRequest(argv=tuple(argv), **kw)

    return _make
