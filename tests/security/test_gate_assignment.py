"""Per-object grants (django-guardian, direct foreign-key tables): a tenant admin assigns one
member to decide one gate. A grant never follows from a global permission and never crosses
tenants or clearances."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from guardian.models import UserObjectPermission

from approvals.models import Decision, Gate, GateUserObjectPermission
from audit.models import AuditEntry
from gateway.services import run_submit

from tests.engine.driver import workflow

GATED = workflow({"id": "check", "type": "gate", "approvers": ["senior-analyst"]}, name="assigned")


@pytest.fixture
def world(db, recording, make_tenant, make_member):
    home, away = make_tenant(), make_tenant()
    admin = make_member(home, "tenant_admin")
    author = make_member(home, "author")
    run = run_submit(tenant=home, actor=author, source=GATED)
    away_author = make_member(away, "author")
    away_run = run_submit(tenant=away, actor=away_author, source=GATED)
    return {"home": home, "away": away, "admin": admin, "author": author, "gate": Gate.objects.get(run=run),
            "away_gate": Gate.objects.get(run=away_run)}


def assign(api, world, user):
    return api(world["admin"]).post(f"/api/v1/gates/{world['gate'].id}/assignees", {"user_id": user.pk}, format="json")


def test_an_assigned_member_may_decide_a_gate_their_roles_do_not_name(world, api, make_member):
    analyst = make_member(world["home"], "analyst")
    client = api(analyst)
    gate = world["gate"]
    assert client.get("/api/v1/gates").json()["count"] == 0
    refused = client.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "gate_not_approver"
    assert not Decision.objects.filter(gate=gate).exists()

    response = assign(api, world, analyst)
    assert response.status_code == 201, response.content
    assert response.json()["assignees"] == [analyst.username]
    grant = GateUserObjectPermission.objects.get(user=analyst)
    assert grant.content_object_id == gate.id
    assert not UserObjectPermission.objects.exists()  # the direct table, not guardian's generic one
    assert AuditEntry.objects.filter(event="gate.assigned", object_id=str(gate.id), actor=world["admin"]).exists()

    assert [g["id"] for g in client.get("/api/v1/gates").json()["results"]] == [str(gate.id)]
    decided = client.post(f"/api/v1/gates/{gate.id}/decide", {"option": "confirm"}, format="json")
    assert decided.status_code == 201, decided.content


def test_unassigning_takes_the_right_away(world, api, make_member):
    analyst = make_member(world["home"], "analyst")
    assert assign(api, world, analyst).status_code == 201
    url = f"/api/v1/gates/{world['gate'].id}/assignees/{analyst.pk}"
    assert api(world["admin"]).delete(url).status_code == 200
    assert api(world["admin"]).delete(url).status_code == 404
    assert not GateUserObjectPermission.objects.exists()
    assert AuditEntry.objects.filter(event="gate.unassigned", object_id=str(world["gate"].id)).count() == 1
    refused = api(analyst).post(f"/api/v1/gates/{world['gate'].id}/decide", {"option": "confirm"}, format="json")
    assert refused.status_code == 403
    assert not Decision.objects.exists()


def test_a_global_permission_grants_no_gate(world, api, make_member):
    analyst = make_member(world["home"], "analyst")
    analyst.user_permissions.add(Permission.objects.get(codename="decide_gate"))
    client = api(analyst)
    assert client.get("/api/v1/gates").json()["count"] == 0
    refused = client.post(f"/api/v1/gates/{world['gate'].id}/decide", {"option": "confirm"}, format="json")
    assert refused.status_code == 403
    foreign = client.post(f"/api/v1/gates/{world['away_gate'].id}/decide", {"option": "confirm"}, format="json")
    assert foreign.status_code == 404
    assert not Decision.objects.exists()


def test_a_grant_does_not_cross_tenants(world, api, make_member):
    """A grant on a home gate to a home analyst is worthless for the same analyst's view of another
    tenant, and a member of another tenant cannot be assigned."""
    stranger = make_member(world["away"], "analyst")
    response = assign(api, world, stranger)
    assert response.status_code == 404
    assert not GateUserObjectPermission.objects.exists()
    away_admin = make_member(world["away"], "tenant_admin")
    foreign = api(away_admin).post(f"/api/v1/gates/{world['gate'].id}/assignees", {"user_id": stranger.pk},
                                   format="json")
    assert foreign.status_code == 404
    assert not GateUserObjectPermission.objects.exists()


def test_a_member_not_cleared_for_the_gate_cannot_be_assigned(world, api, make_member):
    uncleared = make_member(world["home"], "analyst", clearance=None)
    response = assign(api, world, uncleared)
    assert response.status_code == 409 and response.json()["code"] == "assignee_not_cleared"
    assert not GateUserObjectPermission.objects.exists()
    assert not AuditEntry.objects.filter(event="gate.assigned").exists()


def test_only_tenant_admins_assign(world, api, make_member):
    analyst = make_member(world["home"], "analyst")
    response = api(world["author"]).post(f"/api/v1/gates/{world['gate'].id}/assignees", {"user_id": analyst.pk},
                                         format="json")
    assert response.status_code == 403
    assert not GateUserObjectPermission.objects.exists()
