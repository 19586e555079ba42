"""Classification labels and clearances, end to end through the API.

One run carries several labels: the run is RESTRICTED; `make` is SECRET//NATO; the gate that shows
make's output, and `consume`, which reads it, inherit SECRET//NATO (the least upper bound of what
they read); `low` stays RESTRICTED. Readers with different clearances see exactly the objects
their clearance dominates: everything else answers 404 and is absent from lists and counts.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import Decision, Gate
from audit.models import AuditEntry
from gateway.clearances import ClearanceInput, clearance_set
from gateway.models import Artefact, ClassificationLabel, Clearance, Run, TaskInstance
from gateway.worker import task_execute

from tests.engine.driver import workflow

SECRET_NATO = "SECRET//NATO"
WORKFLOW = workflow(
    {"id": "make", "run": "echo hi > out.txt", "outputs": [{"name": "out", "path": "out.txt"}],
     "classification": "secret // nato"},
    {"id": "check", "type": "gate", "needs": ["make"], "shows": ["make/out"]},
    {"id": "consume", "needs": ["make"], "inputs": [{"from": "make/out", "path": "in.txt"}],
     "classification": "CONFIDENTIAL"},
    {"id": "low", "classification": "UNCLASSIFIED"},
    name="labelled",
).replace("apiVersion: gatehouse/v1\n", "apiVersion: gatehouse/v1\nclassification: RESTRICTED\n")


@pytest.fixture
def world(db, recording, settings, tmp_path, make_tenant, make_member):
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "witness")}
    from audit.keys import forget_signer
    from audit.witness import _witness
    from gateway.services import run_submit

    forget_signer()
    _witness.cache_clear()
    home = make_tenant()
    author = make_member(home, "author", compartments=["NATO"])
    admin = make_member(home, "tenant_admin", clearance=None)
    readers = {
        "cleared": make_member(home, "analyst", "auditor", clearance="SECRET", compartments=["NATO"]),
        "no_compartment": make_member(home, "analyst", "auditor", clearance="TOP SECRET"),
        "low": make_member(home, "analyst", "auditor", clearance="CONFIDENTIAL", compartments=["NATO"]),
        "none": make_member(home, "analyst", "auditor", clearance=None),
    }
    expired = make_member(home, "analyst", "auditor", clearance=None)
    clearance_set(tenant=home, user=expired, actor=admin, data=ClearanceInput(
        policy=None, max_level="TOP SECRET", compartments=["NATO"], releasability=[],
        valid_until=timezone.now() - timedelta(seconds=1)))
    readers["expired"] = expired
    suspended = make_member(home, "analyst", "auditor", clearance=None)
    clearance_set(tenant=home, user=suspended, actor=admin, data=ClearanceInput(
        policy=None, max_level="TOP SECRET", compartments=["NATO"], releasability=[], status="suspended"))
    readers["suspended"] = suspended
    run = run_submit(tenant=home, actor=author, source=WORKFLOW)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    yield {"home": home, "author": author, "admin": admin, "readers": readers, "run": run,
           "gate": Gate.objects.get(run=run), "artefact": Artefact.objects.get(run=run, name="out")}
    forget_signer()
    _witness.cache_clear()


def test_outputs_carry_the_upper_bound_of_what_their_task_reads(world):
    labels = dict(TaskInstance.objects.filter(run=world["run"]).values_list("key", "classification"))
    assert labels == {"make": SECRET_NATO, "check": SECRET_NATO, "consume": SECRET_NATO, "low": "RESTRICTED"}
    assert world["run"].classification == "RESTRICTED"
    assert world["gate"].classification == SECRET_NATO
    assert world["artefact"].classification == SECRET_NATO
    banners = set(ClassificationLabel.objects.filter(tenant=world["home"]).values_list("banner", flat=True))
    assert banners == {SECRET_NATO, "RESTRICTED"}


SEES_SECRET = {"cleared"}
SEES_RUN = {"cleared", "no_compartment", "low"}


@pytest.mark.parametrize("reader", ["cleared", "no_compartment", "low", "none", "expired", "suspended"])
def test_each_reader_sees_exactly_what_their_clearance_dominates(world, api, reader):
    client = api(world["readers"][reader])
    run, gate, artefact = world["run"], world["gate"], world["artefact"]
    secret = reader in SEES_SECRET
    sees_run = reader in SEES_RUN

    detail = client.get(f"/api/v1/runs/{run.id}")
    assert detail.status_code == (200 if sees_run else 404)
    if sees_run:
        keys = {t["key"] for t in detail.json()["tasks"]}
        assert keys == ({"make", "check", "consume", "low"} if secret else {"low"})
        assert sum(detail.json()["counts"].values()) == len(keys)
    runs = client.get("/api/v1/runs").json()
    assert runs["count"] == (1 if sees_run else 0)

    assert client.get(f"/api/v1/gates/{gate.id}").status_code == (200 if secret else 404)
    for scope in ("awaiting", "all"):
        listed = client.get(f"/api/v1/gates?scope={scope}").json()
        assert listed["count"] == (1 if secret else 0), scope
    assert client.get(f"/api/v1/artefacts/{artefact.id}").status_code == (200 if secret else 404)
    assert client.get(f"/api/v1/artefacts/{artefact.id}/content").status_code == (200 if secret else 404)
    if sees_run:
        listed = client.get(f"/api/v1/runs/{run.id}/artefacts").json()
        assert ("out" in {a["name"] for a in listed}) is secret

    # Deciding: allowed only with the clearance; a refusal writes no decision.
    decided = client.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, format="json")
    assert decided.status_code == (201 if secret else 404)
    assert Decision.objects.filter(gate=gate).count() == (1 if secret else 0)


def test_refusals_leak_nothing_of_the_object(world, api):
    client = api(world["readers"]["low"])
    for url in (f"/api/v1/gates/{world['gate'].id}", f"/api/v1/artefacts/{world['artefact'].id}"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        for leak in (b"NATO", b"SECRET", world["gate"].title.encode(), b"make"):
            assert leak not in response.content


def test_audit_entries_above_the_auditors_clearance_are_not_listed(world, api):
    labelled = AuditEntry.objects.filter(tenant=world["home"], label=SECRET_NATO)
    assert labelled.filter(event="gate.opened").exists()
    high = api(world["readers"]["cleared"]).get("/api/v1/audit/entries?limit=500").json()
    low = api(world["readers"]["low"]).get("/api/v1/audit/entries?limit=500").json()
    assert any(e.get("label") == SECRET_NATO for e in high["results"])
    assert not any(e.get("label") == SECRET_NATO for e in low["results"])
    assert low["count"] < high["count"]
    searched = api(world["readers"]["low"]).get(f"/api/v1/audit/entries?label={SECRET_NATO}").json()
    assert searched["count"] == 0 and searched["results"] == []


def test_export_is_refused_to_an_auditor_who_cannot_read_every_entry(world, api):
    before = AuditEntry.objects.filter(event="audit.exported").count()
    refused = api(world["readers"]["low"]).get("/api/v1/audit/export")
    assert refused.status_code == 403
    assert refused.json()["code"] == "label_above_clearance"
    assert AuditEntry.objects.filter(event="audit.exported").count() == before
    allowed = api(world["readers"]["cleared"]).get("/api/v1/audit/export")
    assert allowed.status_code == 200
    b"".join(allowed.streaming_content)
    assert AuditEntry.objects.filter(event="audit.exported").count() == before + 1


def test_submitting_above_ones_clearance_is_refused_and_writes_nothing(world, api, make_member):
    author = make_member(world["home"], "author", clearance="CONFIDENTIAL")
    runs, labels = Run.objects.count(), ClassificationLabel.objects.count()
    response = api(author).post("/api/v1/runs", data=WORKFLOW, content_type="application/yaml")
    assert response.status_code == 403
    assert response.json()["code"] == "label_above_clearance"
    assert (Run.objects.count(), ClassificationLabel.objects.count()) == (runs, labels)
    denial = AuditEntry.objects.filter(event="access.denied", actor=author).last()
    assert denial is not None and denial.body["error"] == "label_above_clearance"


@pytest.mark.parametrize("label, code", [
    ("SECRET//", "malformed"),
    ("SECERT", "unknown_level"),
    ("SECRET//NATO//NATO", "duplicate"),
    ("SECRET//REL TO", "malformed"),
    ("ЅECRET", "invalid_character"),  # a Cyrillic look-alike
])
def test_a_task_label_that_is_not_a_label_is_refused_with_its_task_and_line(world, api, label, code):
    source = workflow({"id": "first"}, {"id": "bad", "classification": label})
    runs = Run.objects.count()
    response = api(world["author"]).post("/api/v1/runs", data=source, content_type="application/yaml")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "label_invalid"
    assert body["detail"][0]["task"] == "bad" and body["detail"][0]["code"] == code
    assert body["detail"][0]["line"] is not None
    assert Run.objects.count() == runs
    validate = api(world["author"]).post("/api/v1/workflows/validate", data=source, content_type="application/yaml")
    assert validate.status_code == 400 and validate.json()["code"] == "label_invalid"


def test_a_clearance_change_counts_from_the_next_request(world, api):
    reader = world["readers"]["low"]
    client = api(reader)
    url = f"/api/v1/gates/{world['gate'].id}"
    assert client.get(url).status_code == 404
    admin = api(world["admin"])
    raised = admin.post("/api/v1/tenant/clearances", {"user_id": reader.pk, "max_level": "secret",
                                                      "compartments": ["nato"]}, format="json")
    assert raised.status_code == 200, raised.content
    assert raised.json()["max_level"] == "SECRET" and raised.json()["revision"] == 2
    assert client.get(url).status_code == 200
    revoked = admin.delete(f"/api/v1/tenant/clearances/{raised.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert client.get(url).status_code == 404
    events = list(AuditEntry.objects.filter(object_type="clearance", object_id=str(raised.json()["id"]))
                  .order_by("id").values_list("event", flat=True))
    assert events[-2:] == ["clearance.changed", "clearance.revoked"]
    changed = AuditEntry.objects.filter(event="clearance.changed", object_id=str(raised.json()["id"])).last()
    assert changed.body["data"]["before"]["max_level"] == "CONFIDENTIAL"
    assert changed.body["data"]["after"]["max_level"] == "SECRET"


def test_clearance_api_refusals_write_nothing(world, api, make_tenant, make_member):
    admin = api(world["admin"])
    reader = world["readers"]["low"]
    rows = list(Clearance.objects.order_by("id").values_list("id", "revision", "max_level", "status"))

    bad_level = admin.post("/api/v1/tenant/clearances", {"user_id": reader.pk, "max_level": "ULTRA"}, format="json")
    assert bad_level.status_code == 400 and bad_level.json()["code"] == "clearance_invalid"
    mass = admin.post("/api/v1/tenant/clearances", {"user_id": reader.pk, "max_level": "SECRET", "tenant": 999,
                                                    "revision": 50}, format="json")
    assert mass.status_code == 400 and mass.json()["code"] == "invalid"
    window = admin.post("/api/v1/tenant/clearances", {"user_id": reader.pk, "max_level": "SECRET",
                                                      "valid_from": "2030-01-02T00:00:00Z",
                                                      "valid_until": "2030-01-01T00:00:00Z"}, format="json")
    assert window.status_code == 400 and window.json()["code"] == "clearance_invalid"

    # Nobody changes their own clearance, even a tenant admin.
    self_admin = make_member(world["home"], "tenant_admin", clearance="RESTRICTED")
    own = api(self_admin).post("/api/v1/tenant/clearances", {"user_id": self_admin.pk, "max_level": "TOP SECRET"},
                               format="json")
    assert own.status_code == 403 and own.json()["code"] == "clearance_self"

    # A user of another tenant is not found; an analyst may not manage clearances.
    stranger = make_member(make_tenant(), "analyst")
    foreign = admin.post("/api/v1/tenant/clearances", {"user_id": stranger.pk, "max_level": "SECRET"}, format="json")
    assert foreign.status_code == 404
    analyst = api(world["readers"]["cleared"]).post(
        "/api/v1/tenant/clearances", {"user_id": reader.pk, "max_level": "TOP SECRET"}, format="json")
    assert analyst.status_code == 403

    after = [r for r in Clearance.objects.order_by("id").values_list("id", "revision", "max_level", "status")
             if r[0] in {x[0] for x in rows}]
    assert after == rows
    assert not Clearance.objects.filter(user=stranger, tenant=world["home"]).exists()


def test_a_decision_records_the_clearance_its_maker_held(world, api):
    reader = world["readers"]["cleared"]
    assert api(reader).post(f"/api/v1/gates/{world['gate'].id}/decide", {"option": "confirm"},
                            format="json").status_code == 201
    entry = AuditEntry.objects.get(event="gate.decided", object_id=str(world["gate"].id))
    assert entry.label == SECRET_NATO
    assert entry.body["actor"]["clearance"] == [{"policy": "GH", "max_level": "SECRET", "compartments": ["NATO"],
                                                 "releasability": [], "status": "active", "revision": 1}]
