"""Each tenant's compute backends: what `backend:` in a task names, where it is, and what it may hold.

A tenant admin replaces the whole configuration at once (a YAML document, executors/backends.py):
`BackendConfiguration` keeps the document as written, `TenantBackend` one row per backend for
placement (gateway/placement.py). A tenant without a configuration has the built-in `local`
backend. Credentials are never here: `BackendCredentialSet` records only which keys are set and
when; the values live in Vault or the local encrypted store (executors/credentials.py).
"""
from __future__ import annotations

from django.conf import settings
from django.db import models


class BackendKind(models.TextChoices):
    LOCAL = "local"
    SLURM = "slurm"
    BATCH = "batch"


class BackendConfiguration(models.Model):
    """The tenant's backend configuration as the tenant admin wrote it (returned by GET as is)."""

    tenant = models.OneToOneField("gateway.Tenant", on_delete=models.PROTECT, related_name="+")
    source = models.TextField()
    digest = models.CharField(max_length=64)  # SHA-256 of the source
    revision = models.IntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")


class TenantBackend(models.Model):
    """One backend of a tenant. `max_classification` is the canonical form of the highest label it
    may host (gateway.labels.Label.canonical: `v1|<policy>|<banner>`); `config` says where it is
    (cluster, login node, queue, job definition, region...) and never holds a credential."""

    tenant = models.ForeignKey("gateway.Tenant", on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=BackendKind.choices)
    config = models.JSONField(default=dict)
    max_classification = models.CharField(max_length=1100)
    tags = models.JSONField(default=list)
    capacity = models.PositiveIntegerField(null=True, blank=True)  # tasks at once; None: no limit
    preference = models.IntegerField(default=0)  # higher first, among backends a task may use
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="backend_unique_name_per_tenant")]


class BackendCredentialSet(models.Model):
    """Which credential keys a backend has and when they were set: never a value."""

    tenant = models.ForeignKey("gateway.Tenant", on_delete=models.PROTECT, related_name="+")
    backend = models.CharField(max_length=64)
    keys = models.JSONField(default=list)
    store = models.CharField(max_length=16)  # "vault" or "local"
    version = models.IntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "backend"], name="credential_set_once_per_backend")]
