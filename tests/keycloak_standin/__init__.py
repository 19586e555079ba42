"""A Keycloak stand-in run as a separate process, and a small client for its test controls.

    with KeycloakStandin() as kc:
        kc.url                       # http://127.0.0.1:PORT (python-keycloak's server_url)
        kc.add_user("alice", password="pw", groups=["/tenants/acme"], realm_roles=["analyst"])
        kc.private_key()             # the current signing key, to mint hostile tokens in a test
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from jwcrypto import jwk, jwt

from tests.servers import ProcessServer, ServerStartError, free_port

ROOT = Path(__file__).resolve().parents[2]
REALM = "gatehouse"
CLIENT_ID = "gatehouse"
CLIENT_SECRET = "gatehouse-secret"


class KeycloakStandin(ProcessServer):
    def __init__(self, *, host: str = "127.0.0.1", startup_timeout: float = 20.0):
        self.host = host
        self.port: int | None = None
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> KeycloakStandin:
        for _ in range(3):
            self.port = free_port(self.host)
            self._log = tempfile.TemporaryFile(prefix="keycloak-standin-", suffix=".log")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.keycloak_standin", "--host", self.host, "--port", str(self.port)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + self.startup_timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    requests.get(f"{self.url}/_standin/health", timeout=1)
                    return self
                except requests.RequestException:
                    time.sleep(0.05)
            output = self.output()
            self.stop()
        raise ServerStartError(f"the Keycloak stand-in did not start; output:\n{output}")

    # -- test controls ----------------------------------------------------------

    def control(self, method: str, path: str, realm: str = REALM, **kwargs):
        answer = requests.request(method, f"{self.url}/_standin/realms/{realm}/{path}", timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json()

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{REALM}"

    def add_user(self, username: str, *, password: str = "pw", realm: str = REALM, **attrs) -> str:
        return self.control("POST", "users", realm, json={"username": username, "password": password, **attrs})["id"]

    def keys(self, realm: str = REALM) -> dict:
        return self.control("GET", "keys", realm)

    def private_key(self, realm: str = REALM, kid: str | None = None) -> jwk.JWK:
        keys = self.keys(realm)
        kid = kid or keys["current"]
        return jwk.JWK(**next(k for k in keys["keys"] if k["kid"] == kid))

    def rotate_key(self, realm: str = REALM, make_current: bool = True) -> str:
        return self.control("POST", "keys", realm, json={"make_current": make_current})["kid"]

    def stats(self, realm: str = REALM) -> dict:
        return self.control("GET", "stats", realm)

    def configure_client(self, client_id: str = CLIENT_ID, realm: str = REALM, **settings) -> None:
        self.control("POST", f"clients/{client_id}", realm, json=settings)

    def approve_device(self, verification_uri_complete: str, username: str, password: str = "pw", *,
                       deny: bool = False) -> requests.Response:
        """What a person does in their browser for `gatehouse login`: open the link, sign in (or deny)."""
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(verification_uri_complete)
        data = {"user_code": parse_qs(parts.query)["user_code"][0], "username": username, "password": password}
        if deny:
            data["deny"] = "1"
        return requests.post(verification_uri_complete.split("?")[0], data=data, timeout=10)

    def end_session(self, sid: str, realm: str = REALM) -> list[dict]:
        return self.control("POST", f"sessions/{sid}/end", realm)["sent"]

    def logout_tokens(self, realm: str = REALM) -> list[dict]:
        return self.control("GET", "logout-tokens", realm)

    def password_token(self, username: str, password: str = "pw", *, client_id: str = CLIENT_ID,
                       secret: str = CLIENT_SECRET, scope: str = "openid") -> dict:
        answer = requests.post(f"{self.issuer}/protocol/openid-connect/token", timeout=10, data={
            "grant_type": "password", "username": username, "password": password, "client_id": client_id,
            "client_secret": secret, "scope": scope})
        answer.raise_for_status()
        return answer.json()

    def sign(self, claims: dict, *, key: jwk.JWK | None = None, header: dict | None = None) -> str:
        """A token signed RS256 with the realm's current key (or `key`), for hostile-token tests."""
        key = key or self.private_key()
        token = jwt.JWT(header=header or {"alg": "RS256", "typ": "JWT", "kid": key.key_id}, claims=claims)
        token.make_signed_token(key)
        return token.serialize()
