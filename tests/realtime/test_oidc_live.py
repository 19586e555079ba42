"""oidc mode: a socket follows the identity provider like the portal's requests do (introspection at
connect and at each recheck), against the Keycloak stand-in over HTTP and a real Daphne process."""
from __future__ import annotations

import pytest

from tests.identity.conftest import auth_redirect, authorize, kc_user, keycloak, oidc  # noqa: F401 - fixtures
from tests.keycloak_standin import CLIENT_ID, CLIENT_SECRET, REALM

from .conftest import Daphne, LiveClient, needs_servers, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def oidc_daphne(transactional_db, tmp_path, keycloak, oidc):  # noqa: F811
    needs_servers()
    env = server_env(GATEHOUSE_AUTH_MODE="oidc", GATEHOUSE_KEYCLOAK_URL=keycloak.url, GATEHOUSE_KEYCLOAK_REALM=REALM,
                     GATEHOUSE_KEYCLOAK_CLIENT_ID=CLIENT_ID, GATEHOUSE_KEYCLOAK_CLIENT_SECRET=CLIENT_SECRET,
                     GATEHOUSE_AUTH_INTROSPECTION_CACHE_SECONDS="0", GATEHOUSE_LIVE_RECHECK_SECONDS="2")
    server = Daphne(env, tmp_path / "daphne.log").start()
    yield server
    server.stop()


def test_an_ended_keycloak_session_closes_the_socket(oidc_daphne, client, tenant, kc_user, keycloak):  # noqa: F811
    from django.conf import settings

    uid, username = kc_user(realm_roles=["analyst"])
    assert client.get(authorize(auth_redirect(client), username)).status_code == 302
    sid = client.session["oidc"]["sid"]
    before = keycloak.stats().get("introspect", 0)
    page = LiveClient(oidc_daphne.url, origin=oidc_daphne.origin,
                      session=client.cookies[settings.SESSION_COOKIE_NAME].value, name=username)
    try:
        assert keycloak.stats()["introspect"] > before  # asked at connect
        assert not page.closed.wait(3), "a live Keycloak session lost its socket"  # a recheck or more passed
        keycloak.end_session(sid)
        assert page.closed.wait(10), "the socket outlived the Keycloak session"
        assert page.close_code == 4401
        assert page.seen == []
    finally:
        page.close()
