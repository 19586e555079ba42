"""A real OpenBao server per module, prepared for the credential store the way an operator would
(executors.credentials.vault_credentials_setup), and helpers to prove where a secret is not."""
from __future__ import annotations

import pytest

from executors.backends import backends_configure
from executors.credentials import forget_credential_store, vault_credentials_setup
from tests.vault import OpenBaoServer

BACKENDS = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - {name: local, kind: local, max_classification: TOP SECRET}
  - {name: hpc, kind: slurm, max_classification: SECRET, config: {cluster: hpc1, login_node: login.hpc.example}}
  - {name: cloud, kind: batch, max_classification: UNCLASSIFIED, config: {region: eu-west-2, queue: gh}}
"""


@pytest.fixture(scope="module")
def openbao():
    with OpenBaoServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway_approle(openbao):
    """The gateway's own AppRole (role id, secret id): it manages tenant roles and reads no secret."""
    return vault_credentials_setup(openbao.client())


def vault_config(settings, server, approle, **extra) -> None:
    role_id, secret_id = approle
    settings.GATEHOUSE_CREDENTIALS = {**settings.GATEHOUSE_CREDENTIALS, "STORE": "vault", "VAULT_URL": server.url,
                                      "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id, "CACHE_SECONDS": 0,
                                      "VAULT_TENANT_TOKEN_TTL": 60, **extra}
    forget_credential_store()


@pytest.fixture
def vault_store(settings, openbao, gateway_approle):
    vault_config(settings, openbao, gateway_approle)
    yield settings
    forget_credential_store()


@pytest.fixture
def local_store(settings, tmp_path):
    settings.GATEHOUSE_CREDENTIALS = {**settings.GATEHOUSE_CREDENTIALS, "STORE": "local", "CACHE_SECONDS": 0,
                                      "LOCAL_DIR": str(tmp_path / "credentials"),
                                      "MASTER_KEY_FILE": str(tmp_path / "keys" / "credentials.key")}
    forget_credential_store()
    yield tmp_path
    forget_credential_store()


@pytest.fixture
def configure(db):
    def configure(tenant):
        backends_configure(tenant=tenant, actor=None, source=BACKENDS)
        return tenant

    return configure


def tables_containing(needle: str) -> list[str]:
    """Every table of the database holding `needle` anywhere in a row (the test connects as the tables'
    owner, so row-level security hides nothing)."""
    from django.db import connection

    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)} t WHERE strpos(t::text, %s) > 0",
                           [needle])
            if cursor.fetchone()[0]:
                found.append(table)
    return found
