"""A portal session opened by an OpenID Connect login follows Keycloak on every request
(gateway/identity/middleware.py): a disabled user, an ended Keycloak session, a refused refresh or a
removed role counts from the very next portal request, over HTTP to the stand-in."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from audit.models import AuditEntry
from gateway.identity.models import OidcSession
from gateway.models import Membership

from .conftest import auth_redirect, authorize


@pytest.fixture
def short_lived_tokens(keycloak):
    """The gatehouse client's access tokens live 5 s: less than the refresh margin, so every portal
    request refreshes first."""
    keycloak.configure_client(access_token_lifespan=5)
    yield
    keycloak.configure_client(access_token_lifespan=None)


@pytest.fixture
def portal(client, oidc, tenant, kc_user, keycloak):
    uid, username = kc_user(realm_roles=["analyst", "auditor"])
    assert client.get(authorize(auth_redirect(client), username)).status_code == 302
    return {"client": client, "uid": uid, "username": username, "sid": client.session["oidc"]["sid"]}


def forced_logouts():
    return AuditEntry.objects.filter(event="auth.logout_forced")


def assert_logged_out(portal, reason: str):
    client = portal["client"]
    assert "_auth_user_id" not in client.session
    assert not OidcSession.objects.filter(sid=portal["sid"]).exists()
    entry = forced_logouts().get()
    assert entry.outcome == "denied" and entry.body["error"] == "session_revoked"
    assert reason in entry.body["data"]["reason"] and entry.body["data"]["sid"] == portal["sid"]
    assert entry.actor_id is not None and entry.tenant_id == Membership.objects.get(user_id=entry.actor_id).tenant_id


def test_each_portal_request_asks_keycloak_and_keeps_tokens_server_side(portal, keycloak):
    client = portal["client"]
    data = client.session["oidc"]
    assert data["access_token"] and data["refresh_token"] and data["expires_at"] and data["sub"] == portal["uid"]
    before = keycloak.stats().get("introspect", 0)
    response = client.get("/")
    assert response.status_code == 200
    assert keycloak.stats()["introspect"] == before + 1
    assert set(response.cookies) <= {"sessionid", "csrftoken"}  # the browser holds the session id, no token
    assert data["access_token"] not in str(response.cookies) and data["access_token"] not in response.content.decode()
    assert not forced_logouts().exists()


def test_a_disabled_user_is_logged_out_on_the_next_request(portal, kc_admin):
    client = portal["client"]
    assert client.get("/").status_code == 200
    kc_admin.update_user(portal["uid"], {"enabled": False})
    response = client.get("/runs/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=%2Fruns%2F"
    assert_logged_out(portal, "no longer active")
    # The login page sends the browser back to Keycloak, which refuses the disabled user.
    assert client.get(response["Location"])["Location"].startswith("/auth/oidc/login/")


def test_an_ended_keycloak_session_ends_the_portal_session(portal, keycloak):
    client = portal["client"]
    assert client.get("/api/v1/runs").status_code == 200
    assert keycloak.end_session(portal["sid"]) == []  # no back-channel URL registered: only the check notices
    response = client.get("/api/v1/runs")
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
    assert_logged_out(portal, "no longer active")
    assert AuditEntry.objects.filter(event="access.denied", body__data__path="/api/v1/runs").exists()


def test_a_removed_role_counts_from_the_next_request(portal, kc_admin):
    client = portal["client"]
    assert client.get("/api/v1/audit/entries").status_code == 200
    kc_admin.delete_realm_roles_of_user(portal["uid"], [kc_admin.get_realm_role("auditor")])
    assert client.get("/api/v1/audit/entries").status_code == 403
    membership = Membership.objects.get(user__external_identity__subject=portal["uid"])
    assert membership.roles == ["analyst"]
    assert "_auth_user_id" in client.session  # still logged in, with the roles Keycloak gives now
    assert client.get("/api/v1/runs").status_code == 200
    assert not forced_logouts().exists()


def test_a_user_moved_out_of_every_tenant_is_logged_out_and_their_keycloak_session_ended(portal, kc_admin, keycloak):
    client = portal["client"]
    group = kc_admin.get_group_by_path("/tenants/acme")
    kc_admin.group_user_remove(portal["uid"], group["id"])
    logouts = keycloak.stats().get("logout", 0)
    assert client.get("/").status_code == 302
    assert_logged_out(portal, "no tenant")
    assert keycloak.stats()["logout"] == logouts + 1
    assert keycloak.end_session(portal["sid"]) == []  # already ended by the portal


def test_an_expired_access_token_is_refreshed(portal, keycloak, short_lived_tokens):
    client = portal["client"]
    first = client.session["oidc"]
    # The login's tokens still live 300 s; expire them as the clock would (the session store is ours).
    session = client.session
    session["oidc"] = {**first, "expires_at": 0}
    session.save()
    tokens_before = keycloak.stats()["token"]
    assert client.get("/api/v1/runs").status_code == 200
    second = client.session["oidc"]
    assert keycloak.stats()["token"] == tokens_before + 1
    assert second["access_token"] != first["access_token"] and second["refresh_token"] != first["refresh_token"]
    assert second["sid"] == first["sid"] and second["sub"] == first["sub"]
    assert client.get("/api/v1/runs").status_code == 200  # 5 s tokens: refreshed again, with the new refresh token
    assert keycloak.stats()["token"] == tokens_before + 2
    assert not forced_logouts().exists()


def test_a_refused_refresh_logs_the_session_out(portal, keycloak, short_lived_tokens):
    client = portal["client"]
    session = client.session
    session["oidc"] = {**session["oidc"], "expires_at": 0}
    session.save()
    keycloak.end_session(portal["sid"])
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert_logged_out(portal, "refused the refresh")


def test_the_introspection_cache_setting_applies_to_portal_sessions(portal, kc_admin, keycloak, settings):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "INTROSPECTION_CACHE_SECONDS": 60}
    client = portal["client"]
    assert client.get("/").status_code == 200
    asked = keycloak.stats()["introspect"]
    kc_admin.update_user(portal["uid"], {"enabled": False})
    assert client.get("/").status_code == 200  # the documented cost of a TTL
    assert keycloak.stats()["introspect"] == asked
    assert not forced_logouts().exists()


def test_keycloak_not_answering_fails_the_request_and_keeps_the_session(portal, settings):
    client = portal["client"]
    working = settings.GATEHOUSE_AUTH
    settings.GATEHOUSE_AUTH = {**working, "SERVER_URL": "http://127.0.0.1:9"}  # nothing listens there
    assert client.get("/").status_code == 503
    response = client.get("/api/v1/runs")
    assert response.status_code == 503 and response.json()["code"] == "identity_unavailable"
    assert "_auth_user_id" in client.session and not forced_logouts().exists()
    settings.GATEHOUSE_AUTH = working
    assert client.get("/").status_code == 200


def test_dev_mode_sessions_are_not_checked(client, settings, tenant, make_member, keycloak):
    assert settings.GATEHOUSE_AUTH["MODE"] == "dev"
    client.force_login(make_member(tenant, "analyst"))
    session = client.session
    session["oidc"] = {"access_token": "x", "refresh_token": "y", "expires_at": 0, "sid": "s"}
    session.save()
    assert client.get("/").status_code == 200
    assert not forced_logouts().exists()


def test_parallel_requests_share_one_refresh(oidc, tenant, kc_user, keycloak, live_server, short_lived_tokens):
    """A page's requests arrive together; the stand-in refuses a refresh token used twice, so only one
    of them may refresh and the others take its tokens."""
    _, username = kc_user()
    browser = requests.Session()
    to_keycloak = browser.get(f"{live_server.url}/auth/oidc/login/", allow_redirects=False, timeout=10)
    signed_in = browser.post(to_keycloak.headers["Location"], data={"username": username, "password": "pw"},
                             allow_redirects=False, timeout=10)
    assert browser.get(signed_in.headers["Location"], allow_redirects=False, timeout=10).status_code == 302
    tokens_before = keycloak.stats()["token"]

    def fetch(_):
        return browser.get(f"{live_server.url}/api/v1/runs", timeout=20).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(fetch, range(6)))
    assert statuses == [200] * 6
    assert not forced_logouts().exists()
    assert keycloak.stats()["token"] > tokens_before  # refreshed (5 s tokens), without spending one twice
