"""Real Celery worker processes and reconcilers against the test PostgreSQL database and Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_until(predicate, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy (bounded; a test's wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Workers and reconcilers, each the leader of its own process group."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def worker(self, name: str, *, concurrency: int = 1, extra_env: dict | None = None) -> subprocess.Popen:
        return self._start(
            name,
            [str(BIN / "celery"), "-A", "gateway.celery", "worker", "-n", f"{name}@%h", "-c", str(concurrency),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            extra_env,
        )

    def reconciler(self, name: str, *, interval: float = 0.3, extra_env: dict | None = None) -> subprocess.Popen:
        return self._start(
            name, [sys.executable, "manage.py", "reconcile", "--loop", "--interval", str(interval)], extra_env
        )

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=15)
            self.procs.pop(name)


@pytest.fixture
def shared_artefacts(settings, tmp_path):
    """One artefact store and work-directory root seen by the test and by the workers."""
    root = tmp_path / "shared"
    settings.GATEHOUSE_ARTEFACT_STORE = {"backend": "file", "root": str(root / "artefacts")}
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "WORKDIR_ROOT": str(root / "work"),
                                 "DISPATCHER": "gateway.dispatch.CeleryDispatcher"}
    return root


@pytest.fixture
def processes(transactional_db, shared_artefacts, tmp_path):
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("integration tests need PostgreSQL (GATEHOUSE_DATABASE_URL); run them with `make test`")
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("integration tests need Redis (GATEHOUSE_BROKER_URL); run them with `make test`")
    import redis

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # no message of an earlier test survives
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "GATEHOUSE_PROFILE": "test",
        "GATEHOUSE_DATABASE_URL": f"postgres://gatehouse_app:gatehouse_app@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "GATEHOUSE_BROKER_URL": settings.CELERY_BROKER_URL,
        "GATEHOUSE_ARTEFACT_ROOT": str(shared_artefacts / "artefacts"),
        "GATEHOUSE_WORKDIR_ROOT": str(shared_artefacts / "work"),
        "GATEHOUSE_HEARTBEAT_SECONDS": "0.3",
        "GATEHOUSE_LEASE_SECONDS": "2",
        "GATEHOUSE_RECONCILE_INTERVAL_SECONDS": "0.5",
        "GATEHOUSE_DB_CONN_MAX_AGE": "0",
        "GATEHOUSE_DB_SCOPE": "system",  # workers and reconcilers see every tenant (gateway/dbscope.py)
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("GATEHOUSE_ARTEFACT_S3_BUCKET", None)
    env.pop("GATEHOUSE_DB_ALLOW_AUDIT_PURGE", None)  # the workers run as the app role, as in production
    logdir = tmp_path / "logs"
    logdir.mkdir()
    procs = Processes(env, logdir)
    yield procs
    procs.stop_all()
    from django.db import connections

    # The workers are gone; drop their idle connections' traces before the database is flushed.
    connections.close_all()
