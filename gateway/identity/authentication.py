"""DRF authentication for the API.

GatehouseAuthentication reads GATEHOUSE_AUTH["MODE"] on each request: "oidc" validates Keycloak bearer
tokens (KeycloakBearerAuthentication), "dev" accepts the dev login's API tokens (DevTokenAuthentication),
and never both. (DRF binds authentication classes to views when they are imported; reading the mode per
request keeps one settings entry right in either mode.)
"""
from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, TokenAuthentication, get_authorization_header

from .devlogin import dev_login_allowed

# rest_framework.views imports this module while it is itself being imported (DEFAULT_AUTHENTICATION_CLASSES),
# so what imports rest_framework.views (gateway.errors, and through it the rest) is imported on first use.

REALM_NAME = "gatehouse"


class KeycloakBearerAuthentication(BaseAuthentication):
    """`Authorization: Bearer <Keycloak access token>`: signature, issuer, audience, client, type and
    lifetime checked (tokens.access_token_claims), then introspected so a disabled user or a removed role
    counts from the very next request, then mapped to the local user and membership (sync.py). A valid
    token whose user belongs to no known tenant is refused with 403 no_tenant."""

    keyword = b"bearer"

    def authenticate(self, request):
        from gateway.errors import IdentityUnavailable

        from . import tokens
        from .sync import principal_from_claims, user_for_principal

        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            self._refuse(request, "malformed Authorization header")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            self._refuse(request, "malformed token")
        try:
            claims = tokens.access_token_claims(token)
            current = tokens.introspect(token, claims)
        except tokens.TokenRefused as exc:
            self._refuse(request, exc.reason)
        except tokens.ProviderUnavailable as exc:
            raise IdentityUnavailable() from exc
        user = user_for_principal(principal_from_claims({**claims, **current}))
        if not user.is_active:
            self._refuse(request, "account disabled")
        return user, claims

    @staticmethod
    def _refuse(request, reason: str):
        from gateway.errors import InvalidToken

        request._gatehouse_token_error = reason
        raise InvalidToken(f"Bearer token refused: {reason}.")

    def authenticate_header(self, request):
        reason = getattr(request, "_gatehouse_token_error", None)
        if reason is None:
            return f'Bearer realm="{REALM_NAME}"'
        reason = reason.replace('"', "'")
        return f'Bearer realm="{REALM_NAME}", error="invalid_token", error_description="{reason}"'


class DevTokenAuthentication(TokenAuthentication):
    """The dev login's API tokens (rest_framework.authtoken): only with DEBUG on or under the test profile."""

    def authenticate(self, request):
        if not dev_login_allowed():
            return None
        return super().authenticate(request)


class GatehouseAuthentication(BaseAuthentication):
    def _delegate(self) -> BaseAuthentication:
        from .conf import oidc_enabled

        return KeycloakBearerAuthentication() if oidc_enabled() else DevTokenAuthentication()

    def authenticate(self, request):
        return self._delegate().authenticate(request)

    def authenticate_header(self, request):
        return self._delegate().authenticate_header(request)
