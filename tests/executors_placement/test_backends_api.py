"""The tenant's backend configuration: PUT as YAML by a tenant admin, checked with line numbers,
audited with before and after; GET returns it; another tenant never sees it."""
from __future__ import annotations

import pytest

from audit.models import AuditEntry
from executors.models import BackendConfiguration, TenantBackend
from gateway.labels import parse_canonical

pytestmark = pytest.mark.django_db

GOOD = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - name: hpc
    kind: slurm
    max_classification: secret // nato
    tags: [on-prem]
    capacity: 4
    config: {cluster: hpc1, partition: batch}
  - name: local
    kind: local
    max_classification: TOP SECRET
"""


@pytest.fixture
def admin(make_member, tenant):
    return make_member(tenant, "tenant_admin", username="admin")


def _put(client, text):
    return client.put("/api/v1/tenant/backends", data=text, content_type="application/yaml")


def _nothing_changed(tenant, before):
    assert (tuple(BackendConfiguration.objects.filter(tenant=tenant).values_list("revision", "digest")),
            tuple(TenantBackend.objects.filter(tenant=tenant).values_list("name", "max_classification"))) == before


def _state(tenant):
    return (tuple(BackendConfiguration.objects.filter(tenant=tenant).values_list("revision", "digest")),
            tuple(TenantBackend.objects.filter(tenant=tenant).values_list("name", "max_classification")))


def test_put_then_get_returns_the_document_and_stores_canonical_ceilings(api, admin, tenant):
    unconfigured = api(admin).get("/api/v1/tenant/backends")
    assert unconfigured.status_code == 200 and b"name: local" in unconfigured.content
    assert unconfigured["X-Gatehouse-Backends-Revision"] == "0"

    response = _put(api(admin), GOOD)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["revision"] == 1 and [b["name"] for b in body["backends"]] == ["hpc", "local"]
    assert body["backends"][0]["max_classification"] == "SECRET//NATO"
    stored = TenantBackend.objects.get(tenant=tenant, name="hpc")
    assert stored.max_classification == "v1|GH|SECRET//NATO"
    assert str(parse_canonical(stored.max_classification)) == "SECRET//NATO"

    again = api(admin).get("/api/v1/tenant/backends")
    assert again.content.decode() == GOOD and again["Content-Type"].startswith("application/yaml")
    assert again["X-Gatehouse-Backends-Revision"] == "1"

    entry = AuditEntry.objects.get(event="tenant.backends_changed")
    assert entry.tenant_id == tenant.id and entry.actor_id == admin.pk
    assert entry.body["data"]["before"] is None
    assert [b["name"] for b in entry.body["data"]["after"]] == ["hpc", "local"]

    changed = _put(api(admin), GOOD.replace("capacity: 4", "capacity: 8"))
    assert changed.status_code == 200 and changed.json()["revision"] == 2
    second = AuditEntry.objects.filter(event="tenant.backends_changed").order_by("-id").first()
    assert second.body["data"]["before"][0]["capacity"] == 4 and second.body["data"]["after"][0]["capacity"] == 8


@pytest.mark.parametrize("text, line, fragment", [
    (GOOD.replace("    capacity: 4\n", "    capacity: 4\n    colour: blue\n"), 9, "colour"),
    (GOOD.replace("max_classification: TOP SECRET", "max_classification: ULTRA"), 12, "not a label"),
    (GOOD.replace("partition: batch}", "partition: batch, password: hunter2}"), 9, "looks like a credential"),
    (GOOD.replace("  - name: local", "  - name: hpc"), 10, "declared twice"),
    (GOOD.replace("kind: slurm", "kind: mainframe"), 5, "mainframe"),
    (GOOD.replace("capacity: 4", "capacity: 0"), 8, "minimum"),
    ("apiVersion: gatehouse/v1\nkind: Backends\nbackends: [\n", 4, "invalid YAML"),
])
def test_an_invalid_file_is_refused_with_its_line_and_nothing_is_written(api, admin, tenant, text, line, fragment):
    assert _put(api(admin), GOOD).status_code == 200
    before, entries = _state(tenant), AuditEntry.objects.filter(event="tenant.backends_changed").count()
    response = _put(api(admin), text)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "backends_invalid"
    assert any(d["line"] == line and fragment in d["message"] for d in body["detail"]), body["detail"]
    assert f"line {line}" in body["message"]
    assert "hunter2" not in response.content.decode()  # a refused credential is not echoed back
    _nothing_changed(tenant, before)
    assert AuditEntry.objects.filter(event="tenant.backends_changed").count() == entries
    assert all("hunter2" not in str(body) for body in AuditEntry.objects.values_list("body", flat=True))


def test_a_refused_credential_in_config_is_not_in_the_audit_log(api, admin, tenant):
    response = _put(api(admin), GOOD.replace("partition: batch}", "partition: batch, ssh_private_key: hunter2}"))
    assert response.status_code == 400
    assert all("hunter2" not in str(body) for body in AuditEntry.objects.values_list("body", flat=True))


def test_only_tenant_admins_and_never_another_tenant(api, admin, tenant, other_tenant, make_member):
    assert _put(api(admin), GOOD).status_code == 200
    before = _state(tenant)
    author = make_member(tenant, "author")
    assert api(author).get("/api/v1/tenant/backends").status_code == 403
    assert _put(api(author), GOOD.replace("hpc1", "evil")).status_code == 403
    _nothing_changed(tenant, before)
    foreign = make_member(other_tenant, "tenant_admin")
    theirs = api(foreign).get("/api/v1/tenant/backends")
    assert theirs.status_code == 200 and b"hpc" not in theirs.content  # their own (built-in) configuration
    assert api(foreign).get("/api/v1/tenant/backends/hpc/credentials").status_code == 404
    assert _put(api(foreign), GOOD.replace("hpc1", "theirs")).status_code == 200  # writes their own only
    _nothing_changed(tenant, before)
    assert TenantBackend.objects.get(tenant=other_tenant, name="hpc").config["cluster"] == "theirs"
    assert TenantBackend.objects.get(tenant=tenant, name="hpc").config["cluster"] == "hpc1"
