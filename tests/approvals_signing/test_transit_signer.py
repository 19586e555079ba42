"""TransitSigner against a real OpenBao server (``bao server -dev``, tests/vault.py) whose JWT auth
method trusts the Keycloak stand-in's realm keys (tests/keycloak_standin): each approver's access
token gets a short-lived Vault token that signs with the Transit key named after its own subject,
and nothing else."""
from __future__ import annotations

import base64
import json
import uuid

import hvac.exceptions
import pytest
from jwcrypto import jwk, jws

from approvals.signing.decisions import decision_sign, decision_signature_record
from approvals.signing.document import verify_decision
from approvals.signing.keys import approver_id, approver_key_enrol, approver_key_rotate, key_records
from approvals.signing.models import ApproverKey
from approvals.signing.signers import (
    SigningError,
    TransitSigner,
    signer_for,
    vault_approver_auth_configure,
    vault_token_for_approver,
)
from tests.keycloak_standin import CLIENT_ID, CLIENT_SECRET, REALM, KeycloakStandin
from tests.vault import OpenBaoServer, enable_transit

pytestmark = pytest.mark.django_db


def _claims(token: str) -> dict:
    """A real token's claims, unverified, to copy into a token signed by a key the realm never had."""
    parsed = jws.JWS()
    parsed.deserialize(token)
    return json.loads(parsed.objects["payload"])


@pytest.fixture(scope="module")
def keycloak():
    with KeycloakStandin() as server:
        yield server


@pytest.fixture(scope="module")
def openbao(keycloak):
    with OpenBaoServer() as server:
        root = server.client()
        enable_transit(root)
        policy = vault_approver_auth_configure(
            root, jwks_url=f"{keycloak.issuer}/protocol/openid-connect/certs", issuer=keycloak.issuer,
            audience=CLIENT_ID)
        server.approver_policy = policy
        yield server


@pytest.fixture
def vault(settings, openbao, keycloak, tenant):
    """Gatehouse in oidc mode against the stand-in, signing through OpenBao."""
    from gateway.identity.tokens import jwks

    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "MODE": "oidc", "SERVER_URL": keycloak.url, "REALM": REALM,
                               "ISSUER": "", "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET,
                               "INTROSPECTION_CACHE_SECONDS": 0, "JWKS_MIN_REFRESH_SECONDS": 0}
    settings.GATEHOUSE_APPROVAL_SIGNING = {**settings.GATEHOUSE_APPROVAL_SIGNING, "BACKEND": "transit",
                                           "VAULT_URL": openbao.url}
    jwks.forget()
    yield openbao
    jwks.forget()


@pytest.fixture
def approver(keycloak, vault):
    """An analyst of acme in the stand-in, signed in: (local user made from their token, access token)."""
    from gateway.identity.sync import principal_from_claims, user_for_principal
    from gateway.identity.tokens import access_token_claims

    def make():
        username = f"analyst-{uuid.uuid4().hex[:8]}"
        keycloak.add_user(username, groups=["/tenants/acme"], realm_roles=["analyst"])
        token = keycloak.password_token(username)["access_token"]
        user = user_for_principal(principal_from_claims(access_token_claims(token)))
        return user, token

    return make


@pytest.fixture
def enrolled(approver, vault):
    def make():
        user, token = approver()
        key = approver_key_enrol(user, backend="transit", vault_client=vault.client())
        return user, token, key

    return make


def test_the_policy_is_templated_on_the_jwt_alias(vault):
    accessor = vault.client().sys.list_auth_methods()["data"]["jwt/"]["accessor"]
    assert f'path "transit/sign/{{{{identity.entity.aliases.{accessor}.name}}}}"' in vault.approver_policy
    assert vault.client().auth.jwt.read_role("gatehouse-approver")["data"]["user_claim"] == "sub"


def test_an_approver_signs_a_decision_with_their_own_transit_key(enrolled, make_gate):
    user, token, key = enrolled()
    assert key.backend_ref == {"mount": "transit", "name": approver_id(user), "version": 1}
    assert key.approver == approver_id(user) == user.external_identity.subject
    gate = make_gate()
    signer = signer_for(user, access_token=token)
    assert isinstance(signer, TransitSigner)
    signed = decision_sign(signer, gate=gate, approver=user, option="confirm", input_value={"n": 1})
    verify_decision(signed.document_bytes, signed.signature, key.key_id, key_records())
    row = decision_signature_record(signed, gate=gate, expect_approver=user)
    assert row.key == key


def test_with_approver_as_token_vault_refuses_bs_key(enrolled, make_gate):
    alice, alice_token, alice_key = enrolled()
    bob, _, bob_key = enrolled()
    document = base64.b64encode(b"a decision document").decode()
    client = vault_token_for_approver(alice_token)
    # Her own key: allowed.
    client.secrets.transit.sign_data(name=alice_key.backend_ref["name"], hash_input=document)
    # Bob's key, with the token Vault issued from Alice's identity: 403 from Vault.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.sign_data(name=bob_key.backend_ref["name"], hash_input=document)
    # The gateway's signer does not check this itself: Vault refuses it.
    with pytest.raises(SigningError) as exc:
        decision_sign(TransitSigner(bob_key, alice_token), gate=make_gate(), approver=bob, option="confirm")
    assert exc.value.status == 403
    # Nor may the approver's token manage keys.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.rotate_key(name=alice_key.backend_ref["name"])


def test_a_token_not_signed_by_the_realm_gets_no_vault_token(enrolled, keycloak):
    user, token, _ = enrolled()
    stranger = jwk.JWK.generate(kty="RSA", size=2048, kid="not-the-realms", alg="RS256")
    forged = keycloak.sign(_claims(token), key=stranger)
    with pytest.raises(SigningError) as exc:
        vault_token_for_approver(forged)
    assert exc.value.status in (400, 403)
    # A token of the realm for another client (wrong audience) is refused too.
    other = keycloak.password_token(user.username, client_id="other-client", secret="other-secret")["access_token"]
    with pytest.raises(SigningError):
        vault_token_for_approver(other)


def test_transit_rotation_pins_the_new_version_and_old_signatures_still_verify(enrolled, make_gate, vault):
    user, token, old = enrolled()
    gate = make_gate()
    before = decision_sign(TransitSigner.for_user(user, token), gate=gate, approver=user, option="confirm")
    new = approver_key_rotate(user, backend="transit", vault_client=vault.client(), reason="yearly")
    assert new.backend_ref["version"] == 2 and new.key_id != old.key_id
    old.refresh_from_db()
    assert old.retired_at is not None
    keys = key_records()
    verify_decision(before.document_bytes, before.signature, old.key_id, keys)
    after = decision_sign(TransitSigner.for_user(user, token), gate=gate, approver=user, option="confirm")
    assert after.key_id == new.key_id
    verify_decision(after.document_bytes, after.signature, new.key_id, keys)
    assert ApproverKey.objects.filter(user=user).count() == 2
