"""Identity tests run against the Keycloak stand-in (tests/keycloak_standin), a separate process spoken
to over HTTP by python-keycloak, exactly as Keycloak would be."""
from __future__ import annotations

import itertools
import time
import uuid

import pytest
import requests

from tests.keycloak_standin import CLIENT_ID, CLIENT_SECRET, REALM, KeycloakStandin

_names = itertools.count()


@pytest.fixture(scope="session")
def keycloak():
    with KeycloakStandin() as server:
        yield server


@pytest.fixture
def oidc(settings, keycloak, db):
    """Gatehouse in oidc mode against the stand-in; the key cache starts empty."""
    from gateway.identity.tokens import jwks

    settings.GATEHOUSE_AUTH = {
        **settings.GATEHOUSE_AUTH, "MODE": "oidc", "SERVER_URL": keycloak.url, "REALM": REALM, "ISSUER": "",
        "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET, "CLI_CLIENT_ID": "",
        "ADMIN_REALM": "", "ADMIN_CLIENT_ID": "",
        "ADMIN_CLIENT_SECRET": "", "ADMIN_USERNAME": "", "ADMIN_PASSWORD": "", "LEEWAY": 30,
        "TENANT_GROUP_PREFIX": "/tenants/", "TENANT_CLAIM": "", "ROLE_MAP": "", "INTROSPECTION_CACHE_SECONDS": 0,
        "JWKS_MIN_REFRESH_SECONDS": 0, "JWKS_CACHE_SECONDS": 3600, "TIMEOUT": 10, "VERIFY_TLS": True,
    }
    jwks.forget()
    yield settings.GATEHOUSE_AUTH
    jwks.forget()


@pytest.fixture
def kc_user(keycloak):
    """A user in the stand-in with a unique name: returns (keycloak id, username)."""

    def make(*, groups=("/tenants/acme",), realm_roles=("analyst",), client_roles=None, enabled=True,
             attributes=None):
        username = f"user{next(_names)}-{uuid.uuid4().hex[:6]}"
        uid = keycloak.add_user(username, groups=list(groups), realm_roles=list(realm_roles),
                                client_roles=client_roles or {}, enabled=enabled, attributes=attributes or {})
        return uid, username

    return make


@pytest.fixture
def bearer():
    from rest_framework.test import APIClient

    def client_for(token: str):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return client_for


@pytest.fixture
def kc_admin(keycloak):
    """python-keycloak's KeycloakAdmin as the realm's master admin, to look at and change the stand-in."""
    from keycloak import KeycloakAdmin

    return KeycloakAdmin(server_url=keycloak.url, username="admin", password="admin", realm_name=REALM,
                         user_realm_name="master")


def claims_of(token: str) -> dict:
    """A token's claims, unverified (to copy a real token's shape into a hostile one)."""
    from jwcrypto import jws
    import json

    parsed = jws.JWS()
    parsed.deserialize(token)
    return json.loads(parsed.objects["payload"])


def now() -> int:
    return int(time.time())


def auth_redirect(client, next_url: str = "/") -> str:
    """Start the portal login; the URL of Keycloak's login page it redirects to."""
    response = client.get("/auth/oidc/login/", {"next": next_url})
    assert response.status_code == 302, response.content[:200]
    return response["Location"]


def authorize(auth_url: str, username: str, password: str = "pw") -> str:
    """Sign in at the stand-in's login page; the callback URL (path and query) it sends the browser to."""
    answer = requests.post(auth_url, data={"username": username, "password": password}, allow_redirects=False,
                           timeout=10)
    assert answer.status_code == 302, answer.text[:200]
    location = answer.headers["Location"]
    assert location.startswith("http://testserver/"), location
    return location[len("http://testserver"):]
