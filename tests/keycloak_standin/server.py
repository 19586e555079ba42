"""A protocol-level stand-in for Keycloak: real paths, real RS256 JWTs, real HTTP.

It serves, for each realm, the OpenID Connect endpoints (discovery, auth with PKCE, token with the
authorization_code / password / client_credentials / refresh_token / device_code grants, the device
authorization endpoint and its verification page, certs, userinfo, logout, introspection), the part of the Admin REST API that python-keycloak's KeycloakAdmin calls for users,
realm roles and groups, and OpenID Connect Back-Channel Logout 1.0 towards clients that registered a
back-channel logout URL. State lives in memory.

Test-only control endpoints live under ``/_standin/`` (keys with their private parts, key rotation,
user seeding, client settings, ending a session, request counters, logout tokens sent). Client settings
include what Keycloak configures per client: an Audience mapper (`audience`), User Attribute mappers
(`attribute_claims`), the device grant (`device_flow`, `device_interval`) and `access_token_lifespan`.

Run: ``python -m tests.keycloak_standin --host 127.0.0.1 --port PORT``.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlencode

import requests
from jwcrypto import jwk, jws, jwt
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

ACCESS_TOKEN_SECONDS = 300
REFRESH_TOKEN_SECONDS = 1800
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_SECONDS = 600


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class Client:
    client_id: str
    secret: str | None = None  # None: a public client
    redirect_uris: list[str] = field(default_factory=lambda: ["*"])
    backchannel_logout_url: str = ""
    admin: bool = False  # its service account may call the Admin API of its realm
    roles: set[str] = field(default_factory=set)  # client roles defined on it
    audience: list[str] = field(default_factory=list)  # an Audience mapper: more clients named in `aud`
    attribute_claims: list[str] = field(default_factory=list)  # User Attribute mappers: attribute -> claim
    device_flow: bool = False  # "OAuth 2.0 Device Authorization Grant" enabled on the client
    device_interval: int = 5  # seconds a device must wait between polls
    access_token_lifespan: int | None = None  # the client's "Access Token Lifespan"; None: the realm's


@dataclass
class User:
    id: str
    username: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    enabled: bool = True
    password: str | None = None
    realm_roles: set[str] = field(default_factory=set)
    client_roles: dict[str, set[str]] = field(default_factory=dict)
    group_ids: set[str] = field(default_factory=set)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time() * 1000))
    service_account_of: str = ""


@dataclass
class Session:
    sid: str
    user_id: str
    clients: set[str] = field(default_factory=set)
    active: bool = True


class Realm:
    def __init__(self, name: str, base_url: str):
        self.name = name
        self.issuer = f"{base_url}/realms/{name}"
        self.keys: dict[str, jwk.JWK] = {}
        self.current_kid = ""
        self.rotate_key()
        self.clients: dict[str, Client] = {}
        self.users: dict[str, User] = {}
        self.roles: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}  # id -> {id, name, path, parent}
        self.sessions: dict[str, Session] = {}
        self.codes: dict[str, dict] = {}
        self.devices: dict[str, dict] = {}  # device_code -> {client_id, user_code, scope, expires, user_id, ...}
        self.refresh: dict[str, str] = {}  # refresh token jti -> sid
        self.logout_tokens: list[dict] = []
        self.stats: Counter = Counter()
        self.add_role("offline_access")
        self.add_role("uma_authorization")

    # -- keys and tokens ------------------------------------------------------

    def rotate_key(self, make_current: bool = True) -> str:
        key = jwk.JWK.generate(kty="RSA", size=2048, kid=uuid.uuid4().hex, use="sig", alg="RS256")
        self.keys[key.key_id] = key
        if make_current:
            self.current_kid = key.key_id
        return key.key_id

    def sign(self, claims: dict, kid: str | None = None) -> str:
        key = self.keys[kid or self.current_kid]
        token = jwt.JWT(header={"alg": "RS256", "typ": "JWT", "kid": key.key_id}, claims=claims)
        token.make_signed_token(key)
        return token.serialize()

    def verify(self, token: str, *, typ: str | None = None) -> dict | None:
        """Claims of one of our own tokens that is signed, unexpired and of the given type; else None."""
        try:
            keyset = jwk.JWKSet()
            for key in self.keys.values():
                keyset.add(key)
            parsed = jwt.JWT(jwt=token, key=keyset, algs=["RS256"], check_claims={"iss": self.issuer, "exp": None})
            claims = json.loads(parsed.claims)
        except Exception:  # noqa: BLE001 - any defect: not one of ours
            return None
        if typ is not None and claims.get("typ") != typ:
            return None
        return claims

    def certs(self) -> dict:
        return {"keys": [
            {**json.loads(k.export_public()), "alg": "RS256", "use": "sig"} for k in self.keys.values()
        ]}

    # -- directory ------------------------------------------------------------

    def add_role(self, name: str, description: str = "") -> dict:
        if name not in self.roles:
            self.roles[name] = {"id": str(uuid.uuid4()), "name": name, "description": description,
                                "composite": False, "clientRole": False, "containerId": self.name}
        return self.roles[name]

    def group_by_path(self, path: str) -> dict | None:
        return next((g for g in self.groups.values() if g["path"] == path), None)

    def ensure_group(self, path: str) -> dict:
        path = "/" + path.strip("/")
        found = self.group_by_path(path)
        if found:
            return found
        parent_path, _, name = path.rpartition("/")
        parent = self.ensure_group(parent_path) if parent_path else None
        return self.add_group(name, parent)

    def add_group(self, name: str, parent: dict | None) -> dict:
        path = f"{parent['path'] if parent else ''}/{name}"
        group = {"id": str(uuid.uuid4()), "name": name, "path": path, "parent": parent["id"] if parent else None}
        self.groups[group["id"]] = group
        return group

    def user_by_name(self, username: str) -> User | None:
        return next((u for u in self.users.values() if u.username == username.lower()), None)

    def add_user(self, username: str, **attrs) -> User:
        user = User(id=str(uuid.uuid4()), username=username.lower(), **attrs)
        self.users[user.id] = user
        return user

    def service_account(self, client: Client) -> User:
        found = next((u for u in self.users.values() if u.service_account_of == client.client_id), None)
        return found or self.add_user(f"service-account-{client.client_id}", service_account_of=client.client_id)

    def user_claims(self, user: User, client_id: str) -> dict:
        """The identity claims Keycloak's default mappers put in a token (roles and groups as they are now)."""
        claims = {
            "preferred_username": user.username,
            "realm_access": {"roles": sorted(user.realm_roles | {"offline_access", "uma_authorization"})},
            "resource_access": {c: {"roles": sorted(r)} for c, r in user.client_roles.items() if r},
            "groups": sorted(self.groups[g]["path"] for g in user.group_ids if g in self.groups),
        }
        if user.email:
            claims["email"] = user.email
            claims["email_verified"] = True
        if user.first_name or user.last_name:
            claims["name"] = f"{user.first_name} {user.last_name}".strip()
            claims["given_name"] = user.first_name
            claims["family_name"] = user.last_name
        client = self.clients.get(client_id)
        for name in client.attribute_claims if client else []:
            values = user.attributes.get(name) or []
            if values:
                claims[name] = values[0]
        if user.service_account_of:
            claims["client_id"] = client_id
        return claims

    def issue(self, user: User, client: Client, session: Session, *, scope: str, nonce: str = "",
              with_id_token: bool = True, with_refresh: bool = True) -> dict:
        now = int(time.time())
        session.clients.add(client.client_id)
        base = {"iat": now, "auth_time": now, "iss": self.issuer, "sub": user.id, "azp": client.client_id,
                "sid": session.sid, "session_state": session.sid}
        lifespan = client.access_token_lifespan or ACCESS_TOKEN_SECONDS
        audience = [client.client_id] + [a for a in client.audience if a != client.client_id] + ["account"]
        access = {**base, "exp": now + lifespan, "jti": str(uuid.uuid4()), "typ": "Bearer",
                  "aud": audience, "scope": scope, "acr": "1", **self.user_claims(user, client.client_id)}
        body = {"access_token": self.sign(access), "expires_in": lifespan, "token_type": "Bearer",
                "not-before-policy": 0, "session_state": session.sid, "scope": scope}
        if with_refresh:
            refresh = {**base, "exp": now + REFRESH_TOKEN_SECONDS, "jti": str(uuid.uuid4()), "typ": "Refresh",
                       "aud": self.issuer, "scope": scope}
            self.refresh[refresh["jti"]] = session.sid
            body.update(refresh_token=self.sign(refresh), refresh_expires_in=REFRESH_TOKEN_SECONDS)
        if with_id_token and "openid" in scope.split():
            id_claims = {**base, "exp": now + ACCESS_TOKEN_SECONDS, "jti": str(uuid.uuid4()), "typ": "ID",
                         "aud": client.client_id, "at_hash": _at_hash(body["access_token"]),
                         **self.user_claims(user, client.client_id)}
            if nonce:
                id_claims["nonce"] = nonce
            body["id_token"] = self.sign(id_claims)
        return body

    def end_session(self, sid: str) -> list[dict]:
        """End a session and notify, per Back-Channel Logout 1.0, every client of it that asked to be."""
        session = self.sessions.get(sid)
        if session is None or not session.active:
            return []
        session.active = False
        sent = []
        for client_id in sorted(session.clients):
            client = self.clients.get(client_id)
            if client is None or not client.backchannel_logout_url:
                continue
            claims = {"iss": self.issuer, "aud": client_id, "iat": int(time.time()), "exp": int(time.time()) + 120,
                      "jti": str(uuid.uuid4()), "sid": sid, "sub": session.user_id, "typ": "Logout",
                      "events": {BACKCHANNEL_EVENT: {}}}
            sent.append({"client_id": client_id, "url": client.backchannel_logout_url,
                         "logout_token": self.sign(claims)})
        return sent

    def session_active(self, sid: str | None) -> bool:
        session = self.sessions.get(sid or "")
        return bool(session and session.active and self.users.get(session.user_id, User("", "")).enabled)


def _at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])


class OAuthError(Exception):
    def __init__(self, error: str, description: str = "", status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class Standin:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.lock = threading.RLock()
        self.realms: dict[str, Realm] = {}
        self.url_map = Map([
            Rule("/realms/<realm>/.well-known/openid-configuration", endpoint="discovery"),
            Rule("/realms/<realm>", endpoint="realm_info"),
            Rule("/realms/<realm>/protocol/openid-connect/auth", endpoint="auth", methods=["GET", "POST"]),
            Rule("/realms/<realm>/protocol/openid-connect/auth/device", endpoint="device_auth", methods=["POST"]),
            Rule("/realms/<realm>/device", endpoint="device_verify", methods=["GET", "POST"]),
            Rule("/realms/<realm>/protocol/openid-connect/token", endpoint="token", methods=["POST"]),
            Rule("/realms/<realm>/protocol/openid-connect/token/introspect", endpoint="introspect", methods=["POST"]),
            Rule("/realms/<realm>/protocol/openid-connect/certs", endpoint="certs"),
            Rule("/realms/<realm>/protocol/openid-connect/userinfo", endpoint="userinfo", methods=["GET", "POST"]),
            Rule("/realms/<realm>/protocol/openid-connect/logout", endpoint="logout", methods=["GET", "POST"]),
            Rule("/admin/realms/<realm>/users", endpoint="admin_users", methods=["GET", "POST"]),
            Rule("/admin/realms/<realm>/users/count", endpoint="admin_users_count"),
            Rule("/admin/realms/<realm>/users/<user_id>", endpoint="admin_user", methods=["GET", "PUT", "DELETE"]),
            Rule("/admin/realms/<realm>/users/<user_id>/role-mappings/realm", endpoint="admin_user_realm_roles",
                 methods=["GET", "POST", "DELETE"]),
            Rule("/admin/realms/<realm>/users/<user_id>/groups", endpoint="admin_user_groups"),
            Rule("/admin/realms/<realm>/users/<user_id>/groups/<group_id>", endpoint="admin_user_group",
                 methods=["PUT", "DELETE"]),
            Rule("/admin/realms/<realm>/users/<user_id>/logout", endpoint="admin_user_logout", methods=["POST"]),
            Rule("/admin/realms/<realm>/roles", endpoint="admin_roles", methods=["GET", "POST"]),
            Rule("/admin/realms/<realm>/roles/<role_name>", endpoint="admin_role"),
            Rule("/admin/realms/<realm>/groups", endpoint="admin_groups", methods=["GET", "POST"]),
            Rule("/admin/realms/<realm>/groups/<group_id>", endpoint="admin_group"),
            Rule("/admin/realms/<realm>/groups/<group_id>/children", endpoint="admin_group_children",
                 methods=["GET", "POST"]),
            Rule("/admin/realms/<realm>/groups/<group_id>/members", endpoint="admin_group_members"),
            Rule("/admin/realms/<realm>/group-by-path/<path:path>", endpoint="admin_group_by_path"),
            Rule("/_standin/health", endpoint="c_health"),
            Rule("/_standin/realms/<realm>/keys", endpoint="c_keys", methods=["GET", "POST"]),
            Rule("/_standin/realms/<realm>/stats", endpoint="c_stats"),
            Rule("/_standin/realms/<realm>/users", endpoint="c_users", methods=["POST"]),
            Rule("/_standin/realms/<realm>/clients/<client_id>", endpoint="c_client", methods=["POST"]),
            Rule("/_standin/realms/<realm>/sessions/<sid>/end", endpoint="c_end_session", methods=["POST"]),
            Rule("/_standin/realms/<realm>/logout-tokens", endpoint="c_logout_tokens"),
        ])
        self._seed()

    def _seed(self) -> None:
        master = self.realm("master", create=True)
        master.clients["admin-cli"] = Client("admin-cli")
        master.add_role("admin")
        master.add_user("admin", password="admin", realm_roles={"admin"})
        realm = self.realm("gatehouse", create=True)
        realm.clients["gatehouse"] = Client("gatehouse", secret="gatehouse-secret", admin=True)
        realm.clients["other-client"] = Client("other-client", secret="other-secret")
        realm.clients["admin-cli"] = Client("admin-cli")
        for name in ("platform_admin", "tenant_admin", "author", "analyst", "auditor", "platform_auditor"):
            realm.add_role(name)

    def realm(self, name: str, create: bool = False) -> Realm:
        if name not in self.realms:
            if not create:
                raise NotFound("Realm does not exist")
            self.realms[name] = Realm(name, self.base_url)
        return self.realms[name]

    # -- WSGI -----------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        adapter = self.url_map.bind_to_environ(environ)
        try:
            endpoint, args = adapter.match()
            realm_name = args.pop("realm", None)
            with self.lock:
                realm = self.realm(realm_name) if realm_name else None
                if realm is not None:
                    realm.stats[endpoint] += 1
                # Back-channel logout calls leave the lock: the client may call us back meanwhile.
                response = getattr(self, "on_" + endpoint)(request, realm, **args)
        except OAuthError as exc:
            response = json_response({"error": exc.error, "error_description": exc.description}, exc.status)
        except HTTPException as exc:
            response = json_response({"error": exc.name, "error_description": exc.description}, exc.code or 500)
        return response(environ, start_response)

    # -- OpenID Connect -------------------------------------------------------

    def on_discovery(self, request, realm):
        base = f"{realm.issuer}/protocol/openid-connect"
        return json_response({
            "issuer": realm.issuer,
            "authorization_endpoint": f"{base}/auth",
            "token_endpoint": f"{base}/token",
            "introspection_endpoint": f"{base}/token/introspect",
            "userinfo_endpoint": f"{base}/userinfo",
            "end_session_endpoint": f"{base}/logout",
            "jwks_uri": f"{base}/certs",
            "device_authorization_endpoint": f"{base}/auth/device",
            "grant_types_supported": ["authorization_code", "refresh_token", "password", "client_credentials",
                                      DEVICE_GRANT],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
        })

    def on_realm_info(self, request, realm):
        key = realm.keys[realm.current_kid]
        pem = key.export_to_pem().decode("ascii")
        body = "".join(pem.strip().splitlines()[1:-1])
        return json_response({"realm": realm.name, "public_key": body,
                              "token-service": f"{realm.issuer}/protocol/openid-connect"})

    def on_auth(self, request, realm):
        q = request.args
        client = realm.clients.get(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        if client is None or not _redirect_allowed(client, redirect_uri):
            raise OAuthError("invalid_request", "Invalid client or redirect_uri")
        if q.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "Only the code flow is served")
        method = q.get("code_challenge_method", "")
        if q.get("code_challenge") and method != "S256":
            raise OAuthError("invalid_request", "Only S256 PKCE is served")
        if request.method == "GET":
            page = (f"<form method='post'><input name='username'><input name='password' type='password'>"
                    f"<button>Sign in to {html.escape(realm.name)}</button></form>")
            return Response(page, mimetype="text/html")
        user = realm.user_by_name(request.form.get("username", ""))
        if user is None or not user.enabled or user.password is None \
                or not secrets.compare_digest(user.password, request.form.get("password", "")):
            return Response("Invalid username or password.", status=401, mimetype="text/html")
        session = Session(sid=str(uuid.uuid4()), user_id=user.id)
        realm.sessions[session.sid] = session
        code = secrets.token_urlsafe(32)
        realm.codes[code] = {"client_id": client.client_id, "redirect_uri": redirect_uri, "sid": session.sid,
                             "nonce": q.get("nonce", ""), "scope": q.get("scope", "openid"),
                             "challenge": q.get("code_challenge", ""), "expires": time.time() + 60}
        params = {"state": q.get("state", ""), "session_state": session.sid, "iss": realm.issuer, "code": code}
        sep = "&" if "?" in redirect_uri else "?"
        return Response(status=302, headers={"Location": redirect_uri + sep + urlencode(params)})

    def _client_auth(self, request, realm, *, required: bool) -> Client:
        form = request.form
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        if request.authorization and request.authorization.type == "basic":
            client_id, secret = request.authorization.username, request.authorization.password
        client = realm.clients.get(client_id)
        if client is None:
            raise OAuthError("unauthorized_client", "Invalid client or Invalid client credentials", 401)
        if client.secret is not None:
            if not secret or not secrets.compare_digest(client.secret, secret):
                raise OAuthError("unauthorized_client", "Invalid client or Invalid client credentials", 401)
        elif required:
            raise OAuthError("unauthorized_client", "Public client not allowed", 401)
        return client

    def on_token(self, request, realm):
        client = self._client_auth(request, realm, required=False)
        grant = request.form.get("grant_type", "")
        scope = request.form.get("scope") or "openid"
        if grant == "authorization_code":
            entry = realm.codes.pop(request.form.get("code", ""), None)  # single use
            if entry is None or entry["expires"] < time.time():
                raise OAuthError("invalid_grant", "Code not valid")
            if entry["client_id"] != client.client_id:
                raise OAuthError("invalid_grant", "Code was issued to another client")
            if entry["redirect_uri"] != request.form.get("redirect_uri", ""):
                raise OAuthError("invalid_grant", "Incorrect redirect_uri")
            verifier = request.form.get("code_verifier", "")
            if entry["challenge"]:
                computed = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
                if not verifier or not secrets.compare_digest(computed, entry["challenge"]):
                    raise OAuthError("invalid_grant", "PKCE verification failed: Code mismatch")
            session = realm.sessions.get(entry["sid"])
            if session is None or not realm.session_active(session.sid):
                raise OAuthError("invalid_grant", "Session not active")
            user = realm.users[session.user_id]
            return json_response(realm.issue(user, client, session, scope=entry["scope"], nonce=entry["nonce"]))
        if grant == "password":
            user = realm.user_by_name(request.form.get("username", ""))
            if user is None or user.password is None or \
                    not secrets.compare_digest(user.password, request.form.get("password", "")):
                raise OAuthError("invalid_grant", "Invalid user credentials", 401)
            if not user.enabled:
                raise OAuthError("invalid_grant", "Account disabled")
            session = Session(sid=str(uuid.uuid4()), user_id=user.id)
            realm.sessions[session.sid] = session
            return json_response(realm.issue(user, client, session, scope=scope))
        if grant == "client_credentials":
            if client.secret is None:
                raise OAuthError("unauthorized_client", "Public client not allowed to retrieve service account")
            user = realm.service_account(client)
            session = Session(sid=str(uuid.uuid4()), user_id=user.id)
            realm.sessions[session.sid] = session
            return json_response(realm.issue(user, client, session, scope="profile email", with_id_token=False,
                                             with_refresh=False))
        if grant == "refresh_token":
            claims = realm.verify(request.form.get("refresh_token", ""), typ="Refresh")
            if claims is None or realm.refresh.pop(claims["jti"], None) is None:
                raise OAuthError("invalid_grant", "Invalid refresh token")
            if claims["azp"] != client.client_id:
                raise OAuthError("invalid_grant", "Invalid refresh token. Token client and authorized client don't match")
            if not realm.session_active(claims["sid"]):
                raise OAuthError("invalid_grant", "Session not active")
            session = realm.sessions[claims["sid"]]
            return json_response(realm.issue(realm.users[session.user_id], client, session, scope=claims["scope"]))
        if grant == DEVICE_GRANT:
            return self._device_token(request, realm, client)
        raise OAuthError("unsupported_grant_type", "Unsupported grant_type")

    # -- OAuth 2.0 Device Authorization Grant (RFC 8628) -----------------------

    def on_device_auth(self, request, realm):
        client = self._client_auth(request, realm, required=False)
        if not client.device_flow:
            raise OAuthError("unauthorized_client", "Client is not allowed to initiate OAuth 2.0 Device "
                                                    "Authorization Grant. The flow is disabled for the client.", 401)
        device_code = secrets.token_urlsafe(32)
        alphabet = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(2))
        realm.devices[device_code] = {"client_id": client.client_id, "user_code": user_code,
                                      "scope": request.form.get("scope") or "openid",
                                      "expires": time.time() + DEVICE_CODE_SECONDS, "user_id": None,
                                      "denied": False, "last_poll": 0.0}
        verify = f"{realm.issuer}/device"
        return json_response({"device_code": device_code, "user_code": user_code, "verification_uri": verify,
                              "verification_uri_complete": f"{verify}?{urlencode({'user_code': user_code})}",
                              "expires_in": DEVICE_CODE_SECONDS, "interval": client.device_interval})

    def on_device_verify(self, request, realm):
        """The page a person opens on any browser: the user code, then their credentials (Keycloak shows
        these as two pages and a consent screen; one form here). `deny` refuses the device."""
        if request.method == "GET":
            code = html.escape(request.args.get("user_code", ""))
            page = (f"<form method='post'><input name='user_code' value='{code}'><input name='username'>"
                    f"<input name='password' type='password'><button>Sign in to {html.escape(realm.name)}</button>"
                    f"<button name='deny' value='1'>Deny</button></form>")
            return Response(page, mimetype="text/html")
        wanted = request.form.get("user_code", "").strip().upper()
        entry = next((d for d in realm.devices.values() if d["user_code"] == wanted and d["expires"] > time.time()
                      and d["user_id"] is None and not d["denied"]), None)
        if entry is None:
            return Response("Invalid code, please try again.", status=400, mimetype="text/html")
        user = realm.user_by_name(request.form.get("username", ""))
        if user is None or not user.enabled or user.password is None \
                or not secrets.compare_digest(user.password, request.form.get("password", "")):
            return Response("Invalid username or password.", status=401, mimetype="text/html")
        if request.form.get("deny"):
            entry["denied"] = True
            return Response("Access denied.", mimetype="text/html")
        entry["user_id"] = user.id
        return Response("Device login successful. You may close this window.", mimetype="text/html")

    def _device_token(self, request, realm, client):
        code = request.form.get("device_code", "")
        entry = realm.devices.get(code)
        if entry is None or entry["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "Device code not valid")
        if entry["expires"] < time.time():
            realm.devices.pop(code, None)
            raise OAuthError("expired_token", "Device code is expired")
        if entry["denied"]:
            realm.devices.pop(code, None)
            raise OAuthError("access_denied", "The end user denied the authorization request")
        if entry["user_id"] is None:
            now = time.monotonic()
            too_soon = now - entry["last_poll"] < client.device_interval
            entry["last_poll"] = now
            if too_soon:
                raise OAuthError("slow_down", "Slow down")
            raise OAuthError("authorization_pending", "The authorization request is still pending")
        realm.devices.pop(code)  # single use
        user = realm.users.get(entry["user_id"])
        if user is None or not user.enabled:
            raise OAuthError("invalid_grant", "Account disabled")
        session = Session(sid=str(uuid.uuid4()), user_id=user.id)
        realm.sessions[session.sid] = session
        return json_response(realm.issue(user, client, session, scope=entry["scope"]))

    def on_certs(self, request, realm):
        return json_response(realm.certs())

    def on_userinfo(self, request, realm):
        header = request.headers.get("Authorization", "")
        claims = realm.verify(header[7:], typ="Bearer") if header.startswith("Bearer ") else None
        if claims is None or not realm.session_active(claims.get("sid")):
            return json_response({"error": "invalid_token", "error_description": "Token verification failed"}, 401,
                                 headers={"WWW-Authenticate": 'Bearer realm="%s", error="invalid_token"' % realm.name})
        user = realm.users[claims["sub"]]
        return json_response({"sub": user.id, **realm.user_claims(user, claims["azp"])})

    def on_introspect(self, request, realm):
        client = self._client_auth(request, realm, required=True)
        token = request.form.get("token", "")
        claims = realm.verify(token)
        if claims is None or claims.get("typ") not in ("Bearer", "Refresh", "ID") \
                or not realm.session_active(claims.get("sid")):
            return json_response({"active": False})
        user = realm.users[claims["sub"]]
        # Keycloak answers from the session as it is now: current roles and groups, not the token's copy.
        return json_response({**claims, **realm.user_claims(user, claims["azp"]), "client_id": claims["azp"],
                              "username": user.username, "token_type": claims["typ"], "active": True,
                              "introspected_by": client.client_id})

    def on_logout(self, request, realm):
        if request.method == "GET" or request.form.get("id_token_hint"):  # RP-initiated (browser) logout
            hint = request.values.get("id_token_hint", "")
            claims = realm.verify(hint, typ="ID") if hint else None
            if claims is not None:
                self._end_unlocked(realm, claims["sid"])
            target = request.values.get("post_logout_redirect_uri", "")
            if target:
                return Response(status=302, headers={"Location": target})
            return Response("You are logged out", mimetype="text/html")
        client = self._client_auth(request, realm, required=False)
        claims = realm.verify(request.form.get("refresh_token", ""), typ="Refresh")
        if claims is None or claims["azp"] != client.client_id:
            raise OAuthError("invalid_grant", "Invalid refresh token")
        self._end_unlocked(realm, claims["sid"])
        return Response(status=204)

    def _end_unlocked(self, realm: Realm, sid: str) -> list[dict]:
        """End the session under the lock, then deliver the logout tokens without it (a client may call
        back, e.g. for the certs, while it handles one)."""
        records = realm.end_session(sid)
        self.lock.release()
        try:
            for record in records:
                try:
                    answer = requests.post(record["url"], data={"logout_token": record["logout_token"]}, timeout=10)
                    record["status"] = answer.status_code
                except requests.RequestException as exc:
                    record["status"], record["error"] = None, str(exc)
        finally:
            self.lock.acquire()
        realm.logout_tokens.extend(records)
        return records

    # -- Admin REST API -------------------------------------------------------

    def _admin(self, request, realm: Realm) -> None:
        """Every admin call carries a bearer token of a realm admin (master) or an admin client's service account."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        for issuer_realm in (self.realms["master"], realm):
            claims = issuer_realm.verify(token, typ="Bearer")
            if claims is None or not issuer_realm.session_active(claims.get("sid")):
                continue
            user = issuer_realm.users.get(claims["sub"])
            if issuer_realm.name == "master" and "admin" in user.realm_roles:
                return
            if user.service_account_of and issuer_realm is realm and realm.clients[user.service_account_of].admin:
                return
        raise OAuthError("HTTP 401 Unauthorized", "admin token refused", 401)

    def _user(self, realm: Realm, user_id: str) -> User:
        user = realm.users.get(user_id)
        if user is None:
            raise OAuthError("User not found", "User not found", 404)
        return user

    def on_admin_users(self, request, realm):
        self._admin(request, realm)
        if request.method == "POST":
            body = request.get_json(force=True)
            if realm.user_by_name(body.get("username", "")):
                return json_response({"errorMessage": "User exists with same username"}, 409)
            user = realm.add_user(body["username"], email=body.get("email", ""), first_name=body.get("firstName", ""),
                                  last_name=body.get("lastName", ""), enabled=body.get("enabled", True),
                                  attributes={k: list(v) for k, v in (body.get("attributes") or {}).items()})
            for cred in body.get("credentials") or []:
                if cred.get("type") == "password":
                    user.password = cred.get("value")
            for path in body.get("groups") or []:
                group = realm.group_by_path(path)
                if group is None:
                    return json_response({"errorMessage": f"Group {path} not found"}, 400)
                user.group_ids.add(group["id"])
            location = f"{self.base_url}/admin/realms/{realm.name}/users/{user.id}"
            return Response(status=201, headers={"Location": location})
        users = [u for u in realm.users.values() if not u.service_account_of]
        q = request.args
        if q.get("username"):
            name = q["username"].lower()
            exact = q.get("exact", "false").lower() == "true"
            users = [u for u in users if (u.username == name if exact else name in u.username)]
        if q.get("email"):
            users = [u for u in users if u.email == q["email"]]
        users.sort(key=lambda u: u.username)
        first, limit = int(q.get("first", 0)), int(q.get("max", 100))
        return json_response([_user_rep(u) for u in users[first:first + limit]])

    def on_admin_users_count(self, request, realm):
        self._admin(request, realm)
        return json_response(sum(1 for u in realm.users.values() if not u.service_account_of))

    def on_admin_user(self, request, realm, user_id):
        self._admin(request, realm)
        user = self._user(realm, user_id)
        if request.method == "GET":
            return json_response(_user_rep(user))
        if request.method == "DELETE":
            del realm.users[user.id]
            for session in realm.sessions.values():
                if session.user_id == user.id:
                    session.active = False
            return Response(status=204)
        body = request.get_json(force=True)
        if "username" in body and body["username"].lower() != user.username:
            other = realm.user_by_name(body["username"])
            if other is not None:
                return json_response({"errorMessage": "User exists with same username"}, 409)
            user.username = body["username"].lower()
        for attr, key in (("email", "email"), ("first_name", "firstName"), ("last_name", "lastName"),
                          ("enabled", "enabled")):
            if key in body:
                setattr(user, attr, body[key])
        if "attributes" in body:
            user.attributes = {k: list(v) for k, v in (body["attributes"] or {}).items()}
        return Response(status=204)

    def on_admin_user_realm_roles(self, request, realm, user_id):
        self._admin(request, realm)
        user = self._user(realm, user_id)
        if request.method == "GET":
            return json_response([realm.roles[r] for r in sorted(user.realm_roles) if r in realm.roles])
        roles = request.get_json(force=True)
        for role in roles:
            if role.get("name") not in realm.roles:
                return json_response({"error": "Role not found"}, 404)
        for role in roles:
            (user.realm_roles.add if request.method == "POST" else user.realm_roles.discard)(role["name"])
        return Response(status=204)

    def on_admin_user_groups(self, request, realm, user_id):
        self._admin(request, realm)
        user = self._user(realm, user_id)
        groups = sorted((realm.groups[g] for g in user.group_ids if g in realm.groups), key=lambda g: g["path"])
        first, limit = int(request.args.get("first", 0)), int(request.args.get("max", 100))
        return json_response([_group_rep(realm, g) for g in groups[first:first + limit]])

    def on_admin_user_group(self, request, realm, user_id, group_id):
        self._admin(request, realm)
        user = self._user(realm, user_id)
        if group_id not in realm.groups:
            raise OAuthError("Could not find group by id", "Could not find group by id", 404)
        (user.group_ids.add if request.method == "PUT" else user.group_ids.discard)(group_id)
        return Response(status=204)

    def on_admin_user_logout(self, request, realm, user_id):
        self._admin(request, realm)
        user = self._user(realm, user_id)
        for sid in [s.sid for s in realm.sessions.values() if s.user_id == user.id and s.active]:
            self._end_unlocked(realm, sid)
        return Response(status=204)

    def on_admin_roles(self, request, realm):
        self._admin(request, realm)
        if request.method == "POST":
            body = request.get_json(force=True)
            if body["name"] in realm.roles:
                return json_response({"errorMessage": "Role with name exists"}, 409)
            realm.add_role(body["name"], body.get("description", ""))
            return Response(status=201, headers={
                "Location": f"{self.base_url}/admin/realms/{realm.name}/roles/{body['name']}"})
        roles = sorted(realm.roles.values(), key=lambda r: r["name"])
        first, limit = int(request.args.get("first", 0)), int(request.args.get("max", 100))
        return json_response(roles[first:first + limit])

    def on_admin_role(self, request, realm, role_name):
        self._admin(request, realm)
        if role_name not in realm.roles:
            raise OAuthError("Could not find role", "Could not find role", 404)
        return json_response(realm.roles[role_name])

    def on_admin_groups(self, request, realm):
        self._admin(request, realm)
        if request.method == "POST":
            return self._create_group(realm, request.get_json(force=True), None)
        tops = sorted((g for g in realm.groups.values() if g["parent"] is None), key=lambda g: g["name"])
        q = request.args
        if q.get("search"):
            tops = [g for g in tops if q["search"] in g["name"]]
        first, limit = int(q.get("first", 0)), int(q.get("max", 100))
        return json_response([_group_rep(realm, g) for g in tops[first:first + limit]])

    def _create_group(self, realm, body, parent):
        siblings = [g for g in realm.groups.values() if g["parent"] == (parent["id"] if parent else None)]
        if any(g["name"] == body["name"] for g in siblings):
            return json_response({"errorMessage": f"Top level group named '{body['name']}' already exists."}, 409)
        group = realm.add_group(body["name"], parent)
        return Response(status=201, headers={
            "Location": f"{self.base_url}/admin/realms/{realm.name}/groups/{group['id']}"})

    def on_admin_group(self, request, realm, group_id):
        self._admin(request, realm)
        group = realm.groups.get(group_id)
        if group is None:
            raise OAuthError("Could not find group by id", "Could not find group by id", 404)
        return json_response(_group_rep(realm, group))

    def on_admin_group_children(self, request, realm, group_id):
        self._admin(request, realm)
        parent = realm.groups.get(group_id)
        if parent is None:
            raise OAuthError("Could not find group by id", "Could not find group by id", 404)
        if request.method == "POST":
            return self._create_group(realm, request.get_json(force=True), parent)
        children = sorted((g for g in realm.groups.values() if g["parent"] == group_id), key=lambda g: g["name"])
        first, limit = int(request.args.get("first", 0)), int(request.args.get("max", 100))
        return json_response([_group_rep(realm, g) for g in children[first:first + limit]])

    def on_admin_group_members(self, request, realm, group_id):
        self._admin(request, realm)
        members = sorted((u for u in realm.users.values() if group_id in u.group_ids), key=lambda u: u.username)
        first, limit = int(request.args.get("first", 0)), int(request.args.get("max", 100))
        return json_response([_user_rep(u) for u in members[first:first + limit]])

    def on_admin_group_by_path(self, request, realm, path):
        self._admin(request, realm)
        group = realm.group_by_path("/" + path.strip("/"))
        if group is None:
            raise OAuthError("Group path does not exist", "Group path does not exist", 404)
        return json_response(_group_rep(realm, group))

    # -- test controls --------------------------------------------------------

    def on_c_health(self, request, realm):
        return json_response({"ok": True})

    def on_c_keys(self, request, realm):
        if request.method == "POST":
            body = request.get_json(silent=True) or {}
            kid = realm.rotate_key(make_current=body.get("make_current", True))
            return json_response({"kid": kid, "current": realm.current_kid})
        return json_response({"current": realm.current_kid, "issuer": realm.issuer,
                              "keys": [json.loads(k.export_private()) for k in realm.keys.values()]})

    def on_c_stats(self, request, realm):
        return json_response(dict(realm.stats))

    def on_c_users(self, request, realm):
        body = request.get_json(force=True)
        user = realm.add_user(body["username"], email=body.get("email", ""), password=body.get("password"),
                              enabled=body.get("enabled", True), realm_roles=set(body.get("realm_roles", [])),
                              client_roles={c: set(r) for c, r in body.get("client_roles", {}).items()},
                              attributes={k: list(v) for k, v in body.get("attributes", {}).items()})
        for role in user.realm_roles:
            realm.add_role(role)
        for path in body.get("groups", []):
            user.group_ids.add(realm.ensure_group(path)["id"])
        return json_response({"id": user.id, "username": user.username}, 201)

    def on_c_client(self, request, realm, client_id):
        body = request.get_json(force=True)
        client = realm.clients.setdefault(client_id, Client(client_id, secret=body.get("secret")))
        for key in ("backchannel_logout_url", "redirect_uris", "admin", "secret", "audience", "attribute_claims",
                    "device_flow", "device_interval", "access_token_lifespan"):
            if key in body:
                setattr(client, key, body[key])
        return json_response({"client_id": client.client_id})

    def on_c_end_session(self, request, realm, sid):
        return json_response({"sent": self._end_unlocked(realm, sid)})

    def on_c_logout_tokens(self, request, realm):
        return json_response(realm.logout_tokens)


def _redirect_allowed(client: Client, uri: str) -> bool:
    return any(p == "*" or uri == p or (p.endswith("*") and uri.startswith(p[:-1])) for p in client.redirect_uris)


def _user_rep(user: User) -> dict:
    rep = {"id": user.id, "username": user.username, "enabled": user.enabled, "emailVerified": bool(user.email),
           "createdTimestamp": user.created, "firstName": user.first_name, "lastName": user.last_name,
           "totp": False, "disableableCredentialTypes": [], "requiredActions": [], "notBefore": 0,
           "access": {"manage": True}}
    if user.email:
        rep["email"] = user.email
    if user.attributes:
        rep["attributes"] = {k: list(v) for k, v in user.attributes.items()}
    return rep


def _group_rep(realm: Realm, group: dict) -> dict:
    children = sum(1 for g in realm.groups.values() if g["parent"] == group["id"])
    rep = {"id": group["id"], "name": group["name"], "path": group["path"], "subGroupCount": children,
           "subGroups": [], "attributes": {}, "realmRoles": [], "clientRoles": {}, "access": {"view": True}}
    if group["parent"]:
        rep["parentId"] = group["parent"]
    return rep


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def unverified_header(token: str) -> dict:
    """The JOSE header of a compact JWS, unverified (for tests that inspect what was signed)."""
    parsed = jws.JWS()
    parsed.deserialize(token)
    return parsed.jose_header
