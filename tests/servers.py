"""Helpers to run real local servers for tests.

:class:`MotoServer` starts moto's standalone server (an S3/AWS emulator
speaking real HTTP) on a free loopback port, so tests exercise boto3's full
network stack instead of in-process mocks::

    with MotoServer() as moto:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")

or, as a pytest fixture::

    @pytest.fixture(scope="session")
    def moto_server():
        with MotoServer() as server:
            yield server

The module has no pytest or Django dependency.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["MotoServer", "ProcessServer", "ServerStartError", "free_port", "find_venv_script", "venv_script"]


class ServerStartError(RuntimeError):
    """A test server did not come up; the message includes its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is currently free on ``host``.

    The port is released before returning, so another process could grab it
    in between; :class:`MotoServer` retries on a fresh port if that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def venv_script(name: str) -> str | None:
    """A program installed next to the running interpreter, else on ``PATH``, else None."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def find_venv_script(name: str) -> str:
    """Locate a console script installed next to the running interpreter.

    Falls back to ``PATH``.  Raises :class:`ServerStartError` if not found.
    """
    found = venv_script(name)
    if found:
        return found
    raise ServerStartError(
        f"{name!r} not found next to {sys.executable} or on PATH "
        "(install moto[server] into the test environment)"
    )


class ProcessServer:
    """What every local test server shares: its process, its log file (never a pipe: a chatty
    server would block on a full one), starting on a free port with retries, waiting until it
    is ready, stopping, and use as a context manager.

    A subclass calls ``super().__init__`` and implements :meth:`_default_command` and
    :meth:`_launch` (build the argv for a port, :meth:`_spawn` it, :meth:`_wait_ready`); it may
    override :meth:`_pick_port`."""

    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    name = "server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        command: Sequence[str] | None = None,
        start_attempts: int = 3,
    ) -> None:
        self.host = host
        self._fixed_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._command = list(command) if command is not None else None
        self._start_attempts = max(1, start_attempts if port is None else 1)
        self._proc = None
        self._log = None

    def start(self) -> Any:
        """Start the server and block until it is ready; each failed attempt (e.g. the picked port
        was taken in the meantime) is stopped and retried on a fresh port."""
        if self._proc is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        base = self._command or self._default_command()
        last_error: ServerStartError | None = None
        for _ in range(self._start_attempts):
            port = self._fixed_port or self._pick_port()
            try:
                self._launch(base, port)
                return self
            except ServerStartError as exc:
                last_error = exc
                self.stop()
            except BaseException:
                self.stop()
                raise
        assert last_error is not None
        raise last_error

    def _default_command(self) -> list[str]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _pick_port(self) -> int:
        return free_port(self.host)

    def _launch(self, base: list[str], port: int) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _spawn(self, argv: Sequence[str], *, shown: Sequence[str] | None = None,
               env: dict[str, str] | None = None) -> None:
        """Start ``argv`` with its output in a fresh log file; ``shown`` is what errors quote
        (``argv`` without its secrets)."""
        self._log = tempfile.TemporaryFile(prefix=f"{self.name}-", suffix=".log")
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {list(shown or argv)!r}: {exc}") from exc

    def _wait_ready(self, ready: Callable[[], bool], *, shown: Sequence[str], timed_out: Callable[[], str],
                    interval: float) -> None:
        """Call ``ready()`` every ``interval`` s until it is true. :class:`ServerStartError`, with
        the server's output, if the process exits first or ``startup_timeout`` passes (the
        message starts with ``timed_out()``)."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{list(shown)!r} exited with status {code} during start-up; output:\n{self.output()}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(f"{timed_out()}; output:\n{self.output()}")
            time.sleep(interval)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self, limit: int = 8000) -> str:
        """The tail of the server's combined stdout/stderr."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, os.SEEK_END)
        return text

    def __enter__(self):
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MotoServer(ProcessServer):
    """A ``moto_server`` subprocess bound to ``127.0.0.1`` on a free port.

    :param host: interface to bind (loopback by default).
    :param port: fixed port; by default a free one is picked.
    :param startup_timeout: seconds to wait for the server to answer HTTP.
    :param command: override the executable (and leading arguments); by
        default ``<venv>/bin/moto_server``.  ``-H HOST -p PORT`` are appended.
    :param start_attempts: how many fresh ports to try if the server exits
        during start-up (e.g. the picked port was taken in the meantime).

    Server output goes to a temporary log file (never a pipe, which would
    fill up and block the server); it is quoted in start-up errors and
    available through :meth:`output`.
    """

    name = "moto-server"

    # -- public API --------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._proc is None or self.port is None:
            raise RuntimeError("MotoServer is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        """Start the server and block until it answers HTTP requests."""
        return super().start()

    def reset(self) -> None:
        """Drop all state held by the server (moto's ``/moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __repr__(self) -> str:
        state = self.endpoint_url if self.running else "stopped"
        return f"<MotoServer {state}>"

    # -- internals -----------------------------------------------------------

    def _default_command(self) -> list[str]:
        return [find_venv_script("moto_server")]

    def _launch(self, base: list[str], port: int) -> None:
        self.port = port
        argv = [*base, "-H", self.host, "-p", str(port)]
        self._spawn(argv)
        probe = f"http://{self.host}:{port}/moto-api/"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer means the server is up
            except (urllib.error.URLError, OSError):
                return False

        self._wait_ready(answers, shown=argv, interval=0.1, timed_out=lambda: (
            f"{argv!r} did not answer HTTP on {probe} within {self.startup_timeout:.0f}s"))
