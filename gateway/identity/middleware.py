"""Portal sessions opened by an OpenID Connect login follow Keycloak on every request (oidc mode only).

The login (views.oidc_callback) keeps the session's access and refresh tokens server-side, in the
session store; the browser holds only the session cookie. On each request of such a session this
middleware asks Keycloak about the access token (tokens.introspect, with the same
INTROSPECTION_CACHE_SECONDS as the API's bearer tokens), refreshing it with the refresh token first
when it has expired, and maps the answer to the local user and membership (sync.py). So a user disabled
in Keycloak, an ended Keycloak session or a refused refresh logs the portal session out on its next
request (audited as auth.logout_forced; the browser is sent to the login page, an API call made with
the session is answered 401), and a changed role counts from that request on.

Keycloak not answering is not a reason to let the session through: the request fails with 503 and the
session stays, so it works again when Keycloak is back.

Sessions without OpenID Connect tokens (none are made in oidc mode but by the Django admin's own
login) are left to Django. The OpenID Connect endpoints themselves (/auth/oidc/...) are not checked.
"""
from __future__ import annotations

import hashlib
import logging
import time

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.sessions.backends.base import UpdateError
from django.core.cache import cache
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils.http import urlencode
from keycloak.exceptions import KeycloakError

from audit.services import audit_append
from gateway.errors import ErrorCode, NoTenant

from . import tokens
from .conf import oidc_enabled, openid
from .models import OidcSession
from .sync import principal_from_claims, user_for_principal
from .views import SESSION_KEY, end_provider_session, session_tokens

log = logging.getLogger(__name__)
REFRESH_MARGIN_SECONDS = 10  # refresh a little before exp, so Keycloak never sees an expired token
REFRESH_LOCK_WAIT_SECONDS = 5


def _membership(user):
    """Through membership_for, which binds the request's database scope to the user's tenant
    (gateway/dbscope.py), so the audit entry may be written in it; None without one."""
    from rest_framework.exceptions import APIException

    from gateway.errors import GatehouseError
    from gateway.selectors import membership_for

    try:
        return membership_for(user)
    except (GatehouseError, APIException):
        return None


class SessionEnded(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OidcSessionMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self._exempt_prefix: str | None = None

    def exempt(self, request) -> bool:
        if self._exempt_prefix is None:
            self._exempt_prefix = reverse("oidc-login").rsplit("login/", 1)[0]
        return request.path_info.startswith(self._exempt_prefix)

    def __call__(self, request):
        if oidc_enabled() and not self.exempt(request):
            refused = self.check(request)
            if refused is not None:
                return refused
        return self.get_response(request)

    def check(self, request):
        data = request.session.get(SESSION_KEY)
        if not isinstance(data, dict) or not request.user.is_authenticated:
            return None
        try:
            data = self._current(request, data)
            claims = tokens.access_token_claims(data["access_token"])
            current = tokens.introspect(data["access_token"], claims)
            user = user_for_principal(principal_from_claims({**claims, **current}))
            if user.pk != request.user.pk:
                raise SessionEnded("the identity provider names another user")
            if not user.is_active:
                raise SessionEnded("account disabled")
        except (SessionEnded, tokens.TokenRefused) as exc:
            return self.force_logout(request, data, exc.reason)
        except NoTenant:
            return self.force_logout(request, data, "the account belongs to no tenant",
                                     end_keycloak_session=True)
        except tokens.ProviderUnavailable as exc:
            log.warning("portal session check failed: %s", exc)
            return self.unavailable(request)
        request.user = user  # the membership as Keycloak says it is now
        request._cached_user = user
        return None

    def _current(self, request, data: dict) -> dict:
        """The session's tokens, refreshed when the access token has expired (or was never kept)."""
        if data.get("access_token") and time.time() < data.get("expires_at", 0) - REFRESH_MARGIN_SECONDS:
            return data
        if not data.get("refresh_token"):
            raise SessionEnded("no refresh token")
        # One refresh per session at a time: Keycloak may refuse a refresh token used twice, and a page
        # often sends several requests at once. The lock lives in the cache (shared when CACHES is).
        lock = "gatehouse:oidc-refresh:" + hashlib.sha256(request.session.session_key.encode()).hexdigest()
        deadline = time.monotonic() + REFRESH_LOCK_WAIT_SECONDS
        held = cache.add(lock, 1, timeout=REFRESH_LOCK_WAIT_SECONDS * 2)
        while not held and time.monotonic() < deadline:
            time.sleep(0.05)
            held = cache.add(lock, 1, timeout=REFRESH_LOCK_WAIT_SECONDS * 2)
        try:
            stored = type(request.session)(session_key=request.session.session_key).get(SESSION_KEY)
            if isinstance(stored, dict) and stored.get("refresh_token") \
                    and stored["refresh_token"] != data["refresh_token"]:
                data = stored  # refreshed by another request of this session meanwhile
                request.session[SESSION_KEY] = data
                if time.time() < data.get("expires_at", 0) - REFRESH_MARGIN_SECONDS:
                    return data
            try:
                answer = openid().refresh_token(data["refresh_token"])
            except KeycloakError as exc:
                if getattr(exc, "response_code", None) != 400:  # 401: our client refused; 5xx: Keycloak's trouble
                    raise tokens.ProviderUnavailable(f"refresh failed: {exc.response_code}") from exc
                raise SessionEnded("the identity provider refused the refresh") from exc
            except OSError as exc:
                raise tokens.ProviderUnavailable(f"refresh failed: {exc}") from exc
            data = session_tokens(answer, data)
            request.session[SESSION_KEY] = data
            try:
                request.session.save()  # now, while the lock is held, for the requests waiting on it
            except UpdateError as exc:
                raise SessionEnded("the session ended meanwhile") from exc
            return data
        finally:
            if held:
                cache.delete(lock)

    def force_logout(self, request, data: dict, reason: str, *, end_keycloak_session: bool = False):
        user = request.user
        membership = _membership(user)
        audit_append(event="auth.logout_forced", actor=user, tenant_id=membership.tenant_id if membership else None,
                     outcome="denied", error_code="session_revoked",
                     data={"method": "oidc", "reason": reason[:200], "sid": data.get("sid", ""),
                           "path": request.path[:500]})
        if end_keycloak_session:  # Keycloak still holds the session: end it there too
            end_provider_session(request)
        else:
            OidcSession.objects.filter(session_key=request.session.session_key).delete()
        logout(request)
        if request.path_info.startswith("/api/"):
            return None  # on as an anonymous caller: the API answers 401 and records the denial
        return HttpResponseRedirect(f"{settings.LOGIN_URL}?{urlencode({'next': request.get_full_path()})}")

    @staticmethod
    def unavailable(request):
        message = "The identity provider did not answer; try again."
        if request.path_info.startswith("/api/"):
            return JsonResponse({"code": ErrorCode.IDENTITY_UNAVAILABLE, "message": message, "detail": None},
                                status=503)
        return HttpResponse(message, status=503, content_type="text/plain")
