"""Audit events. This is the plain record; the hash chain, signed checkpoints and export build on it."""
from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True)
    tenant = models.ForeignKey("gateway.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    event = models.CharField(max_length=64)  # from audit.events.EVENTS
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, default="success")
    data = models.JSONField(default=dict)

    class Meta:
        indexes = [models.Index(fields=["tenant", "at"])]
