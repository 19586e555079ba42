"""Real Celery worker processes for the benchmarks (the pattern of tests/integration/conftest.py):
each worker leads its own process group, so stopping it stops its pool children too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import ROOT

BIN = Path(sys.executable).parent


class Processes:
    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = env
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        try:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own copy
        self.procs[name] = proc
        return proc

    def worker(self, name: str, *, concurrency: int = 2, extra_env: dict | None = None) -> subprocess.Popen:
        return self._start(
            name,
            [str(BIN / "celery"), "-A", "gateway.celery", "worker", "-n", f"{name}@%h", "-c", str(concurrency),
             "--include", "bench.celery_tasks",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            extra_env,
        )

    def command(self, name: str, args: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        """A `manage.py` command as its own process (e.g. the audit sequencer's loop)."""
        return self._start(name, [sys.executable, str(ROOT / "manage.py"), *args], extra_env)

    def wait_ready(self, name: str, *, timeout: float = 60.0) -> None:
        """Until the worker answers a remote-control ping (its consumer is then running)."""
        from gateway.celery import app

        proc = self.procs[name]
        destination = None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            replies = app.control.ping(timeout=0.5)
            for reply in replies or []:
                for node in reply:
                    if node.startswith(f"{name}@"):
                        destination = node
            if destination:
                return
        raise TimeoutError(f"worker {name} not ready after {timeout:g}s:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)
        # Pool children that outlived their parent are in the same group: make sure of them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
