"""Signed exports from the portal: requested by an auditor, written by a real Celery worker process
(PostgreSQL as the application role, Redis), followed through the status partial, downloaded and
checked with the offline verifier. Refusals (another tenant's auditor, an auditor not cleared for
every label in the log, a missing CSRF token) are audited and leave no job, file or download entry."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile

import pytest
from django.test import Client

from audit.export_jobs import _write_progress, export_job_request, job_dir
from audit.models import AuditEntry, AuditExportJob
from gateway.services import run_submit
from tests.integration.conftest import processes, shared_artefacts, wait_until  # noqa: F401 - fixtures

from .conftest import WORKFLOW


@pytest.fixture
def export_world(processes, settings, tmp_path, make_tenant, make_member):  # noqa: F811
    """A tenant whose log holds SECRET entries, its auditors (cleared TOP SECRET and CONFIDENTIAL),
    another tenant's auditor, and a worker sharing the test's var directory and audit signing key."""
    var = tmp_path / "var"
    settings.VAR_DIR = var
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "witness")}
    from audit.keys import forget_signer
    from audit.witness import _witness

    forget_signer()
    _witness.cache_clear()
    home, away = make_tenant("exp-home"), make_tenant("exp-away")
    people = {
        "auditor": make_member(home, "auditor", username="exp-auditor"),
        "low": make_member(home, "auditor", username="exp-low", clearance="CONFIDENTIAL"),
        "away": make_member(away, "auditor", username="exp-away-auditor"),
        "author": make_member(home, "author", username="exp-author"),
    }
    run_submit(tenant=home, actor=people["author"], source=WORKFLOW)  # SECRET entries in home's log
    processes.worker("export-worker", extra_env={
        "GATEHOUSE_VAR_DIR": str(var), "GATEHOUSE_AUDIT_KEY_FILE": str(tmp_path / "audit.key"),
        "GATEHOUSE_AUDIT_CHECKPOINT_STORE": str(tmp_path / "witness")})
    yield {"home": home, "away": away, "people": people, "procs": processes}
    forget_signer()
    _witness.cache_clear()


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.integration
def test_an_auditor_exports_follows_progress_downloads_and_the_bundle_verifies(export_world, tmp_path):
    people = export_world["people"]
    client = _client(people["auditor"])
    page = client.get("/audit/exports/").content.decode()
    assert 'action="/audit/exports/"' in page and "No export of this log yet." in page
    assert page.count('aria-current="page"') == 1 and 'href="/audit/exports/" aria-current="page"' in page

    response = client.post("/audit/exports/", {"since": "", "until": ""})
    assert response.status_code == 302
    job = AuditExportJob.objects.get()
    assert response["Location"] == f"/audit/exports/{job.id}/"
    assert job.tenant == export_world["home"] and job.requested_by == people["auditor"]
    assert AuditEntry.objects.filter(event="audit.export_requested", object_id=str(job.id),
                                     actor=people["auditor"]).exists()
    assert 'data-poll-src="/audit/exports/' in client.get(f"/audit/exports/{job.id}/").content.decode()

    seen = set()

    def finished():
        html = client.get(f"/audit/exports/{job.id}/partial/").content.decode()
        seen.add(html.split('data-export-state="')[1].split('"')[0])
        return "data-poll-continue" not in html and html

    html = wait_until(finished, timeout=90, interval=0.3, what="the export job to finish")
    job.refresh_from_db()
    assert job.state == "DONE", (job.error_code, job.error_message, export_world["procs"].log("export-worker")[-2000:])
    assert seen <= {"QUEUED", "RUNNING", "DONE"} and "DONE" in seen
    assert job.entries_total == job.entries_written > 0 and (f"{job.entries_written}</span> of <span data-export-total>{job.entries_total}<" in html)
    assert f'href="/audit/exports/{job.id}/download/"' in html
    assert AuditEntry.objects.filter(event="audit.exported", actor=people["auditor"]).exists()  # by the worker

    before = AuditEntry.objects.filter(event="audit.export_downloaded").count()
    download = client.get(f"/audit/exports/{job.id}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/gzip"
    assert download["Content-Disposition"].startswith("attachment") and "no-store" in download["Cache-Control"]
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == job.file_sha256 == download["X-Content-SHA256"]
    assert AuditEntry.objects.filter(event="audit.export_downloaded").count() == before + 1
    out = tmp_path / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    verified = subprocess.run([sys.executable, "-m", "audit.verifier", str(out / "bundle")],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK" in verified.stdout

    # The list of this log's exports links it.
    assert f'href="/audit/exports/{job.id}/download/"' in client.get("/audit/exports/").content.decode()

    # Another tenant's auditor: not found, audited, no download recorded.
    away = _client(people["away"])
    denied = AuditEntry.objects.filter(event="access.denied", actor=people["away"]).count()
    for url in (f"/audit/exports/{job.id}/", f"/audit/exports/{job.id}/partial/", f"/audit/exports/{job.id}/download/"):
        assert away.get(url).status_code == 404, url
    assert AuditEntry.objects.filter(event="access.denied", actor=people["away"]).count() == denied + 3
    assert not AuditEntry.objects.filter(event="audit.export_downloaded", actor=people["away"]).exists()
    assert str(job.id) not in away.get("/audit/exports/").content.decode()

    # An auditor of the tenant not cleared for every label: refused like the API's export.
    low = _client(people["low"])
    assert low.get(f"/audit/exports/{job.id}/download/").status_code == 403
    assert not AuditEntry.objects.filter(event="audit.export_downloaded", actor=people["low"]).exists()
    response = low.post("/audit/exports/", {})
    assert response.status_code == 403 and b"label_above_clearance" in response.content
    assert AuditExportJob.objects.count() == 1
    assert AuditEntry.objects.filter(event="access.denied", actor=people["low"],
                                     body__error="label_above_clearance").count() == 2


@pytest.mark.integration
def test_an_export_request_without_the_csrf_token_is_refused(export_world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(export_world["people"]["auditor"])
    assert client.post("/audit/exports/", {}).status_code == 403
    assert not AuditExportJob.objects.exists()
    assert AuditEntry.objects.filter(event="access.denied", body__error="csrf_failed").exists()


@pytest.mark.django_db
def test_the_status_partial_shows_progress_while_running(make_tenant, make_member, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    tenant = make_tenant("progress")
    auditor = make_member(tenant, "auditor", username="progress-auditor")
    job = export_job_request(user=auditor, tenant_slug=None)
    client = _client(auditor)
    html = client.get(f"/audit/exports/{job.id}/partial/").content.decode()
    assert 'data-export-state="QUEUED"' in html and "data-poll-continue" in html and "download" not in html
    AuditExportJob.objects.filter(id=job.id).update(state="RUNNING")
    job_dir(job).mkdir(parents=True)
    _write_progress(job_dir(job), 20000, 80000)
    html = client.get(f"/audit/exports/{job.id}/partial/").content.decode()
    assert "20000</span> of <span data-export-total>80000" in html and 'value="25"' in html
    AuditExportJob.objects.filter(id=job.id).update(state="FAILED", error_code="log_incomplete",
                                                    error_message="the log has no hash <here>")
    html = client.get(f"/audit/exports/{job.id}/partial/").content.decode()
    assert "data-poll-continue" not in html and "the log has no hash &lt;here&gt;" in html
    assert client.get(f"/audit/exports/{job.id}/download/").status_code == 404


@pytest.mark.django_db
def test_a_broker_that_cannot_take_the_job_fails_it_recorded(make_tenant, make_member, settings, tmp_path):
    """A real Celery client against a port where no broker listens: the job ends FAILED, audited,
    instead of staying QUEUED with nobody to run it."""
    from celery import Celery

    from audit.export_jobs import _send

    settings.VAR_DIR = tmp_path
    tenant = make_tenant("nobroker")
    auditor = make_member(tenant, "auditor", username="nobroker-auditor")
    job = export_job_request(user=auditor, tenant_slug=None)
    dead = Celery("dead", broker="redis://127.0.0.1:9/0", set_as_current=False)
    dead.conf.task_publish_retry = False
    dead.conf.broker_connection_retry = False
    dead.conf.broker_connection_max_retries = 0
    task = dead.task(name="audit.tasks.audit_export_task", shared=False)(lambda job_id: job_id)
    _send(task, str(job.id))
    job.refresh_from_db()
    assert job.state == "FAILED" and job.error_code == "queue_unavailable"
    assert AuditEntry.objects.filter(event="audit.export_failed", object_id=str(job.id), outcome="error").exists()
    html = _client(auditor).get(f"/audit/exports/{job.id}/partial/").content.decode()
    assert "could not be queued" in html and "data-poll-continue" not in html
