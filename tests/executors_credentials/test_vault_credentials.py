"""Backend credentials in OpenBao/Vault KV v2, per tenant, behind policies Vault enforces."""
from __future__ import annotations

import logging
import time

import hvac.exceptions
import pytest
import requests

from audit.models import AuditEntry
from executors.credentials import (
    CredentialsMissing,
    CredentialsUnavailable,
    credential_store,
    credentials_get,
    credentials_set,
    forget_credential_store,
    vault_credentials_setup,
)
from executors.models import BackendCredentialSet
from tests.vault import OpenBaoServer

from .conftest import tables_containing, vault_config

pytestmark = pytest.mark.django_db

JWT = "eyJhbGciOiJIUzI1NiJ9.slurmrest-jwt-value-7f3a9c"
SSH = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUtc2VjcmV0LWtleS1ieXRlcw==\n-----END OPENSSH PRIVATE KEY-----\n"


def _kv(root, path):
    return root.secrets.kv.v2.read_secret_version(path=path, mount_point="gatehouse", raise_on_deleted_version=True)["data"]


@pytest.fixture
def admin(make_member, tenant):
    return make_member(tenant, "tenant_admin", username="admin")


def test_written_through_the_api_to_the_tenants_kv_path_and_read_for_a_task(vault_store, configure, tenant, admin,
                                                                            api, openbao):
    configure(tenant)
    url = "/api/v1/tenant/backends/hpc/credentials"
    assert api(admin).get(url).json() == {"backend": "hpc", "set": False, "keys": [], "updated_at": None,
                                          "updated_by": None, "store": None, "version": 0}
    response = api(admin).put(url, {"credentials": {"jwt": JWT, "ssh_private_key": SSH}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["keys"] == ["jwt", "ssh_private_key"] and body["store"] == "vault" and body["updated_at"]
    assert JWT not in response.content.decode() and "OPENSSH" not in response.content.decode()
    shown = api(admin).get(url)
    assert shown.json()["keys"] == ["jwt", "ssh_private_key"] and JWT not in shown.content.decode()

    root = openbao.client()
    stored = _kv(root, "tenants/acme/backends/hpc")
    assert stored["data"] == {"jwt": JWT, "ssh_private_key": SSH} and stored["metadata"]["version"] == 1
    assert api(admin).put(url, {"credentials": {"jwt": JWT + "-2"}}, format="json").status_code == 200
    assert _kv(root, "tenants/acme/backends/hpc")["metadata"]["version"] == 2

    assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": JWT + "-2"}
    written = AuditEntry.objects.filter(event="credential.written", tenant_id=tenant.id).order_by("id")
    assert [e.body["data"]["keys"] for e in written] == [["jwt", "ssh_private_key"], ["jwt"]]
    read = AuditEntry.objects.get(event="credential.read", tenant_id=tenant.id)
    assert read.body["data"]["keys"] == ["jwt"] and read.body["data"]["source"] == "vault"
    assert read.outcome == "success" and read.object_id == "hpc"


def test_one_approle_login_per_process_and_tenant(vault_store, configure, tenant, other_tenant):
    for t in (configure(tenant), configure(other_tenant)):
        credentials_set(tenant=t, backend="hpc", values={"jwt": f"{t.slug}-{JWT}"}, actor=None)
    for _ in range(5):
        assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": f"acme-{JWT}"}
        assert credentials_get(tenant=other_tenant, backend="hpc") == {"jwt": f"globex-{JWT}"}
    stats = credential_store().stats
    assert (stats["logins:broker"], stats["logins:acme"], stats["logins:globex"]) == (1, 1, 1)
    assert AuditEntry.objects.filter(event="credential.read", tenant_id=tenant.id).count() == 5


def test_the_tenant_token_is_renewed_and_a_revoked_one_replaced(settings, openbao, gateway_approle, configure,
                                                                 make_tenant):
    vault_config(settings, openbao, gateway_approle, VAULT_TENANT_TOKEN_TTL=3)
    tenant = configure(make_tenant("renewing"))
    credentials_set(tenant=tenant, backend="hpc", values={"jwt": JWT}, actor=None)
    store = credential_store()
    token = store.tenant_client("renewing").token
    assert store.stats["logins:renewing"] == 1 and store.stats["renewals:renewing"] == 0
    time.sleep(2.3)  # under a third of the 3 s TTL is left
    assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": JWT}
    assert store.stats["renewals:renewing"] == 1 and store.stats["logins:renewing"] == 1
    assert store.tenant_client("renewing").token == token
    assert openbao.client().auth.token.lookup(token)["data"]["ttl"] >= 2  # renewed, not about to expire

    openbao.client().auth.token.revoke(token)  # Vault answers 403 to it now: one new login, then the read
    assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": JWT}
    assert store.stats["logins:renewing"] == 2 and store.tenant_client("renewing").token != token
    forget_credential_store()


def test_vault_itself_refuses_another_tenants_path(vault_store, configure, tenant, other_tenant, openbao):
    configure(tenant), configure(other_tenant)
    credentials_set(tenant=other_tenant, backend="hpc", values={"jwt": "globex-only"}, actor=None)
    credentials_set(tenant=tenant, backend="hpc", values={"jwt": JWT}, actor=None)
    acme = credential_store().tenant_client("acme")
    with pytest.raises(hvac.exceptions.Forbidden):
        acme.secrets.kv.v2.read_secret_version(path="tenants/globex/backends/hpc", mount_point="gatehouse",
                                               raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        acme.secrets.kv.v2.create_or_update_secret(path="tenants/globex/backends/hpc", secret={"jwt": "overwritten"},
                                                   mount_point="gatehouse")
    session = requests.Session()
    session.trust_env = False
    answer = session.get(f"{openbao.url}/v1/gatehouse/data/tenants/globex/backends/hpc",
                         headers={"X-Vault-Token": acme.token}, timeout=5)
    assert answer.status_code == 403 and "globex-only" not in answer.text
    assert _kv(openbao.client(), "tenants/globex/backends/hpc")["data"] == {"jwt": "globex-only"}

    # The gateway's own AppRole token reads no secret at all, and cannot give a tenant role more power.
    broker = openbao.client(token="none")
    role_id, secret_id = vault_credentials_setup(openbao.client())
    broker.auth.approle.login(role_id=role_id, secret_id=secret_id)
    with pytest.raises(hvac.exceptions.Forbidden):
        broker.secrets.kv.v2.read_secret_version(path="tenants/acme/backends/hpc", mount_point="gatehouse",
                                                 raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        broker.auth.approle.create_or_update_approle("acme", token_policies=["root"], mount_point="gatehouse-tenants")


def test_the_cache_holds_for_its_seconds_then_reads_again(settings, openbao, gateway_approle, configure, tenant):
    vault_config(settings, openbao, gateway_approle, CACHE_SECONDS=1.0)
    configure(tenant)
    credentials_set(tenant=tenant, backend="cloud", values={"aws_access_key_id": "AKIA1", "aws_secret_access_key": "v1"},
                    actor=None)
    assert credentials_get(tenant=tenant, backend="cloud")["aws_secret_access_key"] == "v1"
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path="tenants/acme/backends/cloud", secret={"aws_access_key_id": "AKIA1", "aws_secret_access_key": "v2"},
        mount_point="gatehouse")
    assert credentials_get(tenant=tenant, backend="cloud")["aws_secret_access_key"] == "v1"  # cached
    time.sleep(1.1)
    assert credentials_get(tenant=tenant, backend="cloud")["aws_secret_access_key"] == "v2"
    sources = list(AuditEntry.objects.filter(event="credential.read", tenant_id=tenant.id).order_by("id")
                   .values_list("body__data__source", flat=True))
    assert sources == ["vault", "cache", "vault"]  # every read audited, cached or not
    forget_credential_store()


def test_vault_down_is_credentials_unavailable_and_nothing_runs_or_is_written(settings, configure, tenant, admin, api):
    with OpenBaoServer() as server:
        vault_config(settings, server, vault_credentials_setup(server.client()))
        configure(tenant)
        credentials_set(tenant=tenant, backend="hpc", values={"jwt": JWT}, actor=None)
        assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": JWT}
    # The server is stopped.
    with pytest.raises(CredentialsUnavailable) as unavailable:
        credentials_get(tenant=tenant, backend="hpc")
    assert unavailable.value.code == "credentials_unavailable" and unavailable.value.retryable
    failed = AuditEntry.objects.filter(event="credential.read", outcome="error").get()
    assert failed.body["error"] == "credentials_unavailable" and "keys" not in failed.body["data"]

    row = BackendCredentialSet.objects.values_list("version", "keys").get(tenant=tenant, backend="hpc")
    written = AuditEntry.objects.filter(event="credential.written").count()
    response = api(admin).put("/api/v1/tenant/backends/hpc/credentials", {"credentials": {"jwt": "new"}},
                              format="json")
    assert response.status_code == 503 and response.json()["code"] == "credentials_unavailable"
    assert BackendCredentialSet.objects.values_list("version", "keys").get(tenant=tenant, backend="hpc") == row
    assert AuditEntry.objects.filter(event="credential.written").count() == written
    forget_credential_store()


def test_no_credentials_set_is_refused_never_empty(vault_store, configure, tenant):
    configure(tenant)
    with pytest.raises(CredentialsMissing):
        credentials_get(tenant=tenant, backend="local")
    assert AuditEntry.objects.filter(event="credential.read", outcome="error", body__error="credentials_missing").exists()


def test_secrets_are_never_in_the_database_the_audit_log_or_the_logs(vault_store, configure, tenant, admin, api,
                                                                     caplog):
    caplog.set_level(logging.DEBUG)
    configure(tenant)
    secret = "s3cr3t-" + JWT
    assert api(admin).put("/api/v1/tenant/backends/hpc/credentials", {"credentials": {"jwt": secret}},
                          format="json").status_code == 200
    assert credentials_get(tenant=tenant, backend="hpc") == {"jwt": secret}
    refused = api(admin).put("/api/v1/tenant/backends/hpc/credentials",
                             {"credentials": {"jwt": secret}, "tenant": "globex"}, format="json")
    assert refused.status_code == 400 and secret not in refused.content.decode()
    assert tables_containing(secret) == []
    assert tables_containing("jwt")  # the search does find what is there: the key names
    assert all(secret not in str(body) for body in AuditEntry.objects.values_list("body", flat=True))
    assert secret not in caplog.text


@pytest.mark.parametrize("body, status", [
    ({"credentials": {}}, 400),
    ({"credentials": {"bad key": "x"}}, 400),
    ({"credentials": "jwt"}, 400),
    ({"credentials": {"jwt": "x"}, "backend": "cloud"}, 400),
])
def test_refused_writes_leave_nothing(vault_store, configure, tenant, admin, api, body, status):
    configure(tenant)
    response = api(admin).put("/api/v1/tenant/backends/hpc/credentials", body, format="json")
    assert response.status_code == status, response.content
    assert not BackendCredentialSet.objects.filter(tenant=tenant).exists()
    assert not AuditEntry.objects.filter(event="credential.written").exists()


def test_an_unknown_or_foreign_backend_is_not_found(vault_store, configure, tenant, other_tenant, admin, api,
                                                    make_member):
    configure(tenant)
    assert api(admin).put("/api/v1/tenant/backends/mainframe/credentials", {"credentials": {"jwt": "x"}},
                          format="json").status_code == 404
    foreign = make_member(other_tenant, "tenant_admin")  # the other tenant has only the built-in `local`
    assert api(foreign).put("/api/v1/tenant/backends/hpc/credentials", {"credentials": {"jwt": "x"}},
                            format="json").status_code == 404
    assert api(foreign).get("/api/v1/tenant/backends/hpc/credentials").status_code == 404
    assert not BackendCredentialSet.objects.exists()


def test_the_setup_command_writes_the_gateways_approle_to_a_private_file(openbao, tmp_path, monkeypatch, capsys):
    from django.core.management import call_command

    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    out = tmp_path / "approle.env"
    call_command("credentials_vault_setup", "--out", str(out))
    assert stat_mode(out) == 0o600
    values = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert values["GATEHOUSE_CREDENTIALS_VAULT_SECRET_ID"] not in capsys.readouterr().out
    client = openbao.client(token="none")
    client.auth.approle.login(role_id=values["GATEHOUSE_CREDENTIALS_VAULT_ROLE_ID"],
                              secret_id=values["GATEHOUSE_CREDENTIALS_VAULT_SECRET_ID"])
    assert client.is_authenticated()


def stat_mode(path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)
