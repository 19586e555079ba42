"""A finished export's bundle is deleted at the end of its retention: the reconciler marks the job
EXPIRED (audited, once) and removes its files; a younger bundle is left alone, retention 0 keeps
every bundle, and a download of an expired job is refused with 410 export_expired, not recorded as
a download."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.export_jobs import attempt_dir, job_dir, job_file
from audit.models import AuditEntry, AuditExportJob
from gateway.reconcile import reconcile

pytestmark = pytest.mark.django_db


@pytest.fixture
def exports(settings, tmp_path, make_tenant, make_member):
    settings.VAR_DIR = tmp_path / "var"
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "EXPORT_RETENTION_SECONDS": 7 * 86400.0}
    tenant = make_tenant("ret-home")
    auditor = make_member(tenant, "auditor", username="ret-auditor")

    def done(age: timedelta) -> AuditExportJob:
        """A DONE job whose bundle was written `age` ago, with its file on disk."""
        job = AuditExportJob.objects.create(tenant=tenant, requested_by=auditor)
        name = f"audit-bundle-ret-home-{str(job.id)[:8]}.tar.gz"
        AuditExportJob.objects.filter(id=job.id).update(
            state="DONE", attempt=1, file_name=name, file_size=5, file_sha256="0" * 64,
            started_at=timezone.now() - age, finished_at=timezone.now() - age)
        job = AuditExportJob.objects.get(id=job.id)
        attempt_dir(job).mkdir(parents=True)
        job_file(job).write_bytes(b"bytes")
        return job

    return {"done": done, "auditor": auditor, "settings": settings}


def _reconcile(capture) -> dict:
    """One reconciler round, its after-commit work run as a commit would run it."""
    with capture(execute=True):
        return reconcile()


def _expired_entries(job) -> int:
    return AuditEntry.objects.filter(event="audit.export_expired", object_id=str(job.id)).count()


def test_an_old_bundle_is_deleted_and_its_job_expires_once_audited(exports, django_capture_on_commit_callbacks):
    old = exports["done"](timedelta(days=8))
    young = exports["done"](timedelta(days=1))

    assert _reconcile(django_capture_on_commit_callbacks)["audit_exports_expired"] == 1
    old.refresh_from_db()
    assert old.state == "EXPIRED" and not job_dir(old).exists()
    entry = AuditEntry.objects.get(event="audit.export_expired", object_id=str(old.id))
    assert entry.tenant_id == old.tenant_id and entry.body["data"]["sha256"] == old.file_sha256

    # The younger bundle is untouched: still DONE, its file there, nothing recorded.
    young.refresh_from_db()
    assert young.state == "DONE" and job_file(young).is_file() and _expired_entries(young) == 0

    # A second round has nothing to do and records nothing more.
    assert _reconcile(django_capture_on_commit_callbacks)["audit_exports_expired"] == 0
    assert _expired_entries(old) == 1


def test_retention_zero_keeps_every_bundle(exports, django_capture_on_commit_callbacks):
    settings = exports["settings"]
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "EXPORT_RETENTION_SECONDS": 0}
    old = exports["done"](timedelta(days=400))
    assert _reconcile(django_capture_on_commit_callbacks)["audit_exports_expired"] == 0
    old.refresh_from_db()
    assert old.state == "DONE" and job_file(old).is_file() and _expired_entries(old) == 0


def test_an_expired_export_is_refused_with_410_and_no_download_is_recorded(exports, django_capture_on_commit_callbacks):
    old = exports["done"](timedelta(days=8))
    _reconcile(django_capture_on_commit_callbacks)
    client = Client()
    client.force_login(exports["auditor"])
    response = client.get(f"/audit/exports/{old.id}/download/")
    assert response.status_code == 410
    assert "export_expired" in response.content.decode()
    assert not AuditEntry.objects.filter(event="audit.export_downloaded", object_id=str(old.id)).exists()
    page = client.get(f"/audit/exports/{old.id}/").content.decode()
    assert 'data-export-state="EXPIRED"' in page and "retention" in page and "/download/" not in page
