"""Links between Keycloak and local accounts."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class ExternalIdentity(models.Model):
    """The Keycloak subject behind a local user. Keyed by (issuer, subject), never by user name, so a
    user renamed in Keycloak stays the same account here, and a new Keycloak user who picks a name an
    old local account had does not inherit it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identity")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="identity_unique_subject")]


class OidcSession(models.Model):
    """A portal session opened by an OpenID Connect login: Keycloak's session id (`sid`) -> our session
    key, so a back-channel logout can end the matching sessions."""

    sid = models.CharField(max_length=255, db_index=True)
    subject = models.CharField(max_length=255, db_index=True)
    session_key = models.CharField(max_length=40, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)


class LogoutTokenSeen(models.Model):
    """`jti` of every back-channel logout token accepted, so a replayed one is refused."""

    jti = models.CharField(max_length=255, unique=True)
    expires_at = models.DateTimeField(db_index=True)
