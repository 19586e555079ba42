"""OpenID Connect Back-Channel Logout: Keycloak ends a session, the portal session ends with it; a forged
or replayed logout token ends nothing."""
from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from jwcrypto import jwk

from audit.models import AuditEntry
from gateway.identity.models import OidcSession

from .conftest import auth_redirect, authorize

EVENT = "http://schemas.openid.net/event/backchannel-logout"
URL = "/auth/oidc/backchannel-logout/"


def test_keycloak_ends_a_portal_session_over_http(oidc, tenant, kc_user, keycloak, live_server):
    """End to end over real HTTP: browser login against the live server, Keycloak-side session end,
    the stand-in's back-channel POST, and the portal session gone."""
    keycloak.configure_client(backchannel_logout_url=f"{live_server.url}{URL}")
    try:
        _, username = kc_user()
        browser = requests.Session()
        to_keycloak = browser.get(f"{live_server.url}/auth/oidc/login/", allow_redirects=False, timeout=10)
        signed_in = browser.post(to_keycloak.headers["Location"], data={"username": username, "password": "pw"},
                                 allow_redirects=False, timeout=10)
        callback = signed_in.headers["Location"]
        assert urlsplit(callback).netloc == urlsplit(live_server.url).netloc
        assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 302
        assert browser.get(f"{live_server.url}/api/v1/runs", timeout=10).status_code == 200
        sid = OidcSession.objects.get().sid

        sent = keycloak.end_session(sid)
        assert [s["status"] for s in sent] == [200]
        assert browser.get(f"{live_server.url}/api/v1/runs", timeout=10).status_code == 401
        assert not OidcSession.objects.exists()
        assert AuditEntry.objects.filter(event="auth.backchannel_logout", outcome="success").exists()

        replay = requests.post(f"{live_server.url}{URL}", data={"logout_token": sent[0]["logout_token"]}, timeout=10)
        assert replay.status_code == 400 and "already used" in replay.json()["error_description"]
    finally:
        keycloak.configure_client(backchannel_logout_url="")


@pytest.fixture
def logged_in(client, oidc, tenant, kc_user, keycloak):
    uid, username = kc_user()
    client.get(authorize(auth_redirect(client), username))
    assert client.get("/api/v1/runs").status_code == 200
    return {"client": client, "sid": client.session["oidc"]["sid"], "sub": uid}


def logout_claims(keycloak, logged_in, **changes) -> dict:
    claims = {"iss": keycloak.issuer, "aud": "gatehouse", "iat": int(time.time()), "exp": int(time.time()) + 120,
              "jti": str(uuid.uuid4()), "sid": logged_in["sid"], "sub": logged_in["sub"], "typ": "Logout",
              "events": {EVENT: {}}}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_a_valid_logout_token_ends_the_session(logged_in, keycloak, api):
    token = keycloak.sign(logout_claims(keycloak, logged_in))
    assert api().post(URL, {"logout_token": token}).status_code == 200
    assert logged_in["client"].get("/api/v1/runs").status_code == 401


def test_a_logout_token_naming_only_the_subject_ends_its_sessions(logged_in, keycloak, api):
    token = keycloak.sign(logout_claims(keycloak, logged_in, sid=None))
    assert api().post(URL, {"logout_token": token}).status_code == 200
    assert logged_in["client"].get("/api/v1/runs").status_code == 401


FORGED = {
    "unknown-key": lambda kc, li: kc.sign(logout_claims(kc, li), key=jwk.JWK.generate(kty="RSA", size=2048,
                                                                                      kid="forger")),
    "wrong-iss": lambda kc, li: kc.sign(logout_claims(kc, li, iss="http://evil.example/realms/gatehouse")),
    "wrong-aud": lambda kc, li: kc.sign(logout_claims(kc, li, aud="other-client")),
    "no-event": lambda kc, li: kc.sign(logout_claims(kc, li, events={"something-else": {}})),
    "with-nonce": lambda kc, li: kc.sign(logout_claims(kc, li, nonce="n")),
    "no-sid-no-sub": lambda kc, li: kc.sign(logout_claims(kc, li, sid=None, sub=None)),
    "no-jti": lambda kc, li: kc.sign(logout_claims(kc, li, jti=None)),
    "no-iat": lambda kc, li: kc.sign(logout_claims(kc, li, iat=None)),
    "expired": lambda kc, li: kc.sign(logout_claims(kc, li, iat=int(time.time()) - 600, exp=int(time.time()) - 60)),
    "an-id-token": lambda kc, li: kc.sign({**logout_claims(kc, li), "typ": "ID"}),
    "garbage": lambda kc, li: "not.a.token",
}


@pytest.mark.parametrize("kind", sorted(FORGED))
def test_a_forged_logout_token_ends_nothing(kind, logged_in, keycloak, api):
    response = api().post(URL, {"logout_token": FORGED[kind](keycloak, logged_in)})
    assert response.status_code == 400, (kind, response.content)
    assert response.json()["error"] == "invalid_request"
    assert OidcSession.objects.filter(sid=logged_in["sid"]).exists()
    assert logged_in["client"].get("/api/v1/runs").status_code == 200
    assert AuditEntry.objects.filter(event="auth.backchannel_logout", outcome="denied").exists()


def test_a_replayed_logout_token_is_refused(logged_in, keycloak, api, client):
    from gateway.identity.models import ExternalIdentity

    token = keycloak.sign(logout_claims(keycloak, logged_in, sid=None))  # every session of the subject
    assert api().post(URL, {"logout_token": token}).status_code == 200
    # The user logs in again; the old token, replayed, must not end the new session.
    username = ExternalIdentity.objects.get(subject=logged_in["sub"]).user.username
    client.get(authorize(auth_redirect(client), username))
    assert client.get("/api/v1/runs").status_code == 200
    replay = api().post(URL, {"logout_token": token})
    assert replay.status_code == 400 and "already used" in replay.json()["error_description"]
    assert client.get("/api/v1/runs").status_code == 200
