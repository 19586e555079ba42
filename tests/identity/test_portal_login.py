"""Portal login with OpenID Connect authorization code + PKCE, through the stand-in's login page."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from gateway.identity.models import OidcSession

from .conftest import auth_redirect, authorize


@pytest.fixture
def person(oidc, tenant, kc_user):
    return kc_user(realm_roles=["analyst"])[1]


def _with_params(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_login_end_to_end(client, person, keycloak):
    auth_url = auth_redirect(client, "/runs/")
    query = parse_qs(urlsplit(auth_url).query)
    assert auth_url.startswith(f"{keycloak.issuer}/protocol/openid-connect/auth?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0] and query["client_id"] == ["gatehouse"]
    key_before = client.session.session_key
    response = client.get(authorize(auth_url, person))
    assert response.status_code == 302 and response["Location"] == "/runs/"
    assert client.session.session_key != key_before  # rotated at login
    user = get_user_model().objects.get(username=person)
    assert int(client.session["_auth_user_id"]) == user.pk
    assert OidcSession.objects.filter(user=user, session_key=client.session.session_key).exists()
    login = AuditEntry.objects.filter(event="auth.login").latest("id")
    assert login.body["data"]["method"] == "oidc" and login.actor_id == user.pk
    assert client.get("/api/v1/runs").status_code == 200  # the portal session works on the API


def test_a_state_mismatch_is_refused(client, person):
    callback = authorize(auth_redirect(client), person)
    response = client.get(_with_params(callback, state="forged"))
    assert response.status_code == 400
    assert "_auth_user_id" not in client.session
    assert not get_user_model().objects.filter(username=person).exists()
    assert AuditEntry.objects.filter(event="auth.login_failed", body__error="state_mismatch").exists()


def test_a_nonce_mismatch_is_refused(client, person):
    auth_url = auth_redirect(client)
    response = client.get(authorize(_with_params(auth_url, nonce="someone-elses-nonce"), person))
    assert response.status_code == 400 and b"nonce mismatch" in response.content
    assert "_auth_user_id" not in client.session
    assert not get_user_model().objects.filter(username=person).exists()


def test_a_code_is_single_use(client, person, django_user_model):
    from django.test import Client

    callback = authorize(auth_redirect(client), person)
    assert client.get(callback).status_code == 302
    thief = Client()
    auth_redirect(thief)  # a login of their own, so they hold a valid state...
    state = thief.session["oidc_flow"]["state"]
    response = thief.get(_with_params(callback, state=state))  # ...but the code is spent
    assert response.status_code == 400 and b"refused the code" in response.content
    assert "_auth_user_id" not in thief.session


def test_a_code_needs_its_own_pkce_verifier(client, person):
    from django.test import Client

    callback = authorize(auth_redirect(client), person)  # a fresh, unused code of `client`'s flow
    thief = Client()
    auth_redirect(thief)
    response = thief.get(_with_params(callback, state=thief.session["oidc_flow"]["state"]))
    assert response.status_code == 400 and b"refused the code" in response.content
    assert not get_user_model().objects.filter(username=person).exists()


def test_a_user_of_no_tenant_cannot_log_in(client, oidc, tenant, kc_user):
    _, username = kc_user(groups=["/staff"])
    response = client.get(authorize(auth_redirect(client), username))
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session
    assert not get_user_model().objects.filter(username=username).exists()


def test_logout_ends_the_keycloak_session(client, person, keycloak):
    client.get(authorize(auth_redirect(client), person))
    sid = client.session["oidc"]["sid"]
    logouts = keycloak.stats().get("logout", 0)
    response = client.post("/logout/")
    assert response.status_code == 302
    assert keycloak.stats()["logout"] == logouts + 1
    assert "_auth_user_id" not in client.session
    assert not OidcSession.objects.filter(sid=sid).exists()
    # Keycloak's session is over: a refresh with it fails (the stand-in says so through introspection).
    assert keycloak.end_session(sid) == []  # already ended, nothing to notify


def test_the_password_login_sends_browsers_to_keycloak_in_oidc_mode(client, oidc):
    response = client.get("/login/", {"next": "/runs/"})
    assert response.status_code == 302 and response["Location"] == "/auth/oidc/login/?next=%2Fruns%2F"
