"""The `gatehouse` console script in oidc mode: `gatehouse login` (OAuth 2.0 device authorization grant
against the stand-in), bearer tokens to a live server, refresh of the stored login, and clear refusals."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from audit.models import AuditEntry
from gateway.identity.models import ExternalIdentity
from gateway.models import Membership, Run
from tests.engine.driver import workflow

from .conftest import claims_of

GATEHOUSE = str(Path(sys.executable).parent / "gatehouse")
CLI_CLIENT = "gatehouse-cli"


@pytest.fixture
def cli_client(oidc, settings, keycloak):
    """A public client with the device grant, whose tokens name the server's client in their audience
    (Keycloak: an Audience mapper), accepted by the server as CLI_CLIENT_ID."""
    keycloak.configure_client(CLI_CLIENT, device_flow=True, device_interval=1, audience=["gatehouse"])
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "CLI_CLIENT_ID": CLI_CLIENT}
    return CLI_CLIENT


def gatehouse(*args, home: Path, url: str | None = None, env: dict | None = None, popen: bool = False):
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    full["HOME"] = str(home)
    if url:
        full["GATEHOUSE_URL"] = url
    full.update(env or {})
    if popen:
        return subprocess.Popen([GATEHOUSE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=full)
    return subprocess.run([GATEHOUSE, *args], capture_output=True, text=True, env=full, timeout=60)


def token_file(home: Path) -> Path:
    return home / ".config" / "gatehouse" / "tokens.json"


def device_login(home: Path, keycloak, username: str, *, client_id: str = CLI_CLIENT, deny: bool = False):
    """Run `gatehouse login`, and do in a browser what its prompt asks: open the link, sign in."""
    proc = gatehouse("login", "--issuer", keycloak.issuer, "--client-id", client_id, home=home, popen=True)
    prompt = proc.stderr.readline()
    if not prompt.startswith("To sign in, open "):  # refused before any prompt
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, prompt + err)
    link = prompt[len("To sign in, open "):].strip()
    code_line = proc.stderr.readline()
    answer = keycloak.approve_device(link, username, deny=deny)
    assert answer.status_code == 200, answer.text
    assert link.endswith(code_line.split("code ")[1].strip(" .\n"))  # the link carries the code shown
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, prompt + code_line + err)


def grant_clearance(subject: str):
    from gateway.clearances import ClearanceInput, clearance_set

    membership = Membership.objects.select_related("user", "tenant").get(user__external_identity__subject=subject)
    clearance_set(tenant=membership.tenant, user=membership.user,
                  data=ClearanceInput(policy=None, max_level="TOP SECRET", compartments=[], releasability=[]))


def test_device_login_then_submit_and_list_runs(cli_client, tenant, kc_user, keycloak, live_server, recording,
                                                tmp_path):
    uid, username = kc_user(realm_roles=["author", "analyst"])
    logged_in = device_login(tmp_path, keycloak, username)
    assert logged_in.returncode == 0, logged_in.stderr
    assert f"logged in as {username}" in logged_in.stdout
    stored = token_file(tmp_path)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    data = json.loads(stored.read_text())
    assert claims_of(data["access_token"])["azp"] == CLI_CLIENT and data["refresh_token"]

    first = gatehouse("run", "list", home=tmp_path, url=live_server.url)  # first sight: the account is made
    assert first.returncode == 0 and first.stdout == "", first.stderr
    grant_clearance(uid)
    wf = tmp_path / "wf.yaml"
    wf.write_text(workflow({"id": "a"}, name="cli-oidc-run"))
    submitted = gatehouse("run", "submit", str(wf), home=tmp_path, url=live_server.url)
    assert submitted.returncode == 0, submitted.stderr
    run = Run.objects.get(id=submitted.stdout.strip())
    assert run.submitter.external_identity.subject == uid
    listed = gatehouse("run", "list", home=tmp_path, url=live_server.url)
    assert listed.returncode == 0, listed.stderr
    assert str(run.id) in listed.stdout and "cli-oidc-run" in listed.stdout


def test_the_stored_login_is_refreshed(cli_client, tenant, kc_user, keycloak, live_server, tmp_path):
    _, username = kc_user()
    assert device_login(tmp_path, keycloak, username).returncode == 0
    stored = token_file(tmp_path)
    before = json.loads(stored.read_text())
    stored.write_text(json.dumps({**before, "expires_at": 0}))  # as the clock would make it
    refreshes = keycloak.stats()["token"]
    result = gatehouse("run", "list", home=tmp_path, url=live_server.url)
    assert result.returncode == 0, result.stderr
    after = json.loads(stored.read_text())
    assert keycloak.stats()["token"] == refreshes + 1
    assert after["access_token"] != before["access_token"] and after["refresh_token"] != before["refresh_token"]
    assert after["expires_at"] > time.time()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_an_ended_login_asks_to_log_in_again(cli_client, tenant, kc_user, keycloak, live_server, tmp_path):
    uid, username = kc_user()
    assert device_login(tmp_path, keycloak, username).returncode == 0
    stored = token_file(tmp_path)
    data = json.loads(stored.read_text())
    keycloak.end_session(claims_of(data["access_token"])["sid"])
    stored.write_text(json.dumps({**data, "expires_at": 0}))
    result = gatehouse("run", "list", home=tmp_path, url=live_server.url)
    assert result.returncode == 1
    assert "login has expired or was ended" in result.stderr and "gatehouse login" in result.stderr
    assert not ExternalIdentity.objects.filter(subject=uid).exists()  # it never reached the server


def test_a_jwt_is_sent_as_bearer_unless_told_otherwise(oidc, tenant, kc_user, keycloak, live_server, tmp_path):
    uid, username = kc_user()
    token = keycloak.password_token(username)["access_token"]
    as_token = gatehouse("run", "list", home=tmp_path, url=live_server.url,
                         env={"GATEHOUSE_TOKEN": token, "GATEHOUSE_TOKEN_TYPE": "token"})
    assert as_token.returncode == 1 and "error 401" in as_token.stderr
    assert not ExternalIdentity.objects.filter(subject=uid).exists()
    result = gatehouse("run", "list", home=tmp_path, url=live_server.url, env={"GATEHOUSE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert ExternalIdentity.objects.filter(subject=uid).exists()
    explicit = gatehouse("--token-type", "bearer", "--token", token, "gate", "list", home=tmp_path,
                         url=live_server.url)
    assert explicit.returncode == 0 and "no gates awaiting your decision" in explicit.stdout


@pytest.mark.parametrize("kind", ["tampered-jwt", "not-a-jwt"])
def test_a_bad_token_gives_a_clear_message_and_writes_nothing(kind, oidc, tenant, kc_user, keycloak, live_server,
                                                              tmp_path):
    uid, username = kc_user(realm_roles=["author"])
    good = keycloak.password_token(username)["access_token"]
    if kind == "tampered-jwt":
        claims = claims_of(good)
        claims["realm_access"] = {"roles": ["tenant_admin"]}
        head, _, sig = good.split(".")
        import base64

        token = f"{head}.{base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b'=').decode()}.{sig}"
    else:
        token = "0123456789abcdef0123456789abcdef01234567"  # shaped like a dev API token
    wf = tmp_path / "wf.yaml"
    wf.write_text(workflow({"id": "a"}, name="never"))
    result = gatehouse("run", "submit", str(wf), home=tmp_path, url=live_server.url, env={"GATEHOUSE_TOKEN": token})
    assert result.returncode == 1 and result.stdout == ""
    assert "error 401" in result.stderr and "did not accept the credentials" in result.stderr
    if kind == "tampered-jwt":
        assert "Bearer token refused: bad signature. [invalid_token]" in result.stderr
    else:
        assert "[not_authenticated]" in result.stderr
    assert not Run.objects.exists()
    assert not ExternalIdentity.objects.filter(subject=uid).exists()
    assert not Membership.objects.filter(user__username=username).exists()
    assert not AuditEntry.objects.filter(event__in=["run.submitted", "member.created"]).exists()
    assert AuditEntry.objects.filter(event="access.denied", body__data__path="/api/v1/runs").exists()


def test_a_denied_device_login_stores_nothing(cli_client, tenant, kc_user, keycloak, tmp_path):
    _, username = kc_user()
    result = device_login(tmp_path, keycloak, username, deny=True)
    assert result.returncode == 1 and "the login was denied" in result.stderr
    assert not token_file(tmp_path).exists()


def test_a_client_without_the_device_grant_is_refused_clearly(oidc, tenant, kc_user, keycloak, tmp_path):
    keycloak.configure_client("gatehouse-cli-no-device")  # public, device grant off
    _, username = kc_user()
    result = device_login(tmp_path, keycloak, username, client_id="gatehouse-cli-no-device")
    assert result.returncode == 1
    assert "refused the login" in result.stderr and "Device Authorization Grant" in result.stderr
    assert not token_file(tmp_path).exists()


def test_login_needs_an_issuer(tmp_path):
    result = gatehouse("login", home=tmp_path)
    assert result.returncode == 2 and "no identity provider" in result.stderr
    assert not token_file(tmp_path).exists()


def test_a_token_file_others_can_read_is_refused(cli_client, tenant, kc_user, keycloak, live_server, tmp_path):
    _, username = kc_user()
    assert device_login(tmp_path, keycloak, username).returncode == 0
    token_file(tmp_path).chmod(0o644)
    result = gatehouse("run", "list", home=tmp_path, url=live_server.url)
    assert result.returncode == 2 and "can be read by others" in result.stderr
    assert not ExternalIdentity.objects.exists()


def test_logout_ends_the_keycloak_session_and_forgets_the_tokens(cli_client, tenant, kc_user, keycloak, tmp_path):
    _, username = kc_user()
    assert device_login(tmp_path, keycloak, username).returncode == 0
    data = json.loads(token_file(tmp_path).read_text())
    result = gatehouse("logout", home=tmp_path)
    assert result.returncode == 0 and "logged out" in result.stdout, result.stderr
    assert not token_file(tmp_path).exists()
    introspected = requests.post(f"{keycloak.issuer}/protocol/openid-connect/token/introspect", timeout=10,
                                 data={"token": data["access_token"], "client_id": "gatehouse",
                                       "client_secret": "gatehouse-secret"}).json()
    assert introspected == {"active": False}


def test_the_cli_clients_tokens_count_only_when_configured(oidc, settings, tenant, keycloak, kc_user, bearer):
    keycloak.configure_client(CLI_CLIENT, device_flow=True, device_interval=1, audience=["gatehouse"])
    uid, username = kc_user()
    token = keycloak.password_token(username, client_id=CLI_CLIENT, secret="")["access_token"]
    refused = bearer(token).get("/api/v1/runs")
    assert refused.status_code == 401 and "another client" in refused.json()["message"]
    assert not ExternalIdentity.objects.filter(subject=uid).exists()
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "CLI_CLIENT_ID": CLI_CLIENT}
    assert bearer(token).get("/api/v1/runs").status_code == 200
