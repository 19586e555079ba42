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
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["MotoServer", "ProcessServer", "ServerStartError", "free_port", "find_venv_script"]


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


def find_venv_script(name: str) -> str:
    """Locate a console script installed next to the running interpreter.

    Falls back to ``PATH``.  Raises :class:`ServerStartError` if not found.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServerStartError(
        f"{name!r} not found next to {sys.executable} or on PATH "
        "(install moto[server] into the test environment)"
    )


class ProcessServer:
    """What every local test server shares: its process, its log file (never a pipe: a chatty
    server would block on a full one), stopping, and use as a context manager. Subclasses set
    ``_proc`` and ``_log`` when they launch and implement ``start``."""

    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- public API --------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._proc is None or self.port is None:
            raise RuntimeError("MotoServer is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        """Start the server and block until it answers HTTP requests."""
        if self._proc is not None:
            raise RuntimeError("MotoServer already started")
        base = self._command or [find_venv_script("moto_server")]
        last_error: ServerStartError | None = None
        for _ in range(self._start_attempts):
            port = self._fixed_port or free_port(self.host)
            try:
                self._launch(base, port)
                return self
            except ServerStartError as exc:
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error


    def reset(self) -> None:
        """Drop all state held by the server (moto's ``/moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass



    def __repr__(self) -> str:
        state = self.endpoint_url if self.running else "stopped"
        return f"<MotoServer {state}>"

    # -- internals -----------------------------------------------------------

    def _launch(self, base: list[str], port: int) -> None:
        self.port = port
        self._log = tempfile.TemporaryFile(prefix="moto-server-", suffix=".log")
        argv = [*base, "-H", self.host, "-p", str(port)]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {argv!r}: {exc}") from exc

        deadline = time.monotonic() + self.startup_timeout
        probe = f"http://{self.host}:{port}/moto-api/"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{argv!r} exited with status {code} during start-up; output:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means the server is up
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{argv!r} did not answer HTTP on {probe} within "
                    f"{self.startup_timeout:.0f}s; output:\n{self.output()}"
                )
            time.sleep(0.1)
