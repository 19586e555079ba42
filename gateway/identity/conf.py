"""Reading GATEHOUSE_AUTH, and the Keycloak clients (python-keycloak) built from it."""
from __future__ import annotations

import threading

from django.conf import settings
from keycloak import KeycloakAdmin, KeycloakOpenID

from gateway.choices import Role


def auth_settings() -> dict:
    return settings.GATEHOUSE_AUTH


def oidc_enabled() -> bool:
    return auth_settings()["MODE"] == "oidc"


def issuer() -> str:
    conf = auth_settings()
    return conf["ISSUER"] or f"{conf['SERVER_URL'].rstrip('/')}/realms/{conf['REALM']}"


def accepted_clients() -> frozenset[str]:
    """Clients whose access tokens the API accepts: ours, and the command line's public client if set."""
    conf = auth_settings()
    return frozenset(filter(None, (conf["CLIENT_ID"], conf.get("CLI_CLIENT_ID", ""))))


def role_map() -> dict[str, str]:
    """"realm:<name>" / "client:<name>" -> Gatehouse role. Empty setting: same-named roles map to themselves."""
    raw = auth_settings()["ROLE_MAP"]
    if not raw:
        return {f"{kind}:{role}": role for kind in ("realm", "client") for role in Role.values}
    mapping = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        source, _, role = item.partition("=")
        kind, _, name = source.partition(":")
        if kind not in ("realm", "client") or not name or role not in Role.values:
            raise ValueError(f"GATEHOUSE_AUTH_ROLE_MAP: cannot read {item!r} (realm:<name>=<role> or client:<name>=<role>)")
        mapping[f"{kind}:{name}"] = role
    return mapping


_local = threading.local()


def _conf_key(conf: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in conf.items()))


def openid() -> KeycloakOpenID:
    """One client per thread (python-keycloak changes its session's headers during some calls)."""
    conf = auth_settings()
    key = _conf_key(conf)
    if getattr(_local, "openid_key", None) != key:
        _local.openid = KeycloakOpenID(
            server_url=conf["SERVER_URL"], realm_name=conf["REALM"], client_id=conf["CLIENT_ID"],
            client_secret_key=conf["CLIENT_SECRET"] or None, verify=conf["VERIFY_TLS"], timeout=conf["TIMEOUT"],
        )
        _local.openid_key = key
    return _local.openid


def admin() -> KeycloakAdmin:
    conf = auth_settings()
    key = _conf_key(conf)
    if getattr(_local, "admin_key", None) != key:
        if conf["ADMIN_USERNAME"]:
            client = KeycloakAdmin(
                server_url=conf["SERVER_URL"], realm_name=conf["REALM"], user_realm_name=conf["ADMIN_REALM"] or None,
                username=conf["ADMIN_USERNAME"], password=conf["ADMIN_PASSWORD"],
                client_id=conf["ADMIN_CLIENT_ID"] or "admin-cli", verify=conf["VERIFY_TLS"], timeout=conf["TIMEOUT"],
            )
        else:
            client = KeycloakAdmin(
                server_url=conf["SERVER_URL"], realm_name=conf["REALM"], user_realm_name=conf["ADMIN_REALM"] or None,
                client_id=conf["ADMIN_CLIENT_ID"] or conf["CLIENT_ID"],
                client_secret_key=conf["ADMIN_CLIENT_SECRET"] or conf["CLIENT_SECRET"],
                verify=conf["VERIFY_TLS"], timeout=conf["TIMEOUT"],
            )
        _local.admin, _local.admin_key = client, key
    return _local.admin


def request_access_token(request) -> str | None:
    """The caller's own Keycloak access token: the bearer token of an API call, or the one kept in
    the session of a portal login. What Vault needs to let the gateway sign in the caller's name."""
    from rest_framework.authentication import get_authorization_header

    parts = get_authorization_header(request).split()
    if len(parts) == 2 and parts[0].lower() == b"bearer":
        try:
            return parts[1].decode("ascii")
        except UnicodeDecodeError:
            return None
    from .views import SESSION_KEY

    data = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    return data.get("access_token") if isinstance(data, dict) else None
