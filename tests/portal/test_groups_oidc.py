"""Approver groups changed by a tenant admin in oidc mode: the member's Keycloak groups under the
tenant's group follow (python-keycloak over HTTP to the stand-in), and a refused change leaves both
sides as they were."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from gateway.errors import GatehouseError
from gateway.identity import provisioning
from gateway.models import Membership
from tests.identity.conftest import bearer, kc_admin, kc_user, keycloak, oidc  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def _local(keycloak, bearer, username):  # noqa: F811
    assert bearer(keycloak.password_token(username)["access_token"]).get("/api/v1/runs").status_code == 200
    return get_user_model().objects.get(username=username)


def test_groups_change_in_keycloak_and_locally(oidc, tenant, kc_user, kc_admin, keycloak, bearer):  # noqa: F811
    _, admin_name = kc_user(realm_roles=["tenant_admin"])
    uid, member_name = kc_user(groups=["/tenants/acme", "/tenants/acme/day"], realm_roles=["analyst"])
    admin, member = _local(keycloak, bearer, admin_name), _local(keycloak, bearer, member_name)
    assert Membership.objects.get(user=member).groups == ["day"]
    provisioning.tenant_user_set_groups(tenant=tenant, actor=admin, user=member, groups=["night", "senior"])
    assert sorted(g["path"] for g in kc_admin.get_user_groups(uid)) == [
        "/tenants/acme", "/tenants/acme/night", "/tenants/acme/senior"]
    assert Membership.objects.get(user=member).groups == ["night", "senior"]
    entry = AuditEntry.objects.get(event="member.groups_changed", object_id=str(member.pk))
    assert entry.body["data"] == {"before": ["day"], "after": ["night", "senior"]}
    with pytest.raises(GatehouseError) as refused:
        provisioning.tenant_user_set_groups(tenant=tenant, actor=admin, user=admin, groups=["night"])
    assert refused.value.status == 403
    assert Membership.objects.get(user=admin).groups == []
    assert AuditEntry.objects.filter(event="member.groups_changed").count() == 1
