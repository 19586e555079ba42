"""The portal in a real browser: sign in through the OpenID provider, decide a gate with the
keyboard and see the run continue; inboxes that update live without reload; a SECRET gate that
never reaches a lower-cleared analyst (not in the HTML, not in any websocket frame); a clearance
lowered by a tenant admin taking the gate off an open page. Screenshots go to var/screenshots/."""
from __future__ import annotations

import uuid

import pytest
import yaml
from django.contrib.auth import get_user_model

from approvals.models import Decision, Gate
from gateway.clearances import ClearanceInput, clearance_set
from gateway.models import TaskInstance
from gateway.services import run_submit

from .conftest import screenshot, sign_in, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def workflow(name: str, classification: str, title: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "classification": classification,
        "tasks": [
            {"id": "make", "run": "echo '[{\"id\": 1, \"host\": \"web-1\", \"score\": 0.93}]' > out.json",
             "outputs": [{"name": "out", "path": "out.json"}]},
            {"id": "check", "type": "gate", "needs": ["make"], "title": title, "shows": ["make/out"],
             "instructions": "Confirm the detections, or reject them.",
             "options": ["confirm", {"name": "reject", "outcome": "reject"}], "approvers": ["analyst"],
             "form": {"type": "object", "required": ["verdict"],
                      "properties": {"verdict": {"type": "string", "enum": ["benign", "hostile"]},
                                     "score": {"type": "integer"}}}},
            {"id": "after", "needs": ["check"], "inputs": [{"from": "check/input", "path": "review.json"}],
             "run": "cat review.json"},
        ]}, sort_keys=False)


@pytest.fixture
def acme(make_tenant):
    return make_tenant("acme")


@pytest.fixture
def author(make_member, acme):
    return make_member(acme, "author", username=f"author-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def person(live, new_page, acme):
    """Someone of the tenant in the identity provider, signed in in their own browser context, and
    (once their local account exists) cleared to `level` by the clearance service."""

    def make(*roles: str, level: str | None = "SECRET", next_url: str = "/inbox/"):
        username = f"{roles[0]}-{uuid.uuid4().hex[:8]}"
        live["keycloak"].add_user(username, groups=["/tenants/acme"], realm_roles=list(roles))
        page = new_page()
        sign_in(page, live["base"], username, next_url=next_url)
        user = get_user_model().objects.get(username=username)
        if level is not None:
            clearance_set(tenant=acme, user=user, data=ClearanceInput(policy=None, max_level=level, compartments=[],
                                                                        releasability=[]))
            page.reload()
        return page, user

    return make


def open_gate(run) -> Gate:
    return wait_until(lambda: Gate.objects.filter(run=run, state="OPEN").first(), timeout=60,
                      what="the gate to open")


# Set when the page's live socket opens (gateway/static/gatehouse/live.js: a "connect" resync).
LIVE_OPEN_LISTENER = """
document.addEventListener("gatehouse:resync", function (e) {
  if (e.detail && e.detail.reason === "connect") { window.__liveOpen = true; }
});
"""


def mark_page(page) -> None:
    """A value that survives only as long as the page is not reloaded."""
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page) -> bool:
    return page.evaluate("window.__notReloaded === true")


def tab_to(page, predicate_js: str, limit: int = 80) -> None:
    """Press Tab until the focused element matches (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!el && ({predicate_js}); }})()"):
            return
    raise AssertionError(f"Tab never reached {predicate_js}")


def test_an_analyst_decides_with_the_keyboard_and_the_run_continues(live, person, acme, author):
    page, analyst = person("analyst")
    run = run_submit(tenant=acme, actor=author, source=workflow("threats", "SECRET", "Validate detected threats"))
    gate = open_gate(run)
    link = page.get_by_role("link", name="Validate detected threats")
    link.wait_for()  # the inbox shows it (live, or from the page's resync)
    assert page.locator(".banner-top").inner_text() == "SECRET"
    assert "1 of 1" in page.locator(f"tr[data-gate='{gate.id}']").inner_text()
    screenshot(page, "inbox")
    tab_to(page, f"el.getAttribute('href') === '/gates/{gate.id}/'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live['base']}/gates/{gate.id}/")
    page.locator("td", has_text="web-1").wait_for()  # the JSON artefact, as a table
    assert page.locator("svg.dag .dag-highlight").count() == 1
    screenshot(page, "gate")
    watcher = page.context.new_page()  # the run page, open in a second tab while the analyst decides
    watcher.goto(f"{live['base']}/runs/{run.id}/")
    assert watcher.locator("tr[data-task='after'] td[data-state='PENDING']").count() == 1
    mark_page(watcher)
    tab_to(page, "el.id === 'field-verdict'")
    page.keyboard.press("ArrowDown")  # benign -> hostile
    tab_to(page, "el.id === 'field-score'")
    page.keyboard.type("7")
    tab_to(page, "el.tagName === 'BUTTON' && el.value === 'confirm'")
    page.keyboard.press("Enter")
    page.locator("[data-signature]").wait_for()
    decision = Decision.objects.get(gate=gate, approver=analyst)
    assert decision.input == {"verdict": "hostile", "score": 7}
    assert decision.signature.document_sha256 in page.content()
    # The run continues: the open run page follows the successor task to SUCCEEDED without reload.
    watcher.locator("tr[data-task='after'] td[data-state='SUCCEEDED']").wait_for(timeout=60_000)
    assert not_reloaded(watcher)
    watcher.locator("[data-run-state='SUCCEEDED']").wait_for()
    assert TaskInstance.objects.get(run=run, key="after").state == "SUCCEEDED"
    screenshot(watcher, "run")


def test_a_second_analysts_inbox_updates_live(live, person, acme, author):
    first, first_user = person("analyst")
    second, _ = person("analyst")
    assert second.get_by_text("Nothing awaits your decision").is_visible()
    second.keyboard.press("Tab")  # the first stop is the skip link, and it is visible when focused
    assert second.evaluate("document.activeElement.getAttribute('href')") == "#main"
    assert second.locator(".skip-link").is_visible()
    mark_page(second)
    run = run_submit(tenant=acme, actor=author, source=workflow("live", "SECRET", "Live gate"))
    gate = open_gate(run)
    second.get_by_role("link", name="Live gate").wait_for()
    assert not_reloaded(second)
    assert second.locator(".banner-bottom").inner_text() == "SECRET"
    first.reload()
    first.get_by_role("link", name="Live gate").click()
    first.select_option("#field-verdict", label="benign")
    first.get_by_role("button", name="Confirm").click()
    first.locator("[data-signature]").wait_for()
    second.get_by_text("Nothing awaits your decision").wait_for()  # decided: it leaves every inbox
    assert not_reloaded(second) and second.get_by_role("link", name="Live gate").count() == 0
    assert Gate.objects.get(id=gate.id).state == "APPROVED"
    assert Decision.objects.get(gate=gate).approver == first_user


def test_a_lower_cleared_analyst_never_sees_the_secret_gate(live, person, acme, author):
    low, _ = person("analyst", level="CONFIDENTIAL")
    frames: list[str] = []
    low.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    low.add_init_script(LIVE_OPEN_LISTENER)
    low.reload()  # the socket opens after the listener is in place
    # Open, so subscribed (gateway/realtime/consumer.py joins the groups before the handshake): the
    # gates below reach the page as frames, not only through the resync a later connect would do.
    wait_until(lambda: low.evaluate("window.__liveOpen === true"), what="the inbox's live socket to open")
    mark_page(low)
    secret = run_submit(tenant=acme, actor=author, source=workflow("secret-run", "SECRET", "Secret gate"))
    visible = run_submit(tenant=acme, actor=author, source=workflow("conf-run", "CONFIDENTIAL", "Confidential gate"))
    secret_gate, visible_gate = open_gate(secret), open_gate(visible)
    low.get_by_role("link", name="Confidential gate").wait_for()  # live: frames do reach this socket
    assert not_reloaded(low)
    wait_until(lambda: any(str(visible_gate.id) in f for f in frames), timeout=10, what="a frame about the visible gate")
    html = low.content()
    for text in ("Secret gate", str(secret_gate.id), str(secret.id), "secret-run", ">SECRET<"):
        assert text not in html
    assert low.locator(".banner-top").inner_text() == "CONFIDENTIAL"
    for frame in frames:
        assert str(secret_gate.id) not in frame and str(secret.id) not in frame and "SECRET" not in frame.upper().replace(
            "CONFIDENTIAL", "")
    assert frames, "no websocket frame was captured"
    for url in (f"/gates/{secret_gate.id}/", f"/runs/{secret.id}/"):
        response = low.goto(f"{live['base']}{url}")
        assert response.status == 404 and "Secret gate" not in low.content()


def test_a_tenant_admin_lowers_a_clearance_and_the_open_inbox_loses_the_gate(live, person, acme, author):
    analyst_page, analyst = person("analyst")
    run = run_submit(tenant=acme, actor=author, source=workflow("relabel", "SECRET", "Soon out of reach"))
    gate = open_gate(run)
    analyst_page.get_by_role("link", name="Soon out of reach").wait_for()
    mark_page(analyst_page)
    gate_tab = analyst_page.context.new_page()  # the same analyst has the gate itself open too
    gate_tab.goto(f"{live['base']}/gates/{gate.id}/")
    gate_tab.locator("[data-decision-form]").wait_for()
    mark_page(gate_tab)
    admin, _ = person("tenant_admin", "auditor", level="TOP SECRET", next_url="/tenant/clearances/")
    admin.select_option("#c-user", label=analyst.username)
    admin.select_option("#c-level", label="CONFIDENTIAL")
    screenshot(admin, "admin-clearances")
    admin.get_by_role("button", name="Save the clearance").click()
    admin.get_by_text(f"{analyst.username}'s clearance is now CONFIDENTIAL").wait_for()
    analyst_page.get_by_text("Nothing awaits your decision").wait_for()  # without reload
    assert not_reloaded(analyst_page)
    assert str(gate.id) not in analyst_page.content()
    assert analyst_page.locator(".banner-top").inner_text() == "UNCLASSIFIED"
    gate_tab.get_by_text("This gate is no longer available to you.").wait_for()
    assert not_reloaded(gate_tab)
    assert "Soon out of reach" not in gate_tab.content() and gate_tab.locator("[data-decision-form]").count() == 0
    assert gate_tab.locator(".banner-bottom").inner_text() == "UNCLASSIFIED"
    # The admin's other pages, for the record.
    admin.goto(f"{live['base']}/submit/")
    admin.fill("#field-source", "apiVersion: gatehouse/v1\nkind: Workflow\nname: broken\ntasks:\n"
                                "  - id: a\n    run: 'true'\n    needs: [ghost]\n")
    admin.get_by_role("button", name="Validate only").click()
    admin.locator("table.issues").wait_for()
    screenshot(admin, "submit")
    admin.goto(f"{live['base']}/audit/?event=clearance.changed")
    admin.get_by_text("clearance.changed").first.wait_for()
    screenshot(admin, "audit")
