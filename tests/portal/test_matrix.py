"""Every portal page x every role x own tenant / other tenant / anonymous, generated from the URL
configuration: a page without a row fails the suite. Allowed: 200; wrong role: a 403 page; another
tenant's object: 404; anonymous: to the login page (a live region's partial: 401). Refusals are
audited and write nothing. A SECRET gate never appears in a CONFIDENTIAL-cleared analyst's HTML."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, reverse

from approvals.models import Decision
from audit.models import AuditEntry
from executors.models import BackendConfiguration
from gateway.models import Clearance, Run
from gateway.portal import urls as portal_urls

from .conftest import ROLES, SECRET_TITLE

pytestmark = pytest.mark.django_db
ANY = set(ROLES)
ADMIN, AUDIT, WRITERS = {"tenant_admin"}, {"auditor", "platform_auditor"}, {"author", "tenant_admin"}
# url name -> (roles of the same tenant allowed, what another tenant's member gets: 404 for an
# object of this tenant, "own" for a page of their own tenant's data)
MATRIX = {
    "home": (ANY, "own"),
    "portal-inbox": (ANY, "own"),
    "portal-inbox-partial": (ANY, "own"),
    "gate-page": (ANY, 404),
    "portal-gate-partial": (ANY, 404),
    "portal-decisions": (ANY, "own"),
    "portal-artefact-content": (ANY, 404),
    "portal-runs": (ANY, "own"),
    "run-page": (ANY, 404),
    "portal-run-partial": (ANY, 404),
    "portal-run-cancel": (WRITERS, 404),  # POST only; see test_writes
    "portal-submit": (WRITERS, "own"),
    "portal-tenant-users": (ADMIN, "own"),
    "portal-tenant-clearances": (ADMIN, "own"),
    "portal-tenant-groups": (ADMIN, "own"),
    "portal-tenant-backends": (ADMIN, "own"),
    "portal-platform-tenants": ({"platform_admin"}, "own"),
    "portal-audit": (AUDIT, "own"),
    "portal-audit-exports": (AUDIT, "own"),
    # An export job of the home tenant's log: platform auditors read every log (the other tenant's
    # member holds that role too), so they see it; nobody else of another tenant does (test_exports.py).
    "portal-audit-export": (AUDIT, "own"),
    "portal-audit-export-partial": (AUDIT, "own"),
    "portal-audit-export-download": (AUDIT, "own"),
}
PARTIALS = {"portal-inbox-partial", "portal-gate-partial", "portal-run-partial", "portal-audit-export-partial"}
EXPORT_PAGES = {"portal-audit-export", "portal-audit-export-partial", "portal-audit-export-download"}
POST_ONLY = {"portal-run-cancel"}


def portal_names() -> set[str]:
    return {p.name for p in portal_urls.urlpatterns if isinstance(p, URLPattern)}


def url_for(name: str, w: dict) -> str:
    kwargs = {}
    if name in ("gate-page", "portal-gate-partial"):
        kwargs = {"gate_id": w["gate"].id}
    elif name in ("run-page", "portal-run-partial", "portal-run-cancel"):
        kwargs = {"run_id": w["run"].id}
    elif name == "portal-artefact-content":
        kwargs = {"artefact_id": w["artefact"].id}
    elif name in EXPORT_PAGES:
        kwargs = {"job_id": done_export(w).id}
    return reverse(name, kwargs=kwargs)


def done_export(w: dict):
    """A finished export of the home tenant's log, requested by its auditor (made once per test)."""
    from audit.export_jobs import export_job_request, export_job_run

    if "export" not in w:
        w["export"] = export_job_request(user=w["users"]["auditor"], tenant_slug=None)
        assert export_job_run(w["export"].id) == "DONE"
    return w["export"]


def test_every_portal_page_is_in_the_matrix():
    assert portal_names() - set(MATRIX) == set(), "portal pages without authorization rows"
    assert set(MATRIX) - portal_names() == set()


def denials(user) -> int:
    return AuditEntry.objects.filter(event="access.denied", actor=user).count()


@pytest.mark.parametrize("name", sorted(set(MATRIX) - POST_ONLY))
def test_page(name, world, client):
    allowed, other = MATRIX[name]
    url = url_for(name, world)
    anonymous = client.get(url)
    if name in PARTIALS:
        assert anonymous.status_code == 401
    else:
        assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/?next=")
    for role in ROLES:
        user = world["users"][role]
        client.force_login(user)
        before = denials(user)
        response = client.get(url)
        if role in allowed:
            assert response.status_code == 200, (name, role, response.content[:300])
        else:
            assert response.status_code == 403, (name, role)
            assert b"Not allowed" in response.content and denials(user) == before + 1
    away = world["users"]["away"]  # every role, of the other tenant
    client.force_login(away)
    before = denials(away)
    response = client.get(url)
    if other == 404:
        assert response.status_code == 404 and denials(away) == before + 1
    else:
        assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert SECRET_TITLE.encode() not in body and str(world["gate"].id).encode() not in body


def _posts(w):
    analyst = w["users"]["analyst"]
    gate, run = w["gate"], w["run"]
    return {
        # name, url, data, roles allowed, "nothing written" check
        "decide": (f"/gates/{gate.id}/", {"option": "confirm", "f_verdict": '"benign"'}, {"analyst"},
                   lambda: not Decision.objects.filter(gate=gate).exists()),
        "cancel": (f"/runs/{run.id}/cancel/", {}, WRITERS, lambda: Run.objects.get(id=run.id).state == "RUNNING"),
        "submit": ("/submit/", {"action": "submit", "source": "apiVersion: gatehouse/v1\nkind: Workflow\nname: x\n"
                                "tasks:\n  - id: a\n    run: 'true'\n"}, WRITERS, lambda: Run.objects.filter(tenant=w["home"]).count() == 1),
        "clearance": ("/tenant/clearances/", {"action": "set", "user_id": analyst.pk, "max_level": "UNCLASSIFIED"},
                      ADMIN, lambda: Clearance.objects.get(user=analyst).max_level == "TOP SECRET"),
        "backends": ("/tenant/backends/", {"source": "apiVersion: gatehouse/v1\nkind: Backends\nbackends: []\n"},
                     ADMIN, lambda: not BackendConfiguration.objects.filter(tenant=w["home"]).exists()),
        "users": ("/tenant/users/", {"action": "create", "username": "intruder", "roles": ["analyst"]}, ADMIN,
                  lambda: not get_user_model().objects.filter(username="intruder").exists()),
    }


@pytest.mark.parametrize("what", ["decide", "cancel", "submit", "clearance", "backends", "users"])
def test_writes(what, world, client):
    """Wrong role and other tenant first (refused, audited, nothing written), then one allowed role."""
    url, data, allowed, untouched = _posts(world)[what]
    response = client.post(url, data)
    assert response.status_code == 302 and response["Location"].startswith("/login/") and untouched()
    for role in ROLES:
        if role in allowed:
            continue
        user = world["users"][role]
        client.force_login(user)
        before = AuditEntry.objects.filter(actor=user, outcome="denied").count()
        assert client.post(url, data).status_code == 403, (what, role)
        assert untouched(), (what, role)
        assert AuditEntry.objects.filter(actor=user, outcome="denied").count() == before + 1
    client.force_login(world["users"]["away"])
    response = client.post(url, {**data, "username": "intruder-away"} if what == "users" else data)
    if what == "users":  # created in the caller's own tenant: the tenant never comes from the request
        assert get_user_model().objects.get(username="intruder-away").membership.tenant == world["away"]
    if what in ("decide", "cancel"):
        assert response.status_code == 404
    assert untouched()  # another tenant's admin changes their own tenant, never this one
    client.force_login(world["users"][sorted(allowed)[0]])
    assert client.post(url, data).status_code == 302
    assert not untouched()  # the same request by an allowed role does write: the checks above can fail


LOW_PAGES = ["/", "/inbox/", "/inbox/partial/", "/runs/", "/decisions/"]


def test_a_secret_gate_never_reaches_a_confidential_analysts_html(world, client):
    low = world["users"]["low"]  # every role, cleared to CONFIDENTIAL only
    client.force_login(low)
    gate, run = world["gate"], world["run"]
    secrets = [SECRET_TITLE.encode(), str(gate.id).encode(), str(run.id).encode(), b"portal-world"]
    for url in LOW_PAGES + ["/audit/", "/tenant/approver-groups/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert not any(s in response.content for s in secrets), url
        assert b">SECRET<" not in response.content
    for url in [f"/gates/{gate.id}/", f"/gates/{gate.id}/partial/", f"/runs/{run.id}/", f"/runs/{run.id}/partial/",
                f"/artefacts/{world['artefact'].id}/content/"]:
        response = client.get(url)
        assert response.status_code == 404, url
        assert not any(s in response.content for s in secrets[:1] + secrets[3:]), url
