"""Hostile requests: a tenant named in a header, the body, the query or the host name is ignored;
fields a client may not set are refused, not silently dropped; state-changing portal forms need
their CSRF token. Every refusal leaves nothing written."""
from __future__ import annotations

import pytest

from approvals.models import Decision, Gate
from audit.models import AuditEntry
from gateway.models import Run, TaskInstance

from tests.engine.driver import workflow

GATED = workflow({"id": "check", "type": "gate"}, name="adversarial")


@pytest.fixture
def world(db, recording, make_tenant, make_member):
    from gateway.services import run_submit

    home, away = make_tenant("home"), make_tenant("away")
    author = make_member(home, "author")
    analyst = make_member(home, "analyst")
    away_author = make_member(away, "author")
    away_run = run_submit(tenant=away, actor=away_author, source=GATED)
    return {"home": home, "away": away, "author": author, "analyst": analyst, "away_run": away_run,
            "away_gate": Gate.objects.get(run=away_run)}


SPOOFS = [
    {"HTTP_X_TENANT": "away", "HTTP_X_TENANT_ID": "2", "HTTP_X_FORWARDED_TENANT": "away"},
    {"QUERY": "?tenant=away&tenant_id=2"},
    {"HTTP_HOST": "away.localhost"},
]


@pytest.mark.parametrize("spoof", SPOOFS, ids=["header", "query", "subdomain"])
def test_a_tenant_named_by_the_caller_is_ignored(world, api, settings, spoof):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "away.localhost"]
    spoof = dict(spoof)
    query = spoof.pop("QUERY", "")
    client = api(world["author"])
    runs = client.get(f"/api/v1/runs{query}", **spoof)
    assert runs.status_code == 200 and runs.json()["count"] == 0
    foreign = client.get(f"/api/v1/runs/{world['away_run'].id}{query}", **spoof)
    assert foreign.status_code == 404
    submitted = client.post(f"/api/v1/runs{query}", data=GATED, content_type="application/yaml", **spoof)
    assert submitted.status_code == 201
    assert Run.objects.get(id=submitted.json()["id"]).tenant == world["home"]
    gates = api(world["analyst"]).get(f"/api/v1/gates{query}", **spoof).json()
    assert str(world["away_gate"].id) not in {g["id"] for g in gates["results"]}


@pytest.mark.parametrize("extra", [{"tenant": 2}, {"tenant_id": 2}, {"submitter": 1}, {"classification": "UNCLASSIFIED"}])
def test_run_submission_refuses_fields_it_does_not_take(world, api, extra):
    response = api(world["author"]).post("/api/v1/runs", {"source": GATED, **extra}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and set(extra) <= set(body["detail"])
    assert not Run.objects.filter(tenant=world["home"]).exists()


@pytest.mark.parametrize("extra", [{"approver": 1}, {"tenant": 2}, {"outcome": "approve"}, {"gate_revision": 9},
                                   {"classification": "UNCLASSIFIED"}])
def test_a_decision_refuses_fields_it_does_not_take(world, api, extra):
    from gateway.services import run_submit

    run = run_submit(tenant=world["home"], actor=world["author"], source=GATED)
    gate = Gate.objects.get(run=run)
    response = api(world["analyst"]).post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm", **extra},
                                          format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert not Decision.objects.exists()
    assert TaskInstance.objects.get(id=gate.task_id).state == "AWAITING_DECISION"


def test_a_cancellation_refuses_fields_it_does_not_take(world, api):
    from gateway.services import run_submit

    run = run_submit(tenant=world["home"], actor=world["author"], source=GATED)
    response = api(world["author"]).post(f"/api/v1/runs/{run.id}/cancel", {"reason": "x", "state": "SUCCEEDED"},
                                         format="json")
    assert response.status_code == 400
    run.refresh_from_db()
    assert run.state == "RUNNING"


def test_portal_forms_refuse_a_post_without_the_csrf_token(world, client):
    from django.test import Client

    from gateway.services import run_submit

    run = run_submit(tenant=world["home"], actor=world["author"], source=GATED)
    gate = Gate.objects.get(run=run)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world["analyst"])
    refused = strict.post(f"/gates/{gate.id}/", {"option": "confirm"})
    assert refused.status_code == 403
    assert not Decision.objects.exists()
    denial = AuditEntry.objects.filter(event="access.denied", actor=world["analyst"]).last()
    assert denial is not None and denial.body["error"] == "csrf_failed"
    # With the token from the page, the same form goes through.
    page = strict.get(f"/gates/{gate.id}/")
    token = page.cookies["csrftoken"].value
    accepted = strict.post(f"/gates/{gate.id}/", {"option": "confirm", "csrfmiddlewaretoken": token})
    assert accepted.status_code in (200, 302)
    assert Decision.objects.filter(gate=gate).count() == 1


def test_the_api_refuses_a_session_write_without_the_csrf_token(world):
    from django.test import Client

    from gateway.services import run_submit

    run = run_submit(tenant=world["home"], actor=world["author"], source=GATED)
    gate = Gate.objects.get(run=run)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world["analyst"])
    refused = strict.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, content_type="application/json")
    assert refused.status_code == 403
    assert not Decision.objects.exists()


def test_portal_refusals_are_audited(world, client):
    client.force_login(world["analyst"])
    before = AuditEntry.objects.filter(event="access.denied", actor=world["analyst"]).count()
    response = client.get(f"/gates/{world['away_gate'].id}/")
    assert response.status_code == 404
    assert str(world["away_gate"].id).encode() not in response.content
    denials = AuditEntry.objects.filter(event="access.denied", actor=world["analyst"])
    assert denials.count() == before + 1
    assert denials.last().body["data"]["status"] == 404
