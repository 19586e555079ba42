"""The embedded default: credentials sealed with AES-256-GCM in files under the var dir."""
from __future__ import annotations

import base64
import os
import shutil
import stat

import pytest

from audit.models import AuditEntry
from executors.credentials import CredentialsRefused, credentials_get, credentials_set, forget_credential_store

from .conftest import tables_containing

pytestmark = pytest.mark.django_db

SECRET = "AKIA-local-secret-value-9d2e"


def test_round_trip_and_at_rest_encryption(local_store, configure, tenant, other_tenant):
    configure(tenant), configure(other_tenant)
    credentials_set(tenant=tenant, backend="cloud", values={"aws_secret_access_key": SECRET}, actor=None)
    sealed = local_store / "credentials" / "acme" / "cloud.sealed"
    raw = sealed.read_bytes()
    assert SECRET.encode() not in raw and base64.b64encode(SECRET.encode()) not in raw
    assert b"aws_secret_access_key" not in raw  # key names are sealed too
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert stat.S_IMODE((local_store / "keys" / "credentials.key").stat().st_mode) == 0o600
    assert credentials_get(tenant=tenant, backend="cloud") == {"aws_secret_access_key": SECRET}
    assert tables_containing(SECRET) == []
    assert all(SECRET not in str(b) for b in AuditEntry.objects.values_list("body", flat=True))

    # Another tenant's place: the file does not open there (tenant and backend are bound in).
    target = local_store / "credentials" / "globex" / "cloud.sealed"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sealed, target)
    with pytest.raises(CredentialsRefused):
        credentials_get(tenant=other_tenant, backend="cloud")

    # A changed byte does not open either.
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    sealed.write_bytes(bytes(tampered))
    with pytest.raises(CredentialsRefused):
        credentials_get(tenant=tenant, backend="cloud")
    sealed.write_bytes(raw)

    # Nor under another master key.
    os.remove(local_store / "keys" / "credentials.key")
    forget_credential_store()
    with pytest.raises(CredentialsRefused, match="master key"):
        credentials_get(tenant=tenant, backend="cloud")
