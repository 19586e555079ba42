"""The REST API: submission, runs, cancel, gates, artefacts, errors with stable codes,
and tenant scoping (another tenant's objects answer 404 and never appear in lists)."""
from __future__ import annotations

import hashlib

import pytest

from approvals.models import Decision, Gate
from audit.models import AuditEntry
from gateway.models import Run, TaskInstance
from gateway.worker import task_execute

from tests.engine.driver import workflow

pytestmark = pytest.mark.django_db(transaction=True)

GATED = workflow(
    {"id": "make", "run": "echo hello > out.txt", "outputs": [{"name": "out", "path": "out.txt", "media_type": "text/plain"}]},
    {"id": "check", "type": "gate", "needs": ["make"], "shows": ["make/out"],
     "form": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
    {"id": "after", "needs": ["check"], "inputs": [{"from": "check/input", "path": "in.json"}], "run": "cat in.json"},
    name="gated",
)


def post_yaml(client, text, **params):
    return client.post("/api/v1/runs" + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""),
                       data=text, content_type="application/yaml")


def test_submit_yaml_and_read_the_run_back(recording, api, author):
    response = post_yaml(api(author), GATED)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "RUNNING" and body["name"] == "gated"
    assert [t["key"] for t in body["tasks"]] == ["make", "check", "after"]
    assert body["tasks"][0]["state"] == "QUEUED"
    detail = api(author).get(f"/api/v1/runs/{body['id']}").json()
    assert detail["counts"] == {"QUEUED": 1, "PENDING": 2}
    assert AuditEntry.objects.filter(event="run.submitted", object_id=body["id"]).count() == 1


def test_submit_as_json_and_as_an_uploaded_file(recording, api, author):
    client = api(author)
    assert client.post("/api/v1/runs", {"source": GATED}, format="json").status_code == 201
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("wf.yaml", GATED.encode(), content_type="application/yaml")
    assert client.post("/api/v1/runs", {"file": upload}, format="multipart").status_code == 201
    assert Run.objects.count() == 2


def test_an_invalid_workflow_is_refused_with_every_error_and_its_line(recording, api, author):
    bad = "apiVersion: gatehouse/v1\nkind: Workflow\nname: bad\ntasks:\n  - id: a\n    run: 'true'\n    needs: [ghost]\n  - id: a\n    run: 'true'\n"
    response = post_yaml(api(author), bad)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "spec_invalid"
    codes = {(d["code"], d["line"]) for d in body["detail"]}
    assert ("unknown_need", 7) in codes
    assert any(code == "duplicate_task" for code, _ in codes)
    assert Run.objects.count() == 0 and TaskInstance.objects.count() == 0


def test_an_unknown_backend_is_refused(recording, api, author):
    response = post_yaml(api(author), workflow({"id": "a", "backend": "mainframe"}))
    assert response.status_code == 400 and response.json()["code"] == "unknown_backend"
    assert Run.objects.count() == 0


@pytest.mark.parametrize("method,path", [
    ("get", "/api/v1/runs"), ("post", "/api/v1/runs"), ("get", "/api/v1/gates"),
    ("post", "/api/v1/workflows/validate"),
])
def test_anonymous_callers_get_401(api, db, method, path):
    response = getattr(api(), method)(path)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_only_authors_submit_and_a_refused_submit_writes_nothing(recording, api, analyst):
    response = post_yaml(api(analyst), GATED)
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    assert Run.objects.count() == 0


def test_other_tenants_runs_gates_and_artefacts_are_invisible(recording, api, author, analyst, make_member, other_tenant):
    run_id = post_yaml(api(author), GATED).json()["id"]
    run = Run.objects.get(id=run_id)
    task_execute(*TaskInstance.objects.filter(run=run, key="make").values_list("id", "attempt").get())
    gate = Gate.objects.get(run=run)
    artefact = run.artefacts.get(name="out")
    outsider = api(make_member(other_tenant, "author", "analyst", "tenant_admin"))
    for path in [f"/api/v1/runs/{run_id}", f"/api/v1/runs/{run_id}/artefacts", f"/api/v1/gates/{gate.id}",
                 f"/api/v1/artefacts/{artefact.id}", f"/api/v1/artefacts/{artefact.id}/content"]:
        response = outsider.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
        assert run_id not in response.content.decode()
    assert outsider.post(f"/api/v1/runs/{run_id}/cancel").status_code == 404
    assert outsider.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, format="json").status_code == 404
    assert outsider.get("/api/v1/runs").json()["count"] == 0
    assert outsider.get("/api/v1/gates?scope=all").json()["count"] == 0
    assert Run.objects.get(id=run_id).state == "RUNNING" and Decision.objects.count() == 0


def test_an_analyst_lists_and_decides_a_gate_and_the_input_feeds_the_next_task(recording, api, author, analyst):
    run_id = post_yaml(api(author), GATED).json()["id"]
    run = Run.objects.get(id=run_id)
    assert task_execute(*TaskInstance.objects.filter(run=run, key="make").values_list("id", "attempt").get()) == "succeeded"
    client = api(analyst)
    gates = client.get("/api/v1/gates").json()["results"]
    assert [g["task"] for g in gates] == ["check"]
    gate_id = gates[0]["id"]
    assert gates[0]["shows"][0]["ref"] == "make/out"
    bad = client.post(f"/api/v1/gates/{gate_id}/decide", {"option": "confirm", "input": {"ok": "yes"}}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "gate_input_invalid"
    decided = client.post(f"/api/v1/gates/{gate_id}/decide", {"option": "confirm", "input": {"ok": True}}, format="json")
    assert decided.status_code == 201, decided.json()
    assert decided.json()["input_digest"] == hashlib.sha256(b'{"ok":true}').hexdigest()
    again = client.post(f"/api/v1/gates/{gate_id}/decide", {"option": "confirm"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "gate_already_decided"
    assert client.get("/api/v1/gates").json()["count"] == 0
    after = TaskInstance.objects.get(run=run, key="after")
    assert task_execute(after.id, after.attempt) == "succeeded"
    stdout = run.artefacts.get(task__key="after", name="stdout")
    assert api(author).get(f"/api/v1/artefacts/{stdout.id}/content").getvalue() == b'{"ok":true}'
    assert api(author).get(f"/api/v1/runs/{run_id}").json()["state"] == "SUCCEEDED"


def test_an_artefact_downloads_with_its_digest(recording, api, author):
    run_id = post_yaml(api(author), GATED).json()["id"]
    make = TaskInstance.objects.get(run_id=run_id, key="make")
    task_execute(make.id, make.attempt)
    listing = api(author).get(f"/api/v1/runs/{run_id}/artefacts").json()
    assert {a["name"] for a in listing} == {"out"}  # the task printed nothing: no empty logs are kept
    out = next(a for a in listing if a["name"] == "out")
    response = api(author).get(out["content_url"])
    body = response.getvalue()
    assert body == b"hello\n"
    assert response["X-Content-SHA256"] == hashlib.sha256(body).hexdigest() == out["digest"]


def test_cancel_through_the_api_and_twice(recording, api, author):
    run_id = post_yaml(api(author), GATED).json()["id"]
    response = api(author).post(f"/api/v1/runs/{run_id}/cancel", {"reason": "wrong data"}, format="json")
    assert response.status_code == 200 and response.json()["state"] == "CANCELLED"
    again = api(author).post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "run_finished"


def test_validate_endpoint_and_schemas(recording, api, author):
    ok = api(author).post("/api/v1/workflows/validate", data=GATED, content_type="application/yaml")
    assert ok.status_code == 200 and ok.json()["tasks"] == 3 and ok.json()["gates"] == 1
    bad = api(author).post("/api/v1/workflows/validate", data="tasks: [", content_type="application/yaml")
    assert bad.status_code == 400 and bad.json()["code"] == "spec_invalid"
    schema = api().get("/api/v1/workflows/schema").json()
    assert schema["$id"].endswith("workflow-v1.json")
    openapi = api(author).get("/api/schema/")
    assert openapi.status_code == 200 and b"/api/v1/gates/{gate_id}/decide" in openapi.content
