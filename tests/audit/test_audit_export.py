"""Signed bundles from the server, checked by the offline verifier: global and tenant logs,
scope of auditors, key rotation, a whole-table rewrite caught against the checkpoints kept
outside the database, the CLI end to end, and checkpoints signed by OpenBao Transit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from audit.export import audit_export
from audit.keys import forget_signer, rotate_file_key
from audit.models import AuditCheckpoint, AuditEntry, AuditKey, AuditLeaf
from audit.sequencer import checkpoint_now, integrate
from audit.services import audit_append
from audit.verifier import verify_bundle

from .test_audit_log import audit_settings  # noqa: F401  (the autouse fixture: keys and witness under tmp_path)

pytestmark = pytest.mark.django_db(transaction=True)
GATEHOUSE = str(Path(sys.executable).parent / "gatehouse")


def fill(tenants, n: int) -> None:
    for i in range(n):
        audit_append(event="tenant.created", tenant=tenants[i % len(tenants)] if tenants else None, data={"i": i})
    while integrate():
        pass


def test_global_and_tenant_bundles_verify(make_tenant, tmp_path):
    t1, t2 = make_tenant(), make_tenant()
    fill([t1, t2, None], 240)
    summary = audit_export(tmp_path / "global")
    report = verify_bundle(tmp_path / "global")
    assert report.ok, report
    assert summary["entries"] == AuditLeaf.objects.count() and summary["checkpoints"] >= 2
    tenant_summary = audit_export(tmp_path / "t1", tenant=t1)
    assert verify_bundle(tmp_path / "t1").ok
    assert tenant_summary["entries"] == AuditLeaf.objects.filter(tenant=t1).count()
    lines = (tmp_path / "t1" / "entries.jsonl").read_bytes().splitlines()
    assert all(f'"tenant":"{t1.slug}"'.encode() in line for line in lines)


def test_a_bundle_survives_key_rotation_and_pins_to_trusted_keys(make_tenant, tmp_path):
    tenant = make_tenant()
    fill([tenant], 120)
    old_key = AuditKey.objects.get().verifier_key
    rotate_file_key()
    fill([tenant], 120)
    audit_export(tmp_path / "b")
    assert verify_bundle(tmp_path / "b").ok
    keys = (tmp_path / "b" / "keys.txt").read_text().split()
    assert old_key in keys and len(keys) == 2
    pinned = verify_bundle(tmp_path / "b", trusted_keys=[old_key])
    assert not pinned.ok and pinned.kind in ("unknown_key", "manifest_signature")
    events = list(AuditEntry.objects.filter(event__startswith="audit.key_").order_by("id").values_list("event", flat=True))
    assert events == ["audit.key_created", "audit.key_retired", "audit.key_created"]


def test_a_whole_table_rewrite_is_caught_against_the_checkpoints_outside_the_database(make_tenant, tmp_path, settings):
    if connection.vendor != "postgresql":
        pytest.skip("rewrites the tables with PostgreSQL statements")
    tenant = make_tenant()
    fill([tenant], 150)
    audit_export(tmp_path / "before")
    trusted = sorted((tmp_path / "before" / "checkpoints").iterdir())[-1].read_bytes()
    real_key = AuditKey.objects.get().verifier_key
    # A database administrator edits one entry and recomputes every hash, head and checkpoint,
    # signing with a key of their own (they do not hold the log's key).
    victim = AuditEntry.objects.filter(event="tenant.created").order_by("id")[5]
    with connection.cursor() as cursor:
        cursor.execute("SET gatehouse.audit_purge = 'on'")
        cursor.execute("UPDATE audit_auditentry SET body = jsonb_set(body, '{data,i}', '999'::jsonb) WHERE id = %s", [victim.id])
        for table in ("audit_auditleaf", "audit_auditnode", "audit_auditcheckpoint", "audit_audithead"):
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute("INSERT INTO audit_auditpending (entry_id) SELECT id FROM audit_auditentry ON CONFLICT DO NOTHING")
        cursor.execute("RESET gatehouse.audit_purge")
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "attacker.key")}
    forget_signer()
    while integrate():
        pass
    audit_export(tmp_path / "after")
    report = verify_bundle(tmp_path / "after")
    # The copies kept outside the database disagree with the rewritten log: either the proofs
    # between them (computed from the new tree) or the roots recomputed from the entries fail.
    assert not report.ok and report.kind in ("proof_invalid", "root_mismatch"), report
    pinned = verify_bundle(tmp_path / "after", trusted_keys=[real_key], trusted_checkpoint=trusted)
    assert not pinned.ok


def test_auditors_see_and_export_only_their_scope(api, make_tenant, make_member, recording):
    t1, t2 = make_tenant(), make_tenant()
    fill([t1, t2], 20)
    auditor = make_member(t1, "auditor")
    platform = make_member(t2, "platform_auditor")
    analyst = make_member(t1, "analyst")
    mine = api(auditor).get("/api/v1/audit/entries?limit=500").json()
    assert mine["count"] > 0 and {e["tenant"] for e in mine["results"]} == {t1.slug}
    assert api(auditor).get(f"/api/v1/audit/entries?tenant={t2.slug}").status_code == 404
    assert api(auditor).get(f"/api/v1/audit/export?tenant={t2.slug}").status_code == 404
    assert api(analyst).get("/api/v1/audit/entries").status_code == 403
    everything = api(platform).get("/api/v1/audit/entries?limit=500").json()
    assert {t1.slug, t2.slug} <= {e["tenant"] for e in everything["results"]}
    filtered = api(platform).get(f"/api/v1/audit/entries?tenant={t1.slug}&event=tenant.created").json()
    assert filtered["count"] == 10 + 1
    latest = api(auditor).get("/api/v1/audit/checkpoints/latest").json()
    checkpoint_now()
    latest = api(auditor).get("/api/v1/audit/checkpoints/latest").json()
    assert latest["verification"]["signature_valid"] is True
    assert latest["verification"]["matches_copy_outside_database"] is True
    assert AuditEntry.objects.filter(event="audit.searched", actor=auditor).exists()


def test_the_cli_exports_and_verifies_a_bundle(live_server, make_tenant, make_member, tmp_path):
    from rest_framework.authtoken.models import Token

    tenant = make_tenant()
    fill([tenant], 60)
    auditor = make_member(tenant, "auditor")
    token = Token.objects.create(user=auditor).key
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env.update(GATEHOUSE_URL=live_server.url, GATEHOUSE_TOKEN=token, HOME=str(tmp_path))
    out = tmp_path / "bundle"
    exported = subprocess.run([GATEHOUSE, "audit", "export", "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    assert (out / "manifest.json").exists() and (out / "entries.jsonl").exists()
    verified = subprocess.run([GATEHOUSE, "audit", "verify", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK" in verified.stdout
    lines = (out / "entries.jsonl").read_bytes().splitlines(keepends=True)
    (out / "entries.jsonl").write_bytes(b"".join(lines[:3] + lines[4:]))  # an entry removed
    tampered = subprocess.run([GATEHOUSE, "audit", "verify", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert tampered.returncode == 1 and "FAILED" in tampered.stderr


def test_checkpoints_signed_with_openbao_transit(make_tenant, tmp_path, settings):
    from tests.vault import OpenBaoServer, enable_transit, make_ed25519_key

    with OpenBaoServer() as bao:
        client = bao.client()
        enable_transit(client)
        make_ed25519_key(client, "audit-log")
        client.sys.enable_auth_method("approle")
        client.sys.create_or_update_policy("audit-signer", 'path "transit/sign/audit-log" { capabilities = ["update"] }\n'
                                           'path "transit/keys/audit-log" { capabilities = ["read"] }')
        client.auth.approle.create_or_update_approle("gatehouse", token_policies=["audit-signer"])
        role_id = client.auth.approle.read_role_id("gatehouse")["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id("gatehouse")["data"]["secret_id"]
        settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "SIGNER": "vault", "VAULT_URL": bao.url,
                                    "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id, "VAULT_KEY": "audit-log"}
        forget_signer()
        tenant = make_tenant()
        fill([tenant], 70)
        audit_export(tmp_path / "vault")
    assert AuditKey.objects.filter(backend="vault").exists()
    vault_key = AuditKey.objects.get(backend="vault").verifier_key
    report = verify_bundle(tmp_path / "vault", trusted_keys=[vault_key])
    assert report.ok, report
    assert all(c.key_id == vault_key.split("+")[1] for c in AuditCheckpoint.objects.all())
