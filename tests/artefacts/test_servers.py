"""Tests for the reusable MotoServer helper in tests/servers.py."""

from __future__ import annotations

import sys
from typing import Any
import urllib.request

import pytest

from tests.servers import MotoServer, ServerStartError


def test_session_server_speaks_s3(moto_server: MotoServer, s3_client: Any) -> None:
    assert moto_server.running
    assert moto_server.endpoint_url.startswith("http://127.0.0.1:")
    s3_client.create_bucket(Bucket="servers-smoke-test")
    names = [b["Name"] for b in s3_client.list_buckets()["Buckets"]]
    assert "servers-smoke-test" in names


def test_start_failure_reports_output() -> None:
    server = MotoServer(
        command=[sys.executable, "-c", "import sys; sys.stderr.write('boom-1234\\n'); sys.exit(3)"],
        start_attempts=1,
    )
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert "boom-1234" in str(info.value)
    assert "status 3" in str(info.value)
    assert not server.running


def test_start_timeout_is_bounded_and_kills_process() -> None:
    server = MotoServer(
        command=[sys.executable, "-c", "import sys, time; print('sleepy', flush=True); time.sleep(60)"],
        startup_timeout=1,
        start_attempts=1,
    )
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert "did not answer" in str(info.value)
    assert "sleepy" in str(info.value)
    assert not server.running
    with pytest.raises(RuntimeError):
        server.endpoint_url


def test_context_manager_stops_server() -> None:
    with MotoServer() as server:
        url = server.endpoint_url
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=5):
            pass
    assert not server.running
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
