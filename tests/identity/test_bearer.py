"""Bearer tokens on the API: every kind of bad token is refused (401) and leaves nothing but its audit
entry; a good one is mapped to the user and membership Keycloak says, as they are now."""
from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from jwcrypto import jwk, jws

from audit.models import AuditEntry
from gateway.identity.models import ExternalIdentity
from gateway.models import Membership

from tests.keycloak_standin.server import unverified_header

from .conftest import claims_of, now

API = "/api/v1/runs"


@pytest.fixture
def good(oidc, tenant, keycloak, kc_user):
    """A real access token of an analyst of tenant acme, and the claims it carries."""
    uid, username = kc_user()
    answer = keycloak.password_token(username)
    return {"uid": uid, "username": username, "token": answer["access_token"], "answer": answer,
            "claims": claims_of(answer["access_token"])}


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hostile(kind: str, good: dict, keycloak) -> str | None:
    claims = dict(good["claims"])
    if kind == "missing":
        return None
    if kind == "garbage":
        return "not-a-token"
    if kind == "alg-none":
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    if kind == "hs256-with-public-key":
        public_pem = keycloak.private_key().export_to_pem()  # the public key, as PEM: the classic confusion
        secret = jwk.JWK(kty="oct", k=_b64(public_pem))
        token = jws.JWS(json.dumps(claims).encode())
        token.add_signature(secret, alg="HS256", protected={"alg": "HS256", "typ": "JWT",
                                                            "kid": keycloak.keys()["current"]})
        return token.serialize(compact=True)
    if kind == "expired-beyond-leeway":
        claims.update(iat=now() - 400, exp=now() - 40)
    elif kind == "nbf-beyond-leeway":
        claims.update(nbf=now() + 40)
    elif kind == "no-exp":
        claims.pop("exp")
    elif kind == "wrong-iss":
        claims["iss"] = claims["iss"].replace("/realms/gatehouse", "/realms/elsewhere")
    elif kind == "wrong-aud":
        claims["aud"] = ["someone-else", "account"]
    elif kind == "other-client":
        return keycloak.password_token(good["username"], client_id="other-client", secret="other-secret")["access_token"]
    elif kind == "other-client-for-our-audience":  # another client's token that names us in aud
        claims["azp"] = "other-client"
    elif kind == "id-token":
        return good["answer"]["id_token"]
    elif kind == "refresh-token":
        return good["answer"]["refresh_token"]
    elif kind == "unknown-kid":
        stranger = jwk.JWK.generate(kty="RSA", size=2048, kid=uuid.uuid4().hex)
        return keycloak.sign(claims, key=stranger)
    elif kind == "tampered":
        head, _, sig = good["token"].split(".")
        claims["realm_access"] = {"roles": ["tenant_admin"]}
        return f"{head}.{_b64(claims)}.{sig}"
    return keycloak.sign(claims)


HOSTILE = ["missing", "garbage", "alg-none", "hs256-with-public-key", "expired-beyond-leeway",
           "nbf-beyond-leeway", "no-exp", "wrong-iss", "wrong-aud", "other-client", "other-client-for-our-audience", "id-token", "refresh-token",
           "unknown-kid", "tampered"]


REASONS = {"garbage": "malformed token", "alg-none": "algorithm 'none'", "hs256-with-public-key": "algorithm 'HS256'",
           "expired-beyond-leeway": "expired", "nbf-beyond-leeway": "not yet valid", "no-exp": "exp is missing",
           "wrong-iss": "wrong issuer", "wrong-aud": "wrong audience", "other-client": "wrong audience",
           "other-client-for-our-audience": "another client", "id-token": "wrong token type",
           "refresh-token": "wrong audience", "unknown-kid": "unknown key", "tampered": "bad signature"}


@pytest.mark.parametrize("kind", HOSTILE)
def test_bad_tokens_are_refused(kind, good, keycloak, bearer, api):
    token = hostile(kind, good, keycloak)
    client = api() if token is None else bearer(token)
    response = client.get(API)
    assert response.status_code == 401, (kind, response.content[:300])
    header = response["WWW-Authenticate"]
    assert header.startswith('Bearer realm="gatehouse"'), header
    if token is None:
        assert response.json()["code"] == "not_authenticated"
    else:
        assert 'error="invalid_token"' in header, header
        assert response.json()["code"] == "invalid_token"
        assert REASONS[kind] in response.json()["message"], response.json()["message"]
    # Nothing written but the denial.
    assert not ExternalIdentity.objects.exists() and not Membership.objects.filter(user__username=good["username"]).exists()
    denial = AuditEntry.objects.filter(event="access.denied").latest("id")
    assert denial.outcome == "denied" and denial.body["error"] == response.json()["code"]


def test_a_good_token_is_accepted_and_mapped(good, bearer, tenant):
    response = bearer(good["token"]).get(API)
    assert response.status_code == 200, response.content[:300]
    link = ExternalIdentity.objects.select_related("user__membership").get(subject=good["uid"])
    assert link.user.username == good["username"]
    assert link.user.membership.tenant == tenant and link.user.membership.roles == ["analyst"]
    assert AuditEntry.objects.filter(event="member.created", object_id=str(link.user.pk)).exists()
    # The same subject is the same account on the next request.
    assert bearer(good["token"]).get(API).status_code == 200
    assert ExternalIdentity.objects.count() == 1


def test_a_dev_api_token_is_not_accepted_in_oidc_mode(oidc, api, author):
    response = api(author).get(API)
    assert response.status_code == 401


@pytest.mark.parametrize("exp_offset,ok", [(-20, True), (-40, False)])
def test_expiry_leeway_is_30_seconds(exp_offset, ok, good, keycloak, bearer):
    claims = {**good["claims"], "iat": now() - 300, "exp": now() + exp_offset}
    response = bearer(keycloak.sign(claims)).get(API)
    assert response.status_code == (200 if ok else 401), response.content[:300]


@pytest.mark.parametrize("nbf_offset,ok", [(20, True), (40, False)])
def test_not_before_leeway_is_30_seconds(nbf_offset, ok, good, keycloak, bearer):
    claims = {**good["claims"], "nbf": now() + nbf_offset}
    response = bearer(keycloak.sign(claims)).get(API)
    assert response.status_code == (200 if ok else 401), response.content[:300]


def test_key_rotation_fetches_the_keys_once(good, keycloak, bearer, kc_user):
    assert bearer(good["token"]).get(API).status_code == 200
    fetched = keycloak.stats().get("certs", 0)
    new_kid = keycloak.rotate_key()
    _, username = kc_user()
    rotated = keycloak.password_token(username)["access_token"]
    assert unverified_header(rotated)["kid"] == new_kid
    for _ in range(3):
        assert bearer(rotated).get(API).status_code == 200
    assert keycloak.stats()["certs"] == fetched + 1
    assert bearer(good["token"]).get(API).status_code == 200  # the old key is still published


def test_a_flood_of_unknown_key_ids_costs_one_fetch_per_interval(good, keycloak, bearer, settings):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "JWKS_MIN_REFRESH_SECONDS": 1}
    assert bearer(good["token"]).get(API).status_code == 200
    time.sleep(1.1)
    fetched = keycloak.stats()["certs"]
    for _ in range(10):
        stranger = jwk.JWK.generate(kty="RSA", size=1024, kid=uuid.uuid4().hex)
        assert bearer(keycloak.sign(good["claims"], key=stranger)).get(API).status_code == 401
    assert keycloak.stats()["certs"] == fetched + 1


def test_disabling_the_user_counts_from_the_next_request(good, bearer, kc_admin):
    assert bearer(good["token"]).get(API).status_code == 200
    kc_admin.update_user(good["uid"], {"enabled": False})
    response = bearer(good["token"]).get(API)
    assert response.status_code == 401 and "no longer active" in response.json()["message"]


def test_an_ended_session_counts_from_the_next_request(good, bearer, keycloak):
    assert bearer(good["token"]).get(API).status_code == 200
    keycloak.end_session(good["claims"]["sid"])
    assert bearer(good["token"]).get(API).status_code == 401


def test_removing_a_role_counts_from_the_next_request(oidc, tenant, keycloak, kc_user, kc_admin, bearer):
    uid, username = kc_user(realm_roles=["analyst", "auditor"])
    token = keycloak.password_token(username)["access_token"]
    assert bearer(token).get("/api/v1/audit/entries").status_code == 200
    kc_admin.delete_realm_roles_of_user(uid, [kc_admin.get_realm_role("auditor")])
    response = bearer(token).get("/api/v1/audit/entries")  # the same token, still carrying the role
    assert response.status_code == 403
    membership = Membership.objects.get(user__external_identity__subject=uid)
    assert membership.roles == ["analyst"]
    synced = AuditEntry.objects.filter(event="member.synced", object_id=str(membership.user_id)).latest("id")
    assert synced.body["data"]["before"]["roles"] == ["analyst", "auditor"]


def test_an_introspection_cache_delays_revocation_by_its_ttl(good, bearer, kc_admin, settings):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "INTROSPECTION_CACHE_SECONDS": 60}
    assert bearer(good["token"]).get(API).status_code == 200
    kc_admin.update_user(good["uid"], {"enabled": False})
    assert bearer(good["token"]).get(API).status_code == 200  # the documented cost of a TTL


def test_roles_are_mapped_from_realm_and_client_roles(oidc, tenant, settings, keycloak, kc_user, bearer):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH,
                               "ROLE_MAP": "realm:gh-reviewer=analyst,client:writer=author"}
    uid, username = kc_user(realm_roles=["gh-reviewer", "analyst", "unrelated"],
                            client_roles={"gatehouse": ["writer"], "other-client": ["auditor"]})
    assert bearer(keycloak.password_token(username)["access_token"]).get(API).status_code == 200
    # "analyst" as a realm role is not in this mapping; the other client's roles never count.
    assert Membership.objects.get(user__external_identity__subject=uid).roles == ["analyst", "author"]


def test_the_tenant_and_approver_groups_come_from_groups(oidc, tenant, keycloak, kc_user, bearer):
    uid, username = kc_user(groups=["/tenants/acme/senior-analyst", "/staff"])
    assert bearer(keycloak.password_token(username)["access_token"]).get(API).status_code == 200
    membership = Membership.objects.get(user__external_identity__subject=uid)
    assert membership.tenant == tenant and membership.groups == ["senior-analyst"]


@pytest.mark.parametrize("groups", [[], ["/tenants/nowhere"], ["/tenants/acme", "/tenants/globex"], ["/staff"]])
def test_a_user_of_no_known_tenant_is_refused(groups, oidc, tenant, other_tenant, keycloak, kc_user, bearer):
    uid, username = kc_user(groups=groups)
    response = bearer(keycloak.password_token(username)["access_token"]).get(API)
    assert response.status_code == 403 and response.json()["code"] == "no_tenant"
    assert not ExternalIdentity.objects.filter(subject=uid).exists()
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username=username).exists()
    assert AuditEntry.objects.filter(event="access.denied", body__error="no_tenant").exists()


def test_a_renamed_user_stays_the_same_account(good, bearer, kc_admin, keycloak):
    assert bearer(good["token"]).get(API).status_code == 200
    first = ExternalIdentity.objects.get(subject=good["uid"]).user_id
    kc_admin.update_user(good["uid"], {"username": good["username"] + "-renamed"})
    token = keycloak.password_token(good["username"] + "-renamed")["access_token"]
    assert bearer(token).get(API).status_code == 200
    assert ExternalIdentity.objects.get(subject=good["uid"]).user_id == first
    assert ExternalIdentity.objects.count() == 1

