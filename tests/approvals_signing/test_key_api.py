"""Approvers' keys over the API: list and rotate one's own; revoke one's own, or a member's as their
tenant admin; never another tenant's."""
from __future__ import annotations

from approvals.signing.models import ApproverKey
from audit.models import AuditEntry


def test_an_approver_rotates_and_revokes_their_own_key(master_key_file, approvers, api):
    client = api(approvers[0])
    assert client.get("/api/v1/me/keys").json() == []
    first = client.post("/api/v1/me/keys/rotate", {"reason": "first key"}, format="json")
    assert first.status_code == 201 and first.json()["in_use"]
    second = client.post("/api/v1/me/keys/rotate", {"reason": "yearly rotation"}, format="json")
    assert second.status_code == 201 and second.json()["key_id"] != first.json()["key_id"]
    listed = client.get("/api/v1/me/keys").json()
    assert [k["in_use"] for k in listed] == [True, False]
    assert listed[1]["retired_at"] is not None and listed[1]["reason"] == "yearly rotation"
    revoked = client.post(f"/api/v1/keys/{second.json()['key_id']}/revoke", {"reason": "laptop lost"}, format="json")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = client.post(f"/api/v1/keys/{second.json()['key_id']}/revoke", {"reason": "again"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "key_operation_refused"
    events = list(AuditEntry.objects.filter(event__startswith="approver_key.", actor=approvers[0])
                  .order_by("id").values_list("event", flat=True))
    assert events == ["approver_key.enrolled", "approver_key.rotated", "approver_key.revoked"]


def test_revocation_is_for_the_owner_or_their_tenant_admin_only(master_key_file, approvers, api, make_member,
                                                                 make_tenant, tenant):
    key = api(approvers[0]).post("/api/v1/me/keys/rotate", {"reason": "first"}, format="json").json()
    url = f"/api/v1/keys/{key['key_id']}/revoke"
    colleague = api(approvers[1]).post(url, {"reason": "mischief"}, format="json")
    assert colleague.status_code == 403
    stranger = api(make_member(make_tenant(), "tenant_admin")).post(url, {"reason": "mischief"}, format="json")
    assert stranger.status_code == 404
    assert ApproverKey.objects.get(key_id=key["key_id"]).revoked_at is None
    admin = api(make_member(tenant, "tenant_admin")).post(url, {"reason": "left the agency"}, format="json")
    assert admin.status_code == 200
    assert ApproverKey.objects.get(key_id=key["key_id"]).reason == "left the agency"
    missing_reason = api(approvers[1]).post("/api/v1/me/keys/rotate", {"reason": ""}, format="json")
    assert missing_reason.status_code == 400
