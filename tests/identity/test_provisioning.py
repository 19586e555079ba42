"""Tenant admins provision their tenant's users through the Keycloak Admin API (KeycloakAdmin, over HTTP
to the stand-in); a failed Keycloak call leaves no local row."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from gateway.identity.models import ExternalIdentity
from gateway.models import Membership

URL = "/api/v1/tenant/users"


@pytest.fixture
def admin_client(oidc, tenant, kc_user, keycloak, bearer):
    _, username = kc_user(realm_roles=["tenant_admin"])
    return bearer(keycloak.password_token(username)["access_token"])


def local_state(username: str) -> tuple:
    return (get_user_model().objects.filter(username=username).exists(),
            Membership.objects.filter(user__username=username).exists(),
            ExternalIdentity.objects.filter(user__username=username).exists(),
            AuditEntry.objects.filter(event="member.created", body__data__username=username).exists())


def test_a_tenant_admin_creates_a_user_in_keycloak_and_locally(admin_client, kc_admin, keycloak, bearer, tenant):
    response = admin_client.post(URL, {"username": "newbie", "email": "newbie@example.org", "roles": ["analyst"],
                                       "groups": ["senior-analyst"], "password": "first-pw"}, format="json")
    assert response.status_code == 201, response.content
    kc_id = kc_admin.get_user_id("newbie")
    assert response.json()["subject"] == kc_id
    assert [r["name"] for r in kc_admin.get_realm_roles_of_user(kc_id)] == ["analyst"]
    assert sorted(g["path"] for g in kc_admin.get_user_groups(kc_id)) == ["/tenants/acme",
                                                                          "/tenants/acme/senior-analyst"]
    membership = Membership.objects.get(user__username="newbie")
    assert membership.tenant == tenant and membership.roles == ["analyst"] and membership.groups == ["senior-analyst"]
    assert local_state("newbie") == (True, True, True, True)
    # The new user's own token lands on the same account.
    token = keycloak.password_token("newbie", "first-pw")["access_token"]
    assert bearer(token).get("/api/v1/runs").status_code == 200
    assert ExternalIdentity.objects.get(subject=kc_id).user.username == "newbie"


def test_a_name_taken_in_keycloak_leaves_nothing_locally(admin_client, kc_user):
    _, taken = kc_user(groups=["/elsewhere"])
    response = admin_client.post(URL, {"username": taken, "roles": ["analyst"]}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "user_exists"
    assert local_state(taken) == (False, False, False, False)


def test_keycloak_refusing_our_credentials_leaves_nothing_locally(admin_client, settings, kc_admin):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "ADMIN_CLIENT_SECRET": "wrong"}
    response = admin_client.post(URL, {"username": "nobody1", "roles": ["analyst"]}, format="json")
    assert response.status_code == 502 and response.json()["code"] == "identity_unavailable"
    assert local_state("nobody1") == (False, False, False, False)
    assert kc_admin.get_user_id("nobody1") is None


def test_a_failure_after_the_keycloak_user_exists_undoes_it(admin_client, settings, kc_admin):
    # "analyst" now maps to a realm role Keycloak does not have: assigning it fails after create_user.
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH,
                               "ROLE_MAP": "realm:tenant_admin=tenant_admin,realm:no-such-role=analyst"}
    response = admin_client.post(URL, {"username": "nobody2", "roles": ["analyst"]}, format="json")
    assert response.status_code == 502
    assert local_state("nobody2") == (False, False, False, False)
    assert kc_admin.get_user_id("nobody2") is None


def test_roles_change_in_keycloak_and_locally(admin_client, kc_user, kc_admin, keycloak, bearer):
    uid, username = kc_user(realm_roles=["analyst", "offline_access"])
    assert bearer(keycloak.password_token(username)["access_token"]).get("/api/v1/runs").status_code == 200
    user_id = get_user_model().objects.get(username=username).pk
    response = admin_client.patch(f"{URL}/{user_id}", {"roles": ["author", "auditor"]}, format="json")
    assert response.status_code == 200, response.content
    assert sorted(r["name"] for r in kc_admin.get_realm_roles_of_user(uid)) == ["auditor", "author", "offline_access"]
    assert Membership.objects.get(user_id=user_id).roles == ["auditor", "author"]
    assert AuditEntry.objects.filter(event="member.roles_changed", object_id=str(user_id)).exists()


def test_disabling_a_user_disables_them_in_keycloak(admin_client, kc_user, kc_admin, keycloak, bearer):
    uid, username = kc_user()
    token = keycloak.password_token(username)["access_token"]
    assert bearer(token).get("/api/v1/runs").status_code == 200
    user_id = get_user_model().objects.get(username=username).pk
    assert admin_client.patch(f"{URL}/{user_id}", {"enabled": False}, format="json").status_code == 200
    assert kc_admin.get_user(uid)["enabled"] is False
    assert bearer(token).get("/api/v1/runs").status_code == 401
    assert admin_client.patch(f"{URL}/{user_id}", {"enabled": True}, format="json").status_code == 200
    assert kc_admin.get_user(uid)["enabled"] is True
    assert bearer(keycloak.password_token(username)["access_token"]).get("/api/v1/runs").status_code == 200


def test_platform_roles_cannot_be_granted(admin_client, kc_admin):
    response = admin_client.post(URL, {"username": "climber", "roles": ["platform_admin"]}, format="json")
    assert response.status_code == 403 and response.json()["code"] == "role_not_allowed"
    assert local_state("climber") == (False, False, False, False)
    assert kc_admin.get_user_id("climber") is None


def test_the_tenant_comes_from_the_caller_never_the_body(admin_client, other_tenant, kc_admin):
    response = admin_client.post(URL, {"username": "mole", "roles": ["analyst"], "tenant": other_tenant.slug},
                                 format="json")
    assert response.status_code == 400 and "tenant" in response.json()["detail"]
    assert local_state("mole") == (False, False, False, False)
    assert kc_admin.get_user_id("mole") is None


def test_another_tenants_user_is_not_found(admin_client, other_tenant, make_member):
    stranger = make_member(other_tenant, "analyst")
    assert admin_client.get(f"{URL}/{stranger.pk}").status_code == 404
    assert admin_client.patch(f"{URL}/{stranger.pk}", {"roles": ["tenant_admin"]}, format="json").status_code == 404
    assert Membership.objects.get(user=stranger).roles == ["analyst"]
    assert stranger.username not in str(admin_client.get(URL).content)


def test_dev_mode_provisions_the_local_tables_only(api, tenant, make_member):
    boss = make_member(tenant, "tenant_admin")
    response = api(boss).post(URL, {"username": "local-newbie", "roles": ["author"]}, format="json")
    assert response.status_code == 201 and response.json()["subject"] is None
    assert Membership.objects.get(user__username="local-newbie").roles == ["author"]
    assert not ExternalIdentity.objects.exists()


def test_a_write_failing_at_keycloak_is_audited_as_an_error(admin_client, settings, kc_admin, kc_user, keycloak,
                                                            bearer, tenant):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "ADMIN_CLIENT_SECRET": "wrong"}
    response = admin_client.post(URL, {"username": "nobody3", "roles": ["analyst"]}, format="json")
    assert response.status_code == 502
    failed = AuditEntry.objects.get(event="request.failed")
    assert failed.outcome == "error" and failed.body["error"] == "identity_unavailable"
    assert failed.tenant_id == tenant.pk and failed.actor_id is not None
    assert failed.body["data"]["method"] == "POST" and failed.body["data"]["status"] == 502
    assert failed.body["data"]["path"] == URL
    assert local_state("nobody3") == (False, False, False, False)


def test_a_role_change_failing_at_keycloak_is_audited_and_changes_nothing(admin_client, settings, kc_user, keycloak,
                                                                          bearer, kc_admin):
    uid, username = kc_user(realm_roles=["analyst"])
    assert bearer(keycloak.password_token(username)["access_token"]).get("/api/v1/runs").status_code == 200
    user_id = get_user_model().objects.get(username=username).pk
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "ADMIN_CLIENT_SECRET": "wrong"}
    response = admin_client.patch(f"{URL}/{user_id}", {"roles": ["author"]}, format="json")
    assert response.status_code == 502 and response.json()["code"] == "identity_unavailable"
    failed = AuditEntry.objects.get(event="request.failed")
    assert failed.outcome == "error" and failed.body["data"]["method"] == "PATCH"
    assert failed.body["data"]["path"] == f"{URL}/{user_id}"
    assert Membership.objects.get(user_id=user_id).roles == ["analyst"]
    assert not AuditEntry.objects.filter(event="member.roles_changed").exists()
    assert [r["name"] for r in kc_admin.get_realm_roles_of_user(uid)] == ["analyst"]


def test_a_failed_read_is_not_recorded_as_a_failed_write(admin_client, settings):
    # GET /tenant/users reads local rows only: made to fail here by a Keycloak outage of the bearer check.
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "SERVER_URL": "http://127.0.0.1:9"}
    assert admin_client.get(URL).status_code == 503
    assert not AuditEntry.objects.filter(event="request.failed").exists()
