"""The portal's main pages in Chromium at a laptop's size: axe-core (injected from a local file, never
a CDN) finds no serious or critical violation; every page has one h1, the landmarks, a label for
every control and a visible focus ring; the Content-Security-Policy blocks an inline script and the
console fixture reports it. An auditor's export shows its progress live and downloads a bundle the
offline verifier accepts; a tenant admin changes a member's roles and groups; a platform admin
creates a tenant."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry, AuditExportJob
from gateway.models import Membership, Tenant
from gateway.services import run_submit

from .conftest import ROOT, screenshot
from .test_portal_browser import acme, author, open_gate, person, workflow  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.integration]
AXE = ROOT / "var" / "test-tools" / "node_modules" / "axe-core" / "axe.min.js"

CONTROLS_WITHOUT_LABEL = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => el.type !== 'hidden' && !el.closest('[hidden]'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML.slice(0, 120))"""
LANDMARKS = """() => ({h1: document.querySelectorAll('h1').length, main: document.querySelectorAll('main').length,
  nav: document.querySelectorAll('nav').length, header: document.querySelectorAll('header').length,
  footer: document.querySelectorAll('footer').length, lang: document.documentElement.lang,
  banners: Array.from(document.querySelectorAll('[data-banner]')).map(b => b.textContent.trim()),
  scrollX: document.documentElement.scrollWidth - document.documentElement.clientWidth})"""


def axe_violations(page) -> list[dict]:
    page.evaluate(AXE.read_text())  # evaluated over the debugging protocol: the page's CSP is not involved
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    return [v for v in result if v["impact"] in ("serious", "critical")]


def check_page(page, name: str, base: str, path: str) -> None:
    page.goto(f"{base}{path}")
    facts = page.evaluate(LANDMARKS)
    assert facts["h1"] == 1, (path, facts)
    assert facts["main"] == 1 and facts["nav"] >= 1 and facts["header"] >= 1 and facts["footer"] >= 1, (path, facts)
    assert facts["lang"] == "en" and len(facts["banners"]) == 2 and facts["banners"][0] == facts["banners"][1], path
    assert facts["scrollX"] <= 0, (path, "the page scrolls sideways at 1366 px")
    assert page.evaluate(CONTROLS_WITHOUT_LABEL) == [], path
    page.keyboard.press("Tab")  # the skip link first, with a visible focus ring
    focused = page.evaluate("""() => { const el = document.activeElement, s = getComputedStyle(el);
        return {href: el.getAttribute('href'), outline: s.outlineStyle, width: parseFloat(s.outlineWidth)}; }""")
    assert focused["href"] == "#main" and focused["outline"] != "none" and focused["width"] >= 2, (path, focused)
    if AXE.exists():
        assert axe_violations(page) == [], path
    screenshot(page, f"a11y-{name}")


def test_the_main_pages_are_accessible_at_laptop_size(live, person, acme, author):  # noqa: F811
    if not AXE.exists():
        pytest.fail(f"{AXE} is absent: deploy/test-browser.sh installs axe-core with npm")
    page, _ = person("analyst", "author", "tenant_admin", "auditor", "platform_admin", level="TOP SECRET", next_url="/")
    run = run_submit(tenant=acme, actor=author, source=workflow("a11y", "SECRET", "Accessible gate"))
    gate = open_gate(run)
    pages = {"home": "/", "inbox": "/inbox/", "gate": f"/gates/{gate.id}/", "run": f"/runs/{run.id}/",
             "runs": "/runs/", "decisions": "/decisions/", "submit": "/submit/", "users": "/tenant/users/",
             "clearances": "/tenant/clearances/", "groups": "/tenant/approver-groups/",
             "backends": "/tenant/backends/", "tenants": "/platform/tenants/", "audit": "/audit/",
             "exports": "/audit/exports/", "not-found": "/runs/00000000-0000-0000-0000-000000000000/"}
    for name, path in pages.items():
        check_page(page, name, live["base"], path)


def test_the_policy_blocks_an_inline_script_and_the_fixture_sees_it(live, person, console_errors):
    page, _ = person("analyst", level=None)
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                             document.body.appendChild(s); }""")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__ran === undefined")
    blocked = [e for e in console_errors if "CSP violation: script-src" in e[0]]
    assert blocked, console_errors
    console_errors.clear()  # seen and expected here; any other test fails on one


def test_an_auditor_follows_an_export_and_downloads_a_bundle_that_verifies(live, person, acme, author, tmp_path):  # noqa: F811
    run_submit(tenant=acme, actor=author, source=workflow("to-export", "SECRET", "Exported gate"))
    page, auditor = person("auditor", level="TOP SECRET", next_url="/audit/exports/")
    page.get_by_role("button", name="Request the export").click()
    page.locator("[data-export-state]").first.wait_for()
    job = AuditExportJob.objects.get(requested_by=auditor)
    assert page.url == f"{live['base']}/audit/exports/{job.id}/"
    page.evaluate("window.__notReloaded = true")
    link = page.locator("[data-export-download]")
    link.wait_for(timeout=60_000)  # the status partial, polled, shows DONE and the link without a reload
    assert page.evaluate("window.__notReloaded === true")
    assert page.locator("[data-export-state]").get_attribute("data-export-state") == "DONE"
    screenshot(page, "export-done")
    with page.expect_download() as info:
        link.click()
    path = Path(info.value.path())
    job.refresh_from_db()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == job.file_sha256
    with tarfile.open(path, mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    verified = subprocess.run([sys.executable, "-m", "audit.verifier", str(tmp_path / "bundle")],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout + verified.stderr
    assert AuditEntry.objects.filter(event="audit.export_downloaded", actor=auditor).count() == 1


def test_admins_change_roles_and_groups_and_create_a_tenant(live, person, acme):  # noqa: F811
    member_page, member = person("analyst", level=None)
    admin, admin_user = person("tenant_admin", "platform_admin", level=None, next_url="/tenant/users/")
    row = admin.locator(f"tr[data-member='{member.username}']")
    row.get_by_label("Author").check()
    row.get_by_role("button", name="Save roles").click()
    admin.get_by_text(f"{member.username}'s roles were changed.").wait_for()
    assert Membership.objects.get(user=member).roles == ["analyst", "author"]
    member_page.goto(f"{live['base']}/submit/")  # the next request already has the new role
    assert member_page.locator("h1").inner_text() == "Submit a workflow"
    assert admin.locator(f"tr[data-member='{admin_user.username}'] form").count() == 0  # never one's own
    admin.goto(f"{live['base']}/tenant/approver-groups/")
    admin.select_option("#ag-user", label=member.username)
    admin.fill("#ag-group", "night-shift")
    admin.get_by_role("button", name="Add to the group").click()
    admin.locator("tr[data-group='night-shift']").wait_for()
    assert Membership.objects.get(user=member).groups == ["night-shift"]
    admin.get_by_role("button", name=f"Remove {member.username} from night-shift").click()
    admin.get_by_text(f"{member.username} was removed from night-shift.").wait_for()
    assert Membership.objects.get(user=member).groups == []
    admin.goto(f"{live['base']}/platform/tenants/")
    admin.fill("#t-slug", "not a slug")
    admin.fill("#t-name", "Bad")
    admin.get_by_role("button", name="Create the tenant").click()
    admin.locator("#t-slug-error").wait_for()
    assert not Tenant.objects.filter(name="Bad").exists()
    admin.fill("#t-slug", "browser-made")
    admin.fill("#t-name", "Made in the browser")
    admin.get_by_role("button", name="Create the tenant").click()
    admin.locator("tr[data-tenant='browser-made']").wait_for()
    assert get_user_model().objects.filter(username=admin_user.username).exists()
    assert AuditEntry.objects.filter(event="tenant.created", actor=admin_user).count() == 1
    screenshot(admin, "tenants")
