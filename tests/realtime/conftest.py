"""A real Daphne process serving gateway.asgi, and real websocket clients (the `websockets` package)
holding real portal sessions, against the test PostgreSQL database and Redis (channels-redis)."""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WINDOW = 1.5  # how long a socket that must receive nothing is watched, seconds


class Daphne:
    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.log = log
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daphne:
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "gateway.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/live/"


def server_env(**extra) -> dict[str, str]:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "GATEHOUSE_PROFILE": "test",
        # The web server runs as the application role, under row-level security, as in production.
        "GATEHOUSE_DATABASE_URL": f"postgres://gatehouse_app:gatehouse_app@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "GATEHOUSE_BROKER_URL": settings.CELERY_BROKER_URL,
        "GATEHOUSE_DB_CONN_MAX_AGE": "0",
        "GATEHOUSE_DB_SCOPE": "request",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("GATEHOUSE_DB_ALLOW_AUDIT_PURGE", None)
    return env


def needs_servers():
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("live-update tests need PostgreSQL (GATEHOUSE_DATABASE_URL); run them with `make test`")
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("live-update tests need Redis (GATEHOUSE_BROKER_URL); run them with `make test`")


@pytest.fixture
def daphne(transactional_db, tmp_path):
    needs_servers()
    server = Daphne(server_env(), tmp_path / "daphne.log").start()
    yield server
    server.stop()


class LiveClient:
    """One websocket, read by a thread into a queue of parsed frames."""

    def __init__(self, url: str, *, origin: str, session: str | None, name: str = ""):
        from websockets.sync.client import connect

        headers = {"Cookie": f"sessionid={session}"} if session else {}
        self.name = name
        self.ws = connect(url, origin=origin, additional_headers=headers, open_timeout=10).__enter__()
        self.frames: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.raw: list[str] = []
        self.close_code: int | None = None
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                text = self.ws.recv()
                self.raw.append(text)
                self.frames.put(json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    def next(self, timeout: float = 10.0) -> dict:
        frame = self.frames.get(timeout=timeout)
        self.seen.append(frame)
        return frame

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "a frame", count: int = 1) -> dict:
        """The `count`-th frame, among all received so far or arriving within `timeout`, that
        satisfies `predicate` (frames carry unique ids, so earlier ones are no false match)."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [f for f in self.seen if predicate(f)]
            if len(matching) >= count:
                return matching[count - 1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout}s; got {self.seen}")
            try:
                self.next(left)
            except queue.Empty:
                continue

    def drain(self, window: float = WINDOW) -> list[dict]:
        """Every frame that arrives within `window` seconds."""
        deadline = time.monotonic() + window
        got = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next(left))
            except queue.Empty:
                break
        return got

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def sockets():
    opened: list[LiveClient] = []

    def open_socket(server: Daphne, user=None, *, origin: str | None = None, name: str = "") -> LiveClient:
        client = LiveClient(server.url, origin=origin or server.origin, session=session_for(user) if user else None,
                            name=name or (user.username if user else "anonymous"))
        opened.append(client)
        return client

    yield open_socket
    for client in opened:
        client.close()


def session_for(user) -> str:
    """A real portal session in the database (what the login view makes), its cookie value."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def flush_publisher() -> None:
    from gateway.realtime.publisher import publisher

    assert publisher.flush(10), "the live publisher did not drain"
