"""The portal's pages do what they say, through the real services: a decision made with the
generated form is signed and releases the next task; bad input is refused with its errors and
changes nothing; banners carry the page's highest label; admins' changes go through the
audited services."""
from __future__ import annotations


import pytest

from approvals.models import Decision
from audit.models import AuditEntry
from executors.models import BackendConfiguration
from gateway.models import Artefact, Clearance, Run, TaskInstance
from gateway.portal.banners import page_banner
from gateway.portal.forms import form_fields

from .conftest import SECRET_TITLE

pytestmark = pytest.mark.django_db


def html_has_banner(html: str, text: str, css_class: str) -> bool:
    return html.count(f'{css_class}" role="note" aria-label="Classification of this page" data-banner>{text}<') == 2


def test_banner_is_the_least_upper_bound_with_the_usual_colours():
    assert page_banner([]).text == "UNCLASSIFIED" and page_banner([]).background == "#007a33"
    assert page_banner(["CONFIDENTIAL"]).background == "#0033a0"
    top = page_banner(["SECRET//REL TO GBR", "CONFIDENTIAL//NATO", "UNCLASSIFIED"])
    assert top.text == "SECRET//NATO//REL TO GBR" and top.background == "#c8102e"
    assert page_banner(["TOP SECRET"]).style == "background:#ff8c00;color:#000000"
    assert page_banner(["TOP SECRET"]).css_class == "banner-ff8c00"


def test_every_page_shows_its_banner_top_and_bottom(world, login):
    html = login(world["users"]["analyst"]).get("/inbox/").content.decode()
    assert html.count('banner-c8102e" role="note" aria-label="Classification of this page" data-banner>SECRET<') == 2
    assert 'href="#main"' in html and '<main id="main"' in html  # skip link and landmark
    empty = login(world["users"]["auditor"]).get("/inbox/").content.decode()  # nothing awaits an auditor
    assert empty.count(">UNCLASSIFIED<") == 2 and "Nothing awaits your decision" in empty
    assert SECRET_TITLE not in empty


def test_the_inbox_lists_the_gate_with_label_and_approvals_needed(world, login):
    html = login(world["users"]["analyst"]).get("/inbox/").content.decode()
    assert SECRET_TITLE in html and f'/gates/{world["gate"].id}/' in html
    assert "1 of 1" in html and 'data-label="SECRET"' in html


def test_the_form_is_generated_from_the_schema():
    fields = {f.name: f for f in form_fields({
        "type": "object", "required": ["v"],
        "properties": {"v": {"enum": ["x", "y"]}, "n": {"type": "number"}, "i": {"type": "integer"},
                       "b": {"type": "boolean"}, "s": {"type": "string"}, "t": {"type": "array", "items": {"enum": [1, 2]}},
                       "o": {"type": "object"}}})}
    assert {k: f.kind for k, f in fields.items()} == {"v": "enum", "n": "number", "i": "integer", "b": "boolean",
                                                       "s": "string", "t": "multi", "o": "json"}
    assert list(fields)[0] == "v" and fields["v"].required
    assert form_fields({"type": "array"}) is None and form_fields(None) is None


def test_the_gate_page_previews_json_as_a_table_and_shows_the_dag(world, login):
    html = login(world["users"]["analyst"]).get(f"/gates/{world['gate'].id}/").content.decode()
    assert '<th scope="col">kind</th>' in html and "<td>probe</td>" in html  # the JSON artefact as a table
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="dag"' in html
    assert 'class="dag-node dag-highlight" data-task="check"' in html
    assert 'id="field-verdict"' in html and 'id="field-score"' in html and 'id="field-urgent"' in html
    assert world["gate"].shows[0]["digest"] in html  # what is signed names the artefact's digest


def test_deciding_with_the_form_signs_and_releases_the_next_task(world, login, recording):
    client = login(world["users"]["analyst"])
    gate = world["gate"]
    response = client.post(f"/gates/{gate.id}/", {"option": "confirm", "f_verdict": '"hostile"', "f_score": "7",
                                                  "f_urgent": "on", "f_tags": ['"a"', '"c"'], "f_notes": "seen",
                                                  "f_extra": '{"k": [1]}', "comment": "ok"})
    assert response.status_code == 302 and response["Location"] == f"/gates/{gate.id}/"
    decision = Decision.objects.get(gate=gate)
    assert decision.input == {"verdict": "hostile", "score": 7, "urgent": True, "tags": ["a", "c"], "notes": "seen",
                              "extra": {"k": [1]}}
    assert TaskInstance.objects.get(run=world["run"], key="after").state == "QUEUED"
    page = client.get(f"/gates/{gate.id}/").content.decode()
    assert decision.signature.document_sha256 in page and "data-signature" in page
    assert "Download the receipt" in page
    mine = client.get("/decisions/").content.decode()
    assert SECRET_TITLE in mine and f"/api/v1/gates/{gate.id}/receipt" in mine
    assert SECRET_TITLE not in client.get("/inbox/").content.decode()  # decided: out of the inbox


def test_bad_form_input_is_refused_with_its_errors_and_decides_nothing(world, login):
    client = login(world["users"]["analyst"])
    gate = world["gate"]
    response = client.post(f"/gates/{gate.id}/", {"option": "confirm", "f_verdict": '"hostile"', "f_score": "seven",
                                                  "f_extra": "{not json"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Not a valid number" in html and "Not valid JSON" in html and 'value="seven"' in html
    missing = client.post(f"/gates/{gate.id}/", {"option": "confirm"})  # verdict is required
    assert missing.status_code == 400 and "Choose one." in missing.content.decode()
    assert not Decision.objects.filter(gate=gate).exists()
    assert AuditEntry.objects.filter(event="request.refused", body__error="gate_input_invalid").exists()


def test_the_author_cannot_decide_their_own_runs_gate(world, login):
    client = login(world["users"]["author"])
    assert "You are not an approver" in client.get(f"/gates/{world['gate'].id}/").content.decode()
    response = client.post(f"/gates/{world['gate'].id}/", {"option": "confirm", "f_verdict": '"benign"'})
    assert response.status_code == 403 and not Decision.objects.exists()


def test_submit_shows_errors_with_task_and_line(world, login):
    client = login(world["users"]["author"])
    source = "apiVersion: gatehouse/v1\nkind: Workflow\nname: bad\ntasks:\n  - id: a\n    run: 'true'\n    needs: [ghost]\n"
    response = client.post("/submit/", {"source": source, "action": "submit"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "spec_invalid" in html and '<td class="line">' in html and "ghost" in html
    assert Run.objects.count() == 1


def test_submit_and_validate_through_the_service(world, login):
    client = login(world["users"]["author"])
    source = "apiVersion: gatehouse/v1\nkind: Workflow\nname: good\ntasks:\n  - id: a\n    run: 'true'\n"
    assert "The workflow is valid" in client.post("/submit/", {"source": source, "action": "validate"},
                                                   follow=True).content.decode()
    assert Run.objects.count() == 1
    response = client.post("/submit/", {"source": source, "action": "submit"})
    run = Run.objects.get(name="good")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"


def test_cancel_needs_the_csrf_token(world, settings):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world["users"]["author"])
    response = client.post(f"/runs/{world['run'].id}/cancel/")
    assert response.status_code == 403 and Run.objects.get(id=world["run"].id).state == "RUNNING"
    page = client.get(f"/runs/{world['run'].id}/").content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    response = client.post(f"/runs/{world['run'].id}/cancel/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and Run.objects.get(id=world["run"].id).state == "CANCELLED"


def test_a_tenant_admin_lowers_a_clearance_and_it_counts_at_once(world, login):
    analyst = world["users"]["analyst"]
    admin = login(world["users"]["tenant_admin"])
    response = admin.post("/tenant/clearances/", {"action": "set", "user_id": analyst.pk, "max_level": "confidential"})
    assert response.status_code == 302
    assert Clearance.objects.get(user=analyst).max_level == "CONFIDENTIAL"
    assert AuditEntry.objects.filter(event="clearance.changed", object_type="clearance").exists()
    viewer = login(analyst)
    assert SECRET_TITLE not in viewer.get("/inbox/").content.decode()
    assert viewer.get(f"/gates/{world['gate'].id}/partial/").status_code == 404


def test_a_bad_clearance_is_refused_and_changes_nothing(world, login):
    analyst = world["users"]["analyst"]
    response = login(world["users"]["tenant_admin"]).post("/tenant/clearances/", {
        "action": "set", "user_id": analyst.pk, "max_level": "COSMIC"})
    assert response.status_code == 400 and "clearance_invalid" in response.content.decode()
    assert Clearance.objects.get(user=analyst).max_level == "TOP SECRET"


def test_backends_errors_are_shown_at_their_lines(world, login):
    client = login(world["users"]["tenant_admin"])
    bad = "apiVersion: gatehouse/v1\nkind: Backends\nbackends:\n  - {name: x, kind: local, max_classification: NOPE}\n"
    response = client.post("/tenant/backends/", {"source": bad})
    assert response.status_code == 400 and "backends_invalid" in response.content.decode()
    assert '<td class="line">4</td>' in response.content.decode()
    assert not BackendConfiguration.objects.exists()
    good = "apiVersion: gatehouse/v1\nkind: Backends\nbackends:\n  - {name: x, kind: local, max_classification: TOP SECRET}\n"
    assert client.post("/tenant/backends/", {"source": good}).status_code == 302
    assert BackendConfiguration.objects.get(tenant=world["home"]).revision == 1


def test_a_tenant_admin_adds_a_user(world, login):
    client = login(world["users"]["tenant_admin"])
    response = client.post("/tenant/users/", {"action": "create", "username": "newbie", "roles": ["analyst"],
                                              "groups": "night-shift"})
    assert response.status_code == 302
    page = client.get("/tenant/approver-groups/").content.decode()
    assert "night-shift" in page and "newbie" in page


def test_the_audit_page_filters_and_shows_the_checkpoint(world, login):
    client = login(world["users"]["auditor"])
    html = client.get("/audit/", {"event": "run.submitted"}).content.decode()
    assert "<code>run.submitted</code>" in html and "<code>gate.opened</code>" not in html
    assert "Latest checkpoint" in html
    assert AuditEntry.objects.filter(event="audit.searched", actor=world["users"]["auditor"]).exists()
    assert "not a date" in client.get("/audit/", {"since": "yesterday"}).content.decode()


PREVIEWS = """\
apiVersion: gatehouse/v1
kind: Workflow
name: previews
classification: CONFIDENTIAL
tasks:
  - id: make
    run: |
      printf 'line one\\nline <two>\\n' > notes.txt
      printf '\\211PNG\\r\\n\\032\\n' > pic.png
    outputs:
      - {name: notes, path: notes.txt, media_type: text/plain}
      - {name: pic, path: pic.png, media_type: image/png}
  - id: look
    type: gate
    needs: [make]
    title: Two approvals
    shows: [make/notes, make/pic]
    options: [confirm]
    required_approvals: 2
    approvers: [analyst]
"""


def test_text_and_image_previews_and_approvals_still_needed(world, login, make_member):
    from approvals.models import Gate
    from gateway.services import run_submit
    from gateway.worker import task_execute

    run = run_submit(tenant=world["home"], actor=world["users"]["author"], source=PREVIEWS)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    gate = Gate.objects.get(run=run)
    client = login(world["users"]["analyst"])
    html = client.get(f"/gates/{gate.id}/").content.decode()
    assert "line &lt;two&gt;" in html  # text, escaped
    pic = Artefact.objects.get(run=run, name="pic")
    assert f'<img src="/artefacts/{pic.id}/content/"' in html
    image = client.get(f"/artefacts/{pic.id}/content/")
    assert image["Content-Type"] == "image/png" and image["Content-Disposition"].startswith("inline")
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")
    notes = client.get(f"/artefacts/{Artefact.objects.get(run=run, name='notes').id}/content/")
    assert notes["Content-Type"] == "application/octet-stream" and notes["Content-Disposition"].startswith("attachment")
    assert client.post(f"/gates/{gate.id}/", {"option": "confirm"}).status_code == 302
    second = login(make_member(world["home"], "analyst", username="second-analyst"))
    row = second.get("/inbox/").content.decode().split(f'data-gate="{gate.id}"')[1].split("</tr>")[0]
    assert "1 of 2" in row


def test_a_partial_carries_the_whole_pages_banner(world, login):
    """A live region's refresh sets the page's banners from the partial: it must cover everything
    the page shows, not only the region (here a TOP SECRET task after a CONFIDENTIAL gate)."""
    from approvals.models import Gate
    from gateway.services import run_submit
    from gateway.worker import task_execute

    later = "  - id: later\n    needs: [look]\n    classification: TOP SECRET\n    run: 'true'\n"
    run = run_submit(tenant=world["home"], actor=world["users"]["author"], source=PREVIEWS + later)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    client = login(world["users"]["analyst"])
    gate_id = Gate.objects.get(run=run).id
    for url in (f"/runs/{run.id}/", f"/gates/{gate_id}/"):
        assert html_has_banner(client.get(url).content.decode(), "TOP SECRET", "banner-ff8c00")
    for url in (f"/runs/{run.id}/partial/", f"/gates/{gate_id}/partial/"):
        assert 'data-region-banner data-text="TOP SECRET" data-class="banner-ff8c00"' in client.get(url).content.decode(), url
