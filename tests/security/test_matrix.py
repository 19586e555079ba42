"""Every API endpoint x every role x own/other tenant/anonymous.

The endpoints come from the URL configuration: an endpoint without a row in MATRIX fails the
suite. Another tenant's objects answer 404 (never 403, which would confirm they exist); a role
without the right answers 403; anonymous callers 401. A refused call leaves no trace but its
audit entry: no run, no decision, no cancellation.
"""
from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from approvals.models import Decision, Gate, GateUserObjectPermission
from approvals.signing.models import ApproverKey
from executors.models import BackendConfiguration, BackendCredentialSet
from gateway.models import Artefact, Clearance, Membership, Run, TaskInstance
from gateway.worker import task_execute

from tests.engine.driver import workflow

ROLES = ["author", "analyst", "tenant_admin", "auditor", "platform_auditor"]
WORKFLOW = workflow(
    {"id": "make", "run": "echo hi > out.txt", "outputs": [{"name": "out", "path": "out.txt"}]},
    {"id": "check", "type": "gate", "needs": ["make"], "shows": ["make/out"]},
    name="matrix",
).replace("apiVersion: gatehouse/v1\n", "apiVersion: gatehouse/v1\nclassification: SECRET\n")
ANY = set(ROLES)
# url name -> (method, roles of the same tenant allowed, status when allowed, status for another tenant)
MATRIX = {
    "workflow-validate": ("post", ANY, 200, 200),
    "workflow-schema": ("get", ANY, 200, 200),  # public: the schema of the file format
    "run-list": ("get", ANY, 200, 200),
    "run-submit": ("post", {"author", "tenant_admin"}, 201, None),  # same URL as run-list; checked separately
    "run-detail": ("get", ANY, 200, 404),
    "run-cancel": ("post", {"author", "tenant_admin"}, 200, 404),
    "run-artefacts": ("get", ANY, 200, 404),
    "artefact-detail": ("get", ANY, 200, 404),
    "artefact-content": ("get", ANY, 200, 404),
    "gate-list": ("get", ANY, 200, 200),
    "gate-detail": ("get", ANY, 200, 404),
    "gate-decide": ("post", {"analyst"}, 201, 404),
    "audit-entries": ("get", {"auditor", "platform_auditor"}, 200, None),
    "audit-export": ("get", {"auditor", "platform_auditor"}, 200, None),
    "audit-checkpoint-latest": ("get", {"auditor", "platform_auditor"}, 200, None),
    "gate-document": ("get", {"analyst"}, 200, 404),  # what an approver would sign
    "gate-receipt": ("get", ANY, 409, 404),  # the world's gate is not decided yet: 409 for whoever may see it
    "my-keys": ("get", ANY, 200, 200),  # one's own keys only
    "my-key-rotate": ("post", ANY, 201, 201),  # one's own key
    "key-revoke": ("post", {"tenant_admin", "analyst"}, 200, 404),  # the home analyst's key: owner or tenant admin
    "gate-relabel": ("post", {"tenant_admin"}, 200, 404),
    "gate-assignees": ("get", {"tenant_admin"}, 200, 404),
    "gate-assign": ("post", {"tenant_admin"}, 201, 404),  # same URL as gate-assignees
    "gate-assignee-detail": ("delete", {"tenant_admin"}, 200, 404),  # unassign the member assigned in `world`
    "clearance-list": ("get", {"tenant_admin"}, 200, 200),  # their own tenant's clearances only
    "clearance-set": ("post", {"tenant_admin"}, 200, 404),  # same URL as clearance-list; the target is a home analyst
    "clearance-detail": ("get", {"tenant_admin"}, 200, 404),
    "clearance-revoke": ("delete", {"tenant_admin"}, 200, 404),  # same URL as clearance-detail
    "tenant-user-list": ("get", {"tenant_admin"}, 200, 200),  # their own tenant's users only
    "tenant-user-create": ("post", {"tenant_admin"}, 201, 201),  # same URL as tenant-user-list; in their own tenant
    "tenant-user-detail": ("get", {"tenant_admin"}, 200, 404),
    "tenant-user-update": ("patch", {"tenant_admin"}, 200, 404),  # same URL as tenant-user-detail
    "tenant-backends": ("get", {"tenant_admin"}, 200, 200),  # their own tenant's configuration only
    "tenant-backends-set": ("put", {"tenant_admin"}, 200, 200),  # same URL as tenant-backends; their own tenant
    "backend-credentials": ("get", {"tenant_admin"}, 200, 404),  # the home tenant's `hpc`: no such backend elsewhere
    "backend-credentials-set": ("put", {"tenant_admin"}, 200, 404),  # same URL as backend-credentials
}
# Rows that share another row's URL (another method of the same endpoint).
SAME_URL = {"run-submit": "run-list", "gate-assign": "gate-assignees", "clearance-set": "clearance-list", "clearance-revoke": "clearance-detail", "tenant-user-create": "tenant-user-list", "tenant-user-update": "tenant-user-detail", "tenant-backends-set": "tenant-backends", "backend-credentials-set": "backend-credentials"}
PUBLIC = {"workflow-schema"}
BACKENDS = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - {name: local, kind: local, max_classification: TOP SECRET}
  - {name: hpc, kind: slurm, max_classification: CONFIDENTIAL, config: {cluster: hpc1}}
"""


def api_url_names() -> set[str]:
    names = set()

    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern) and (prefix + str(p.pattern)).startswith("api/v1/"):
                names.add(p.name)

    walk(get_resolver().url_patterns)
    return names


def test_every_api_endpoint_is_in_the_matrix():
    missing = api_url_names() - set(MATRIX)
    assert not missing, f"endpoints without authorization rows: {sorted(missing)}"


@pytest.fixture
def world(db, recording, settings, tmp_path, make_tenant, make_member):
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "witness")}
    from audit.keys import forget_signer
    from audit.witness import _witness

    forget_signer()
    _witness.cache_clear()
    settings.GATEHOUSE_CREDENTIALS = {**settings.GATEHOUSE_CREDENTIALS, "STORE": "local",
                                      "LOCAL_DIR": str(tmp_path / "credentials"),
                                      "MASTER_KEY_FILE": str(tmp_path / "credentials.key")}
    from executors.backends import backends_configure
    from executors.credentials import forget_credential_store

    forget_credential_store()
    from approvals.services import gate_assign
    from approvals.signing.keys import approver_key_enrol
    from gateway.services import run_submit

    home, away = make_tenant(), make_tenant()
    users = {("home", r): make_member(home, r) for r in ROLES}
    # Every tenant role in the other tenant (not platform_auditor: reading all tenants' logs is that role's job).
    users[("away", "all")] = make_member(away, *[r for r in ROLES if r != "platform_auditor"])
    # Every role in the home tenant, but cleared below the run's SECRET.
    users[("home", "low")] = make_member(home, *ROLES, clearance="CONFIDENTIAL")
    backends_configure(tenant=home, actor=None, source=BACKENDS)
    run = run_submit(tenant=home, actor=users[("home", "author")], source=WORKFLOW)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    gate = Gate.objects.get(run=run)
    users[("home", "assigned")] = make_member(home, "author")  # assigned to the gate by a per-object grant
    gate_assign(gate=gate, user=users[("home", "assigned")], actor=None)
    yield {"home": home, "away": away, "users": users, "run": run, "gate": gate,
           "artefact": Artefact.objects.get(run=run, name="out"),
           "clearance": Clearance.objects.get(user=users[("home", "analyst")]),
           "key": approver_key_enrol(users[("home", "analyst")])}
    forget_signer()
    _witness.cache_clear()


def call(client, name: str, w: dict):
    from django.urls import reverse

    method = MATRIX[name][0]
    kwargs = {}
    if name in ("run-detail", "run-cancel", "run-artefacts"):
        kwargs = {"run_id": w["run"].id}
    elif name in ("artefact-detail", "artefact-content"):
        kwargs = {"artefact_id": w["artefact"].id}
    elif name in ("gate-detail", "gate-decide", "gate-assignees", "gate-assign", "gate-relabel", "gate-document",
                  "gate-receipt"):
        kwargs = {"gate_id": w["gate"].id}
    elif name == "gate-assignee-detail":
        kwargs = {"gate_id": w["gate"].id, "user_id": w["users"][("home", "assigned")].pk}
    elif name == "key-revoke":
        kwargs = {"key_id": w["key"].key_id}
    elif name in ("clearance-detail", "clearance-revoke"):
        kwargs = {"clearance_id": w["clearance"].id}
    elif name in ("tenant-user-detail", "tenant-user-update"):
        kwargs = {"user_id": w["users"][("home", "analyst")].pk}
    elif name in ("backend-credentials", "backend-credentials-set"):
        kwargs = {"name": "hpc"}
    url = reverse(SAME_URL.get(name, name), kwargs=kwargs)
    if name in ("workflow-validate", "run-submit"):
        return client.post(url, data=WORKFLOW, content_type="application/yaml")
    if name == "gate-decide":
        return client.post(url, {"option": "confirm"}, format="json")
    if name == "run-cancel":
        return client.post(url, {}, format="json")
    if name == "key-revoke":
        return client.post(url, {"reason": "test revocation"}, format="json")
    if name == "gate-document":
        return client.get(url, {"option": "confirm"})
    if name == "gate-relabel":
        return client.post(url, {"classification": "TOP SECRET"}, format="json")
    if name == "gate-assign":
        return client.post(url, {"user_id": w["users"][("home", "auditor")].pk}, format="json")
    if name == "clearance-set":
        target = w["users"][("home", "analyst")]
        return client.post(url, {"user_id": target.pk, "max_level": "TOP SECRET", "compartments": ["X"]}, format="json")
    if name == "tenant-user-create":
        return client.post(url, {"username": "newcomer", "roles": ["analyst"]}, format="json")
    if name == "tenant-user-update":
        return client.patch(url, {"roles": ["analyst", "author"], "enabled": False}, format="json")
    if name == "tenant-backends-set":
        return client.put(url, data=BACKENDS.replace("hpc1", "hpc2"), content_type="application/yaml")
    if name == "backend-credentials-set":
        return client.put(url, {"credentials": {"jwt": "hpc-credential-value"}}, format="json")
    return getattr(client, method)(url)


def state(w: dict) -> tuple:
    w["run"].refresh_from_db()
    home_members = tuple(Membership.objects.filter(tenant=w["home"]).order_by("user_id")
                         .values_list("user_id", "roles", "user__is_active"))
    clearances = tuple(Clearance.objects.filter(tenant=w["home"]).order_by("id").values_list("id", "revision", "status"))
    grants = tuple(GateUserObjectPermission.objects.order_by("id").values_list("user_id", "content_object_id"))
    gate = Gate.objects.values_list("classification", "revision").get(id=w["gate"].id)
    keys = tuple(ApproverKey.objects.filter(user__membership__tenant=w["home"]).order_by("key_id")
                 .values_list("key_id", "revoked_at"))
    backends = (tuple(BackendConfiguration.objects.filter(tenant=w["home"]).values_list("revision", "digest")),
                tuple(BackendCredentialSet.objects.filter(tenant=w["home"]).values_list("backend", "version")))
    return (Run.objects.count(), Decision.objects.count(), w["run"].state, home_members, clearances, grants, gate,
            keys, backends)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_anonymous_callers(world, api, name):
    before = state(world)
    response = call(api(), name, world)
    assert response.status_code == (200 if name in PUBLIC else 401), response.content[:200]
    assert state(world) == before


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_own_tenant_by_role(world, api, name, role):
    _, allowed, ok_status, _ = MATRIX[name]
    before = state(world)
    response = call(api(world["users"][("home", role)]), name, world)
    if role in allowed:
        assert response.status_code == ok_status, (name, role, response.content[:300])
    else:
        assert response.status_code == 403, (name, role, response.content[:300])
        assert state(world) == before  # refused: nothing written


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_another_tenant_sees_nothing(world, api, name):
    """A member of another tenant holding every tenant role."""
    _, _, _, foreign_status = MATRIX[name]
    before = state(world)
    response = call(api(world["users"][("away", "all")]), name, world)
    body = response.content if not getattr(response, "streaming", False) else b"".join(response.streaming_content)
    if foreign_status is None:  # their own scope: allowed, but nothing of the home tenant in it
        assert response.status_code in (200, 201), (name, response.content[:300])
    else:
        assert response.status_code == foreign_status, (name, response.content[:300])
    for secret in (str(world["run"].id), str(world["gate"].id), str(world["artefact"].id), world["home"].slug):
        assert secret.encode() not in body, (name, secret)
    if name not in ("run-submit", "workflow-validate"):
        assert state(world) == before


# What a member of the home tenant holding every role, but cleared only to CONFIDENTIAL, gets from
# each endpoint: the SECRET run, its tasks, gate and artefacts are not found; submitting a SECRET
# workflow and exporting a log that holds SECRET entries are refused; everything else works as for
# the role, with nothing of the run in it.
BELOW_CLEARANCE = {
    **{name: 404 for name in ("run-detail", "run-cancel", "run-artefacts", "artefact-detail", "artefact-content",
                              "gate-detail", "gate-decide", "gate-assignees", "gate-assign", "gate-assignee-detail", "gate-relabel", "gate-document",
                              "gate-receipt")},
    "run-submit": 403,
    "audit-export": 403,
}
WRITES = {"workflow-validate", "my-key-rotate", "key-revoke", "gate-relabel", "gate-assign", "gate-assignee-detail", "clearance-set", "clearance-revoke", "tenant-user-create", "tenant-user-update", "tenant-backends-set", "backend-credentials-set"}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_insufficient_clearance_sees_nothing_above_it(world, api, name):
    before = state(world)
    response = call(api(world["users"][("home", "low")]), name, world)
    body = response.content if not getattr(response, "streaming", False) else b"".join(response.streaming_content)
    expected = BELOW_CLEARANCE.get(name, MATRIX[name][2])
    assert response.status_code == expected, (name, response.content[:300])
    if expected == 403 and name in ("run-submit", "audit-export"):
        assert response.json()["code"] == "label_above_clearance"
    leaks = [str(world["run"].id), str(world["gate"].id), str(world["artefact"].id), '"SECRET"']
    if name not in ("workflow-validate", "workflow-schema"):  # these echo the posted file / the file format
        leaks.append("matrix")
    for secret in leaks:
        assert secret.encode() not in body, (name, secret)
    if name not in WRITES:
        assert state(world) == before


@pytest.mark.parametrize("page", ["run", "gate"])
def test_portal_pages_hide_other_tenants_objects(world, client, page):
    url = f"/runs/{world['run'].id}/" if page == "run" else f"/gates/{world['gate'].id}/"
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    client.force_login(world["users"][("away", "all")])
    foreign = client.get(url)
    assert foreign.status_code == 404
    assert str(world["run"].id).encode() not in foreign.content and b"matrix" not in foreign.content
    if page == "gate":
        refused = client.post(url, {"option": "confirm"})
        assert refused.status_code == 404 and Decision.objects.count() == 0
    client.force_login(world["users"][("home", "analyst")])
    assert client.get(url).status_code == 200
