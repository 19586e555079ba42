"""TENANT_CLAIM: the tenant named by a claim of the token (in Keycloak a User Attribute mapper puts the
user's `tenant` attribute in it) instead of the tenant group, on the API and at the portal login."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from gateway.identity.models import ExternalIdentity
from gateway.models import Membership

from .conftest import auth_redirect, authorize, claims_of

API = "/api/v1/runs"


@pytest.fixture
def tenant_claim(oidc, settings, keycloak, tenant, other_tenant):
    keycloak.configure_client(attribute_claims=["tenant"])
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "TENANT_CLAIM": "tenant"}
    yield "tenant"
    keycloak.configure_client(attribute_claims=[])


def test_the_tenant_comes_from_the_claim(tenant_claim, keycloak, kc_user, bearer, tenant):
    uid, username = kc_user(groups=["/staff"], attributes={"tenant": ["acme"]})
    token = keycloak.password_token(username)["access_token"]
    assert claims_of(token)["tenant"] == "acme"
    assert bearer(token).get(API).status_code == 200
    membership = Membership.objects.get(user__external_identity__subject=uid)
    assert membership.tenant == tenant and membership.roles == ["analyst"]


def test_the_claim_wins_over_the_groups_and_other_tenants_subgroups_do_not_count(
        tenant_claim, keycloak, kc_user, bearer, tenant):
    uid, username = kc_user(groups=["/tenants/globex/senior-analyst", "/tenants/acme/reviewers"],
                            attributes={"tenant": ["acme"]})
    assert bearer(keycloak.password_token(username)["access_token"]).get(API).status_code == 200
    membership = Membership.objects.get(user__external_identity__subject=uid)
    assert membership.tenant == tenant and membership.groups == ["reviewers"]


@pytest.mark.parametrize("attributes", [{}, {"tenant": [""]}, {"tenant": ["nowhere"]}])
def test_no_usable_claim_is_no_tenant_and_writes_nothing(attributes, tenant_claim, keycloak, kc_user, bearer):
    uid, username = kc_user(groups=["/tenants/acme"], attributes=attributes)  # the group alone is not enough
    response = bearer(keycloak.password_token(username)["access_token"]).get(API)
    assert response.status_code == 403 and response.json()["code"] == "no_tenant"
    assert not ExternalIdentity.objects.filter(subject=uid).exists()
    assert not get_user_model().objects.filter(username=username).exists()
    assert not AuditEntry.objects.filter(event="member.created", body__data__subject=uid).exists()
    assert AuditEntry.objects.filter(event="access.denied", body__error="no_tenant").exists()


def test_a_changed_claim_moves_the_user_on_the_next_request(tenant_claim, keycloak, kc_user, kc_admin, bearer,
                                                            other_tenant):
    uid, username = kc_user(groups=[], attributes={"tenant": ["acme"]})
    token = keycloak.password_token(username)["access_token"]
    assert bearer(token).get(API).status_code == 200
    kc_admin.update_user(uid, {"attributes": {"tenant": ["globex"]}})
    assert bearer(token).get(API).status_code == 200  # the same token: introspection says globex now
    membership = Membership.objects.get(user__external_identity__subject=uid)
    assert membership.tenant == other_tenant
    synced = AuditEntry.objects.filter(event="member.synced", object_id=str(membership.user_id)).latest("id")
    assert synced.body["data"]["after"]["tenant"] == other_tenant.pk


def test_the_portal_login_takes_the_tenant_from_the_claim(tenant_claim, client, kc_user, tenant):
    uid, username = kc_user(groups=[], attributes={"tenant": ["acme"]})
    assert client.get(authorize(auth_redirect(client), username)).status_code == 302
    assert Membership.objects.get(user__external_identity__subject=uid).tenant == tenant
    assert client.get("/").status_code == 200
