"""The portal's hardening, each part a test that can fail: security headers on every response,
markup from users and workflows always escaped, SVG never inline, `next` only to local paths,
every POST form CSRF-protected and its refusal audited, and no inline script, handler or style
(the Content-Security-Policy would block them)."""
from __future__ import annotations

import inspect
import re
import uuid

import pytest
import yaml
from django.test import Client
from django.urls import resolve

from approvals.models import Gate
from audit.models import AuditEntry
from gateway.identity.views import _safe_next
from gateway.models import Artefact, Run, TaskInstance, Tenant
from gateway.portal import urls as portal_urls

from .conftest import ROLES
from .test_matrix import MATRIX, POST_ONLY, url_for

pytestmark = pytest.mark.django_db

P1 = "<script>alert(1)</script>"
P2 = '"><img src=x onerror=alert(1)>'
RAW = ["<script>alert(1)", "<img src=x", "onerror=alert(1)>"]
ESCAPED = ["&lt;script&gt;alert(1)&lt;/script&gt;", "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"]


def assert_escaped(html: str, where: str, *, both: bool = True) -> None:
    for raw in RAW:
        assert raw not in html, (where, raw)
    shown = [e for e in ESCAPED if e in html]
    assert shown if not both else len(shown) == 2, (where, "the payload was not rendered at all")


@pytest.fixture
def everyone(world, make_member):
    """A member of the home tenant with every role, cleared TOP SECRET (sees every page and form)."""
    return make_member(world["home"], *ROLES, username="home-all")


def _get(client, url):
    response = client.get(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


# --- headers ---------------------------------------------------------------------------------

CSP_NEEDS = ["default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
             "base-uri 'self'", "form-action 'self'"]


def assert_headers(response, where: str) -> None:
    csp = response.get("Content-Security-Policy", "")
    for directive in CSP_NEEDS:
        assert directive in csp, (where, directive, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert response["X-Content-Type-Options"] == "nosniff", where
    assert response["Referrer-Policy"] == "same-origin", where
    assert "no-store" in response.get("Cache-Control", ""), where


def test_every_portal_response_has_the_security_headers_and_no_inline_code(world, everyone, client):
    client.force_login(everyone)
    for name in sorted(set(MATRIX) - POST_ONLY):
        url = url_for(name, world)
        response, body = _get(client, url)
        assert response.status_code == 200, (name, response.status_code)
        assert_headers(response, name)
        if response["Content-Type"].startswith("text/html"):
            html = body.decode()
            assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), (name, "inline script")
            assert not re.search(r"\son[a-z]+\s*=", html), (name, "inline event handler")
            assert not re.search(r"\sstyle\s*=", html), (name, "inline style")
            assert "//" not in re.sub(r"(href|src)=\"/[^/]", "", " ".join(re.findall(r'(?:href|src)="[^"]*"', html))), \
                (name, "an asset or link off this site")
    # Refusals, the login page and anonymous redirects carry them too.
    author = Client()
    author.force_login(world["users"]["author"])
    assert_headers(author.get("/tenant/users/"), "403 page")
    assert_headers(author.get(f"/runs/{uuid.uuid4()}/"), "404 page")
    assert_headers(Client().get("/login/"), "login page")
    assert_headers(Client().get("/inbox/"), "anonymous redirect")
    assert_headers(Client().get("/inbox/partial/"), "anonymous partial")


def test_static_assets_are_ours_and_cacheable():
    from django.contrib.staticfiles import finders

    for asset in ("gatehouse/portal.js", "gatehouse/portal.css", "gatehouse/live.js"):
        text = open(finders.find(asset)).read()
        assert "http://" not in text and "https://" not in text, asset  # nothing fetched from elsewhere
        assert "eval(" not in text and "innerHTML = msg" not in text, asset


# --- escaping ----------------------------------------------------------------------------------

def _xss_workflow() -> str:
    make = "\n".join([
        "cat > out.json <<'EOF'",
        '[{"k": "<script>alert(1)</script>", "v": "\\"><img src=x onerror=alert(1)>"}]',
        "EOF",
        "cat > notes.txt <<'EOF'",
        f"{P1} {P2}",
        "EOF",
        "cat > pic.svg <<'EOF'",
        '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "EOF",
    ])
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "xss-check", "classification": "CONFIDENTIAL",
        "tasks": [
            {"id": "make", "run": make, "outputs": [
                {"name": "out", "path": "out.json"},
                {"name": "notes", "path": "notes.txt", "media_type": "text/plain"},
                {"name": "pic", "path": "pic.svg", "media_type": "image/svg+xml"}]},
            {"id": "check", "type": "gate", "needs": ["make"], "title": f"Title {P1}{P2}",
             "instructions": f"Read {P1} and {P2}", "shows": ["make/out", "make/notes", "make/pic"],
             "options": [{"name": "confirm", "label": f"Yes {P2}"}, {"name": "reject", "outcome": "reject",
                                                                     "label": f"No {P1}"}],
             "form": {"type": "object", "properties": {
                 "verdict": {"type": "string", "title": f"Verdict {P1}", "description": f"Say {P2}",
                             "enum": [P1, P2]},
                 "note": {"type": "string", "title": P2}}},
             "approvers": ["analyst"]},
        ]}, sort_keys=False)


def test_markup_from_workflows_artefacts_and_decisions_is_escaped(world, everyone, client):
    from gateway.services import run_submit
    from gateway.worker import task_execute

    run = run_submit(tenant=world["home"], actor=world["users"]["author"], source=_xss_workflow())
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    gate = Gate.objects.get(run=run)
    client.force_login(world["users"]["analyst"])
    html = client.get(f"/gates/{gate.id}/").content.decode()
    assert_escaped(html, "gate page")
    assert "Read &lt;script&gt;" in html and "Yes &quot;&gt;&lt;img" in html and "Verdict &lt;script&gt;" in html
    svg = Artefact.objects.get(run=run, name="pic")
    assert f'<img src="/artefacts/{svg.id}/content/"' not in html  # never inline, not even as an image
    content = client.get(f"/artefacts/{svg.id}/content/")
    assert content["Content-Type"] == "application/octet-stream" and content["X-Content-Type-Options"] == "nosniff"
    assert content["Content-Disposition"].startswith("attachment")
    for url in ("/inbox/", "/inbox/partial/", "/"):
        assert_escaped(client.get(url).content.decode(), url, both=False)
    # A decision whose comment and input carry markup, then the pages that show it.
    response = client.post(f"/gates/{gate.id}/", {"option": "confirm", "f_verdict": '"\\"><img src=x onerror=alert(1)>"',
                                                   "f_note": P1, "comment": f"{P1} {P2}"})
    assert response.status_code == 302, response.content[:500]
    assert_escaped(client.get(f"/gates/{gate.id}/").content.decode(), "decided gate page")
    assert_escaped(client.get("/decisions/").content.decode(), "my decisions", both=False)
    client.force_login(world["users"]["author"])
    for url in (f"/runs/{run.id}/", f"/runs/{run.id}/partial/"):  # no payload is shown there; none raw either
        html = client.get(url).content.decode()
        assert "xss-check" in html and not any(raw in html for raw in RAW), url


def test_echoed_workflow_and_backend_errors_are_escaped(world, client):
    client.force_login(world["users"]["tenant_admin"])
    source = ("apiVersion: gatehouse/v1\nkind: Workflow\nname: bad\ntasks:\n  - id: a\n    run: 'true'\n"
              f"    needs: ['{P1}{P2}']\n")
    response = client.post("/submit/", {"source": source, "action": "submit"})
    assert response.status_code == 400 and Run.objects.count() == 1
    assert_escaped(response.content.decode(), "submit errors")
    response = client.post("/tenant/backends/", {"source": f"apiVersion: gatehouse/v1\nkind: Backends\n{P2}: {P1}\n"})
    assert response.status_code == 400
    assert_escaped(response.content.decode(), "backend errors")


def test_usernames_groups_and_audit_data_are_escaped(world, client):
    from django.contrib.auth import get_user_model

    client.force_login(world["users"]["tenant_admin"])
    name = f"{P1}{P2}"
    response = client.post("/tenant/users/", {"action": "create", "username": name, "roles": ["auditor"],
                                              "groups": "night"})
    assert response.status_code == 302
    odd = get_user_model().objects.get(username=name)
    response = client.post("/tenant/approver-groups/", {"action": "add", "user_id": odd.pk, "group": P2})
    assert response.status_code == 302
    for url in ("/tenant/users/", "/tenant/approver-groups/", "/tenant/clearances/"):
        assert_escaped(client.get(url).content.decode(), url, both=False)
    client.force_login(odd)  # the odd name in the header, and as the actor of audit entries
    client.get("/audit/", {"event": P1})
    html = client.get("/audit/", {"event": "audit.searched"}).content.decode()
    assert_escaped(html, "audit log")
    client.force_login(world["users"]["auditor"])
    html = client.get("/audit/", {"object_type": "user"}).content.decode()  # member.created, groups_changed
    assert_escaped(html, "audit log of member changes")


# --- redirects ------------------------------------------------------------------------------------

EVIL = ["//evil.example", "https://evil.example", "/\\evil.example", "http://evil.example/inbox/",
        "\\\\evil.example", "javascript:alert(1)"]


def _local(location: str) -> bool:
    return location.startswith("/") and not location.startswith("//") and "\\" not in location \
        and "evil.example" not in location


def test_next_goes_to_local_paths_only(world, settings):
    from gateway.tenancy import member_create

    member_create(tenant=world["home"], username="pw-user", roles=["analyst"], password="a long pass phrase")
    for target in EVIL:
        client = Client()
        response = client.post(f"/login/?next={target}", {"username": "pw-user", "password": "a long pass phrase"})
        assert response.status_code == 302 and _local(response["Location"]), (target, response["Location"])
        response = client.post(f"/logout/?next={target}")
        assert response.status_code == 302 and _local(response["Location"]), (target, response["Location"])
    ok = Client().post("/login/?next=/runs/", {"username": "pw-user", "password": "a long pass phrase"})
    assert ok["Location"] == "/runs/"  # a local path is kept: the check above can fail

    class Request:  # the oidc login keeps `next` through the provider round trip
        def get_host(self):
            return "gatehouse.example"

        def is_secure(self):
            return True

    for target in EVIL:
        assert _safe_next(Request(), target) == settings.LOGIN_REDIRECT_URL, target
    assert _safe_next(Request(), "/gates/x/") == "/gates/x/"


# --- CSRF on every form ---------------------------------------------------------------------------

def _post_views() -> set[str]:
    """URL names of the portal views that act on POST (found in their source)."""
    names = set()
    for pattern in portal_urls.urlpatterns:
        source = inspect.getsource(inspect.unwrap(pattern.callback))
        if re.search(r"request\.method\s*[!=]=\s*\"POST\"", source):
            names.add(pattern.name)
    return names


def test_every_post_form_needs_the_csrf_token_and_its_refusal_is_audited(world, everyone):
    from audit.export_jobs import export_job_request

    export_job_request(user=everyone, tenant_slug=None)
    client = Client(enforce_csrf_checks=True)
    client.force_login(everyone)
    forms: dict[str, str] = {}  # action path -> the page it was found on
    for name in sorted(set(MATRIX) - POST_ONLY) + ["portal-audit-exports"]:
        url = url_for(name, world)
        response, body = _get(client, url)
        if not response["Content-Type"].startswith("text/html"):
            continue
        for attrs in re.findall(r"<form\b([^>]*)>", body.decode()):
            if 'method="post"' not in attrs:
                continue
            action = re.search(r'action="([^"]*)"', attrs)
            forms.setdefault(action.group(1) if action else url, url)
    found = set()
    for action in forms:
        found.add(resolve(action.split("?")[0]).url_name)
    assert _post_views() - found == set(), "a POST view whose form was not found on any page"
    assert "logout" in found and len(_post_views()) >= 9
    state = (Run.objects.filter(state="RUNNING").count(), Tenant.objects.count())
    for action, page in sorted(forms.items()):
        before_ok = AuditEntry.objects.filter(actor=everyone, outcome="success").exclude(event="audit.searched").count()
        before = AuditEntry.objects.filter(event="access.denied", body__error="csrf_failed").count()
        response = client.post(action, {"action": "create", "username": "csrf-intruder", "slug": "csrf-tenant",
                                        "name": "x", "option": "confirm", "source": "x", "user_id": everyone.pk,
                                        "group": "g", "roles": ["analyst"]})
        assert response.status_code == 403, (action, page)
        assert AuditEntry.objects.filter(event="access.denied", body__error="csrf_failed").count() == before + 1, action
        assert AuditEntry.objects.filter(actor=everyone, outcome="success").exclude(
            event="audit.searched").count() == before_ok, action
    assert (Run.objects.filter(state="RUNNING").count(), Tenant.objects.count()) == state
    assert not Tenant.objects.filter(slug="csrf-tenant").exists()
    # The login form of the development login is protected too.
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post("/login/", {"username": "x", "password": "y"}).status_code == 403


# --- administration: roles, groups, tenants -------------------------------------------------------

def test_a_tenant_admin_changes_roles_and_groups_effective_next_request(world, client):
    from gateway.models import Membership

    admin, analyst = world["users"]["tenant_admin"], world["users"]["analyst"]
    other = Client()
    other.force_login(analyst)
    assert other.get("/tenant/users/").status_code == 403
    client.force_login(admin)
    page = client.get("/tenant/users/").content.decode()
    assert f'name="user_id" value="{admin.pk}"' not in page  # no form to change oneself
    response = client.post("/tenant/users/", {"action": "roles", "user_id": analyst.pk,
                                              "roles": ["analyst", "tenant_admin"]})
    assert response.status_code == 302
    assert Membership.objects.get(user=analyst).roles == ["analyst", "tenant_admin"]
    entry = AuditEntry.objects.get(event="member.roles_changed", object_id=str(analyst.pk))
    assert entry.body["data"]["after"] == ["analyst", "tenant_admin"] and entry.actor_id == admin.pk
    assert other.get("/tenant/users/").status_code == 200  # the member's next request

    response = client.post("/tenant/users/", {"action": "groups", "user_id": analyst.pk, "groups": "night, day"})
    assert response.status_code == 302 and Membership.objects.get(user=analyst).groups == ["day", "night"]
    assert AuditEntry.objects.filter(event="member.groups_changed", object_id=str(analyst.pk)).count() == 1

    # Never one's own roles or groups: refused, audited, unchanged.
    for data in ({"action": "roles", "user_id": admin.pk, "roles": ["author"]},
                 {"action": "groups", "user_id": admin.pk, "groups": "x"}):
        denied = AuditEntry.objects.filter(event="access.denied", actor=admin).count()
        assert client.post("/tenant/users/", data).status_code == 403
        assert AuditEntry.objects.filter(event="access.denied", actor=admin).count() == denied + 1
    mine = Membership.objects.get(user=admin)
    assert mine.roles == ["tenant_admin"] and mine.groups == []
    # Another tenant's member: not found, unchanged.
    away = Membership.objects.get(user=world["users"]["away"]).roles
    assert client.post("/tenant/users/", {"action": "roles", "user_id": world["users"]["away"].pk,
                                          "roles": ["analyst"]}).status_code == 404
    assert Membership.objects.get(user=world["users"]["away"]).roles == away


def test_the_approver_groups_page_adds_and_removes_members(world, client):
    from gateway.models import Membership

    admin, analyst = world["users"]["tenant_admin"], world["users"]["analyst"]
    client.force_login(admin)
    assert "No member belongs to an approver group" in client.get("/tenant/approver-groups/").content.decode()
    assert client.post("/tenant/approver-groups/", {"action": "add", "user_id": analyst.pk,
                                                    "group": "night-shift"}).status_code == 302
    assert Membership.objects.get(user=analyst).groups == ["night-shift"]
    html = client.get("/tenant/approver-groups/").content.decode()
    row = html.split('data-group="night-shift"')[1].split("</tr>")[0]
    assert analyst.username in row and f'aria-label="Remove {analyst.username} from night-shift"' in row
    assert client.post("/tenant/approver-groups/", {"action": "remove", "user_id": analyst.pk,
                                                    "group": "night-shift"}).status_code == 302
    assert Membership.objects.get(user=analyst).groups == []
    assert AuditEntry.objects.filter(event="member.groups_changed", object_id=str(analyst.pk)).count() == 2
    # Refused: one's own groups, an empty name, another tenant's member; nothing changes.
    assert client.post("/tenant/approver-groups/", {"action": "add", "user_id": admin.pk, "group": "g"}).status_code == 403
    assert client.post("/tenant/approver-groups/", {"action": "add", "user_id": analyst.pk, "group": " "}).status_code == 400
    assert client.post("/tenant/approver-groups/", {"action": "add", "user_id": world["users"]["away"].pk,
                                                    "group": "g"}).status_code == 404
    assert Membership.objects.get(user=admin).groups == [] and Membership.objects.get(user=analyst).groups == []
    assert Membership.objects.get(user=world["users"]["away"]).groups == []


def test_a_platform_admin_creates_a_tenant_and_bad_slugs_are_refused(world, client):
    client.force_login(world["users"]["platform_admin"])
    html = client.get("/platform/tenants/").content.decode()
    home_row = html.split('data-tenant="home"')[1].split("</tr>")[0]
    assert "<td data-members>7</td>" in home_row  # one member per role, and the low-cleared one
    for slug, error in [("Bad Slug!", "Letters, digits"), ("", "Letters, digits"), ("home", "exists"),
                        ("x" * 65, "At most 64")]:
        before = Tenant.objects.count()
        response = client.post("/platform/tenants/", {"slug": slug, "name": "A name"})
        assert response.status_code == 400 and error in response.content.decode(), slug
        assert 'aria-invalid="true"' in response.content.decode()
        assert Tenant.objects.count() == before
    assert AuditEntry.objects.filter(event="request.refused", actor=world["users"]["platform_admin"]).count() == 4
    response = client.post("/platform/tenants/", {"slug": "new-one", "name": "New One"})
    assert response.status_code == 302
    tenant = Tenant.objects.get(slug="new-one")
    assert AuditEntry.objects.filter(event="tenant.created", tenant=tenant,
                                     actor=world["users"]["platform_admin"]).exists()
    row = client.get("/platform/tenants/").content.decode().split('data-tenant="new-one"')[1].split("</tr>")[0]
    assert "New One" in row and "<td data-members>0</td>" in row


# --- dates in the auditor's forms -----------------------------------------------------------------

def test_dates_in_search_and_export_forms_are_read_or_refused_never_a_500(world, client, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    from audit.models import AuditExportJob

    client.force_login(world["users"]["auditor"])
    assert client.get("/audit/", {"since": "2026-01-31", "until": "2099-01-01T12:00"}).status_code == 200
    for bad in ("2026-02-30", "2026-13-01T00:00", "yesterday"):
        response = client.get("/audit/", {"since": bad})
        assert response.status_code == 400 and "not a date" in response.content.decode(), bad
        response = client.post("/audit/exports/", {"since": bad})
        assert response.status_code == 400 and "not a date" in response.content.decode(), bad
    assert not AuditExportJob.objects.exists()
    assert client.post("/audit/exports/", {"since": "2026-01-31", "until": "2099-01-01T12:00"}).status_code == 302
    job = AuditExportJob.objects.get()
    assert job.since.isoformat() == "2026-01-31T00:00:00+00:00" and job.until.year == 2099
    # A filter value is echoed back escaped.
    html = client.get("/audit/", {"event": "a&b#c"}).content.decode()
    assert 'value="a&amp;b#c"' in html
