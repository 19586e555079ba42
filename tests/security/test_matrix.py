"""Every API endpoint x every role x own/other tenant/anonymous.

The endpoints come from the URL configuration: an endpoint without a row in MATRIX fails the
suite. Another tenant's objects answer 404 (never 403, which would confirm they exist); a role
without the right answers 403; anonymous callers 401. A refused call leaves no trace but its
audit entry: no run, no decision, no cancellation.
"""
from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from approvals.models import Decision, Gate
from gateway.models import Artefact, Run, TaskInstance
from gateway.worker import task_execute

from tests.engine.driver import workflow

ROLES = ["author", "analyst", "tenant_admin", "auditor", "platform_auditor"]
WORKFLOW = workflow(
    {"id": "make", "run": "echo hi > out.txt", "outputs": [{"name": "out", "path": "out.txt"}]},
    {"id": "check", "type": "gate", "needs": ["make"], "shows": ["make/out"]},
    name="matrix",
)
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
}
PUBLIC = {"workflow-schema"}


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
    from gateway.services import run_submit

    home, away = make_tenant(), make_tenant()
    users = {("home", r): make_member(home, r) for r in ROLES}
    # Every tenant role in the other tenant (not platform_auditor: reading all tenants' logs is that role's job).
    users[("away", "all")] = make_member(away, *[r for r in ROLES if r != "platform_auditor"])
    run = run_submit(tenant=home, actor=users[("home", "author")], source=WORKFLOW)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    yield {"home": home, "away": away, "users": users, "run": run, "gate": Gate.objects.get(run=run),
           "artefact": Artefact.objects.get(run=run, name="out")}
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
    elif name in ("gate-detail", "gate-decide"):
        kwargs = {"gate_id": w["gate"].id}
    url = reverse("run-list" if name == "run-submit" else name, kwargs=kwargs)
    if name in ("workflow-validate", "run-submit"):
        return client.post(url, data=WORKFLOW, content_type="application/yaml")
    if name == "gate-decide":
        return client.post(url, {"option": "confirm"}, format="json")
    if name == "run-cancel":
        return client.post(url, {}, format="json")
    return getattr(client, method)(url)


def state(w: dict) -> tuple:
    w["run"].refresh_from_db()
    return (Run.objects.count(), Decision.objects.count(), w["run"].state)


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
