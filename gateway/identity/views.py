"""Portal login with OpenID Connect (authorization code + PKCE S256) and back-channel logout."""
from __future__ import annotations

import hmac
import logging
import secrets
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from importlib import import_module

from django.conf import settings
from django.contrib.auth import login, logout
from django.db import IntegrityError, transaction
from django.http import Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from keycloak.exceptions import KeycloakError
from keycloak.pkce_utils import generate_code_challenge, generate_code_verifier

from audit.services import audit_append
from gateway.errors import ErrorCode, NoTenant

from . import tokens
from .conf import issuer, oidc_enabled, openid
from .models import ExternalIdentity, LogoutTokenSeen, OidcSession
from .sync import principal_from_claims, user_for_principal

log = logging.getLogger(__name__)
FLOW_KEY = "oidc_flow"
SESSION_KEY = "oidc"
SCOPE = "openid profile email"


def _require_oidc() -> None:
    if not oidc_enabled():
        raise Http404("OpenID Connect login is not configured.")


def _redirect_uri(request) -> str:
    return request.build_absolute_uri(reverse("oidc-callback"))


def _safe_next(request, candidate: str | None) -> str:
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return settings.LOGIN_REDIRECT_URL


@never_cache
@require_GET
def oidc_login(request):
    """Start the code flow: fresh state, nonce and PKCE verifier kept in the session, then off to Keycloak."""
    _require_oidc()
    verifier = generate_code_verifier(64)
    challenge, method = generate_code_challenge(verifier, "S256")
    flow = {"state": secrets.token_urlsafe(32), "nonce": secrets.token_urlsafe(32), "verifier": verifier,
            "next": _safe_next(request, request.GET.get("next"))}
    request.session[FLOW_KEY] = flow
    try:
        url = openid().auth_url(redirect_uri=_redirect_uri(request), scope=SCOPE.replace(" ", "+"),
                                state=flow["state"], nonce=flow["nonce"], code_challenge=challenge,
                                code_challenge_method=method)
    except (KeycloakError, OSError) as exc:
        log.warning("OpenID Connect discovery failed: %s", exc)
        return HttpResponse("The identity provider did not answer; try again.", status=503)
    return HttpResponseRedirect(url)


def _refuse_login(code: str, message: str, status: int = 400):
    audit_append(event="auth.login_failed", outcome="denied", error_code=code, data={"method": "oidc",
                                                                                     "reason": message})
    return HttpResponse(f"Login refused: {message}", status=status, content_type="text/plain")


@never_cache
@require_GET
def oidc_callback(request):
    """Back from Keycloak: state checked (and spent), code exchanged with the PKCE verifier, ID token
    checked (signature, iss, aud, exp, nonce), access token checked and introspected, then the session
    id is rotated by login()."""
    _require_oidc()
    flow = request.session.pop(FLOW_KEY, None)
    state = request.GET.get("state", "")
    if not flow or not state or not hmac.compare_digest(state, flow["state"]):
        return _refuse_login("state_mismatch", "the login request is unknown or was already used")
    if request.GET.get("error"):
        return _refuse_login("provider_error", str(request.GET.get("error"))[:100])
    try:
        answer = openid().token(grant_type="authorization_code", code=request.GET.get("code", ""),
                                redirect_uri=_redirect_uri(request), code_verifier=flow["verifier"],
                                username=None, password=None)
    except KeycloakError as exc:
        return _refuse_login("code_rejected", f"the identity provider refused the code ({exc.response_code})")
    except OSError:
        return HttpResponse("The identity provider did not answer; try again.", status=503)
    try:
        id_claims = tokens.id_token_claims(answer.get("id_token", ""), nonce=flow["nonce"])
        claims = tokens.access_token_claims(answer.get("access_token", ""))
        if claims["sub"] != id_claims["sub"]:
            raise tokens.TokenRefused("ID and access token name different users")
        current = tokens.introspect(answer["access_token"], claims)
    except tokens.TokenRefused as exc:
        return _refuse_login(ErrorCode.INVALID_TOKEN, exc.reason)
    except tokens.ProviderUnavailable:
        return HttpResponse("The identity provider did not answer; try again.", status=503)
    try:
        user = user_for_principal(principal_from_claims({**claims, **current}))
    except NoTenant:
        return _refuse_login(ErrorCode.NO_TENANT, "your account belongs to no tenant", status=403)
    if not user.is_active:
        return _refuse_login("account_disabled", "your account is disabled", status=403)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")  # new session id
    # The tokens stay server-side, in the session store: middleware.py checks them with Keycloak on each request.
    request.session[SESSION_KEY] = {"sid": id_claims.get("sid", ""), "id_token": answer["id_token"],
                                    "refresh_token": answer.get("refresh_token", ""),
                                    "access_token": answer["access_token"], "expires_at": int(claims["exp"]),
                                    "sub": claims["sub"]}
    request.session.save()
    OidcSession.objects.create(sid=id_claims.get("sid", ""), subject=claims["sub"],
                               session_key=request.session.session_key, user=user)
    membership = getattr(user, "membership", None)
    audit_append(event="auth.login", actor=user, tenant_id=membership.tenant_id if membership else None,
                 data={"method": "oidc", "sid": id_claims.get("sid", "")})
    return HttpResponseRedirect(flow["next"])


def session_tokens(answer: dict, previous: dict) -> dict:
    """The session's tokens after a refresh: the new access token (checked), and the new refresh and
    ID tokens when Keycloak sent them."""
    claims = tokens.access_token_claims(answer.get("access_token", ""))
    if claims["sub"] != previous.get("sub", claims["sub"]):
        raise tokens.TokenRefused("the refreshed token names another user")
    data = {**previous, "access_token": answer["access_token"], "expires_at": int(claims["exp"]), "sub": claims["sub"]}
    for name in ("refresh_token", "id_token"):
        if answer.get(name):
            data[name] = answer[name]
    return data


def end_provider_session(request) -> None:
    """Ends the Keycloak session behind this portal session (its end-session endpoint, with the refresh
    token), and forgets the sid link. Failures are logged: the local logout happens regardless."""
    data = request.session.get(SESSION_KEY)
    if not data:
        return
    OidcSession.objects.filter(session_key=request.session.session_key).delete()
    if data.get("refresh_token"):
        try:
            openid().logout(data["refresh_token"])
        except (KeycloakError, OSError) as exc:
            log.warning("Keycloak end-session failed: %s", exc)


@never_cache
@require_POST
def oidc_logout(request):
    user = request.user
    if user.is_authenticated:
        membership = getattr(user, "membership", None)
        audit_append(event="auth.logout", actor=user, tenant_id=membership.tenant_id if membership else None,
                     data={"method": "oidc"})
    end_provider_session(request)
    logout(request)
    return HttpResponseRedirect(settings.LOGOUT_REDIRECT_URL)


def _backchannel_error(description: str, code: str = "invalid_request"):
    audit_append(event="auth.backchannel_logout", outcome="denied", error_code=ErrorCode.INVALID_TOKEN,
                 data={"reason": description})
    response = JsonResponse({"error": code, "error_description": description}, status=400)
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@never_cache
@require_POST
def backchannel_logout(request):
    """OpenID Connect Back-Channel Logout 1.0: Keycloak POSTs a signed logout_token; every portal session
    of its sid (or, without a sid, of its subject) ends. A replayed token (same jti) is refused."""
    _require_oidc()
    token = request.POST.get("logout_token", "")
    if not token:
        return _backchannel_error("logout_token missing")
    try:
        claims = tokens.logout_token_claims(token)
    except tokens.TokenRefused as exc:
        return _backchannel_error(exc.reason)
    except tokens.ProviderUnavailable:
        return HttpResponse(status=503)
    expires = datetime.fromtimestamp(max(int(claims.get("exp") or 0), int(claims["iat"]) + 600), tz=dt_timezone.utc)
    try:
        with transaction.atomic():
            LogoutTokenSeen.objects.create(jti=str(claims["jti"])[:255], expires_at=expires)
    except IntegrityError:
        return _backchannel_error("logout token already used")
    LogoutTokenSeen.objects.filter(expires_at__lt=timezone.now() - timedelta(days=1)).delete()
    rows = OidcSession.objects.all()
    if claims.get("sid"):
        rows = rows.filter(sid=claims["sid"])
        if claims.get("sub"):
            rows = rows.filter(subject=claims["sub"])
    else:
        rows = rows.filter(subject=claims["sub"])
    store = import_module(settings.SESSION_ENGINE).SessionStore
    keys = list(rows.values_list("session_key", flat=True))
    for key in keys:
        store(session_key=key).delete()
    rows.delete()
    link = ExternalIdentity.objects.filter(issuer=issuer(), subject=claims.get("sub") or "").select_related(
        "user__membership").first()
    actor = link.user if link else None
    membership = getattr(actor, "membership", None) if actor else None
    audit_append(event="auth.backchannel_logout", tenant_id=membership.tenant_id if membership else None,
                 object_type="user" if actor else "", object_id=str(actor.pk) if actor else "",
                 data={"sid": claims.get("sid", ""), "sessions_ended": len(keys)})
    response = HttpResponse(status=200)
    response["Cache-Control"] = "no-store"
    return response
