"""Validating Keycloak's tokens: access tokens (API), ID tokens (portal login), logout tokens (back-channel).

Signatures are checked against the realm's JWKS, fetched through python-keycloak (`KeycloakOpenID.certs`)
and cached in the process. A token signed with a key id we do not hold refetches the JWKS once (after a
key rotation), but at most every JWKS_MIN_REFRESH_SECONDS, so a flood of tokens with made-up key ids
costs Keycloak one request per interval, not one per token.

Only RS256 is accepted (no `none`, no HS256 signed with the public key as the secret). Claims are checked
explicitly: python-keycloak's `decode_token` with defaults accepts a wrong `aud`/`iss` and a token
without `exp`, so every call names the claims it requires. Clock skew is at most LEEWAY (<= 30 s) on
`exp` and `nbf`.

A valid signature only says what was true when the token was issued. `introspect` asks Keycloak whether
it still holds (user enabled, session alive) and what the user's roles and groups are now.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time

from django.core.cache import cache
from jwcrypto import jwk, jws
from jwcrypto.jwt import JWTExpired, JWTMissingClaim, JWTMissingKey
from keycloak.exceptions import KeycloakError

from .conf import accepted_clients, auth_settings, issuer, openid

ALGORITHMS = ["RS256"]
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class TokenRefused(Exception):
    """A token that is not acceptable; `reason` is short and safe to show and to audit."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(Exception):
    """Keycloak did not answer (network, 5xx): not the caller's fault, and not a reason to let them in."""


class JwksCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: jwk.JWKSet | None = None
        self._kids: set[str] = set()
        self._fetched_at = 0.0
        self._source: tuple | None = None

    def forget(self) -> None:
        with self._lock:
            self._keys, self._kids, self._fetched_at, self._source = None, set(), 0.0, None

    def _fetch(self) -> None:
        try:
            body = openid().certs()
        except KeycloakError as exc:
            raise ProviderUnavailable(f"cannot fetch the realm's keys: {exc}") from exc
        except OSError as exc:  # requests' connection errors
            raise ProviderUnavailable(f"cannot fetch the realm's keys: {exc}") from exc
        keys = jwk.JWKSet()
        kids = set()
        for entry in body.get("keys", []):
            if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
                continue
            keys.add(jwk.JWK(**entry))
            kids.add(entry.get("kid", ""))
        self._keys, self._kids, self._fetched_at = keys, kids, time.monotonic()

    def keys_for(self, kid: str | None) -> jwk.JWKSet:
        """The cached key set, refetched when stale or (rate limited) when `kid` is not in it."""
        conf = auth_settings()
        source = (conf["SERVER_URL"], conf["REALM"])
        with self._lock:
            now = time.monotonic()
            if self._keys is None or self._source != source or now - self._fetched_at > conf["JWKS_CACHE_SECONDS"]:
                self._fetch()
                self._source = source
            elif kid and kid not in self._kids and now - self._fetched_at >= conf["JWKS_MIN_REFRESH_SECONDS"]:
                self._fetch()
            return self._keys

    def knows(self, kid: str | None) -> bool:
        return bool(kid) and kid in self._kids


jwks = JwksCache()


def _header(token: str) -> dict:
    try:
        parsed = jws.JWS()
        parsed.deserialize(token)
        header = parsed.jose_header
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it is not a token
        raise TokenRefused("malformed token") from exc
    if not isinstance(header, dict):
        raise TokenRefused("malformed token")
    if header.get("alg") not in ALGORITHMS:
        raise TokenRefused(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted")
    return header


def _decode(token: str, *, check_claims: dict) -> dict:
    """Signature (RS256, the realm's keys) and the named claims, through python-keycloak's decode_token."""
    header = _header(token)
    keys = jwks.keys_for(header.get("kid"))
    leeway = auth_settings()["LEEWAY"]
    try:
        claims = openid().decode_token(token, key=keys, algs=ALGORITHMS, check_claims=check_claims, leeway=leeway)
    except JWTMissingKey as exc:
        # jwcrypto says "no key" also when the key of that id did not verify the signature.
        raise TokenRefused("bad signature" if jwks.knows(header.get("kid")) else "signed with an unknown key") from exc
    except JWTExpired as exc:
        raise TokenRefused("token expired") from exc
    except JWTMissingClaim as exc:
        raise TokenRefused(f"claim missing: {str(exc)[:80]}") from exc
    except Exception as exc:  # noqa: BLE001 - jwcrypto's errors, and any malformed claim
        text = str(exc)
        if "Invalid 'iss'" in text:
            raise TokenRefused("wrong issuer") from exc
        if "Invalid 'aud'" in text:
            raise TokenRefused("wrong audience") from exc
        if "Invalid 'typ'" in text:
            raise TokenRefused("wrong token type") from exc
        if "Invalid 'azp'" in text:
            raise TokenRefused("token of another client") from exc
        raise TokenRefused("signature or claims not valid") from exc
    if not isinstance(claims, dict):
        raise TokenRefused("malformed token")
    # With check_claims given, jwcrypto does not look at nbf: checked here, with the same leeway.
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or nbf > time.time() + leeway):
        raise TokenRefused("token not yet valid")
    return claims


def access_token_claims(token: str) -> dict:
    """A Keycloak access token for this client (aud), issued to it or to the command line's client
    (azp, CLI_CLIENT_ID), now valid."""
    client_id = auth_settings()["CLIENT_ID"]
    claims = _decode(token, check_claims={
        "iss": issuer(), "aud": client_id, "azp": None, "typ": "Bearer", "exp": None, "sub": None, "iat": None,
    })
    if not isinstance(claims["azp"], str) or claims["azp"] not in accepted_clients():
        raise TokenRefused("token of another client")
    return claims


def id_token_claims(token: str, *, nonce: str) -> dict:
    """An ID token from the code exchange: ours, now valid, and carrying the nonce we sent."""
    client_id = auth_settings()["CLIENT_ID"]
    claims = _decode(token, check_claims={
        "iss": issuer(), "aud": client_id, "typ": "ID", "exp": None, "sub": None, "iat": None, "nonce": None,
    })
    if claims.get("azp", client_id) != client_id:
        raise TokenRefused("token of another client")
    if not hmac.compare_digest(str(claims["nonce"]), nonce):
        raise TokenRefused("nonce mismatch")
    return claims


def logout_token_claims(token: str) -> dict:
    """A back-channel logout token (OpenID Connect Back-Channel Logout 1.0, section 2.6)."""
    client_id = auth_settings()["CLIENT_ID"]
    claims = _decode(token, check_claims={"iss": issuer(), "aud": client_id, "iat": None, "jti": None, "events": None})
    if claims.get("exp") is not None and (not isinstance(claims["exp"], int)
                                          or claims["exp"] < time.time() - auth_settings()["LEEWAY"]):
        raise TokenRefused("token expired")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise TokenRefused("not a back-channel logout event")
    if "nonce" in claims:
        raise TokenRefused("a logout token carries no nonce")
    if not (isinstance(claims.get("sid"), str) and claims["sid"]) and not (isinstance(claims.get("sub"), str)
                                                                           and claims["sub"]):
        raise TokenRefused("a logout token names a sid or a sub")
    if claims.get("typ") not in (None, "Logout", "logout+jwt"):
        raise TokenRefused("wrong token type")
    return claims


def introspect(token: str, claims: dict) -> dict:
    """Keycloak's current view of the token (RFC 7662): refused when the user is disabled or the session
    ended; otherwise the claims as they are now (roles, groups).

    Cost: one round trip to Keycloak per API request (a few milliseconds on a local network; the request
    fails with 503 when Keycloak is down). INTROSPECTION_CACHE_SECONDS > 0 reuses an answer for that long,
    and a disabled user or a removed role then takes effect up to that much later.
    """
    ttl = auth_settings()["INTROSPECTION_CACHE_SECONDS"]
    cache_key = "gatehouse:introspect:" + hashlib.sha256(token.encode("utf-8")).hexdigest()
    answer = cache.get(cache_key) if ttl > 0 else None
    if answer is None:
        try:
            answer = openid().introspect(token)
        except KeycloakError as exc:
            if getattr(exc, "response_code", None) in (400, 401, 403):
                raise ProviderUnavailable(f"introspection refused our client: {exc.response_code}") from exc
            raise ProviderUnavailable(f"introspection failed: {exc}") from exc
        except OSError as exc:
            raise ProviderUnavailable(f"introspection failed: {exc}") from exc
        if ttl > 0:
            cache.set(cache_key, answer, timeout=ttl)
    if not isinstance(answer, dict) or answer.get("active") is not True:
        raise TokenRefused("token no longer active")
    if answer.get("sub") != claims.get("sub"):
        raise TokenRefused("introspection names another subject")
    client = answer.get("client_id") or answer.get("azp")
    if not isinstance(client, str) or client not in accepted_clients() or client != claims.get("azp"):
        raise TokenRefused("token of another client")
    return answer

