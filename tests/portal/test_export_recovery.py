"""Export jobs survive lost messages and dead workers: the reconciler sends a lost message again,
gives up an attempt that shows no sign of life and queues the job again (a real Celery worker then
writes it), fails the job (audited) once its attempts are spent, and a worker given up for dead that
finishes late changes nothing."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.export_jobs import attempt_dir, export_job_write, job_dir, job_file
from audit.models import AuditEntry, AuditExportJob
from gateway.reconcile import reconcile
from tests.integration.conftest import processes, shared_artefacts, wait_until  # noqa: F401 - fixtures

from .test_exports import export_world  # noqa: F401 - fixture

LONG_AGO = timedelta(hours=2)


def _job(world, *, state, attempt=0, sent_at=None) -> AuditExportJob:
    """A job of the home tenant's log as a worker left it (state, attempt), made long ago."""
    job = AuditExportJob.objects.create(tenant=world["home"], requested_by=world["people"]["auditor"])
    started = timezone.now() - LONG_AGO if state == "RUNNING" else None
    AuditExportJob.objects.filter(id=job.id).update(state=state, attempt=attempt, started_at=started,
                                                    created_at=timezone.now() - LONG_AGO, sent_at=sent_at)
    return AuditExportJob.objects.select_related("tenant", "requested_by").get(id=job.id)


def _finished(job_id):
    job = AuditExportJob.objects.get(id=job_id)
    return job if job.state in ("DONE", "FAILED") else None


@pytest.mark.integration
def test_a_dead_attempt_is_given_up_the_next_writes_the_bundle_and_the_late_one_changes_nothing(export_world):
    stale = _job(export_world, state="RUNNING", attempt=1)  # claimed by a worker that died
    attempt_dir(stale, 1).mkdir(parents=True)
    (attempt_dir(stale, 1) / "half-written").write_text("x")

    counts = reconcile()
    assert counts["audit_exports"] == 1
    assert not attempt_dir(stale, 1).exists()
    job = wait_until(lambda: _finished(stale.id), timeout=90, interval=0.3, what="the export to be written again")
    assert (job.state, job.attempt) == ("DONE", 2), (job.error_code, job.error_message)
    assert job_file(job).is_file()

    # The worker given up for dead comes back and finishes its attempt: nothing changes.
    before = (job.file_name, job.file_sha256, job.finished_at)
    assert export_job_write(stale) == "SUPERSEDED"
    job.refresh_from_db()
    assert (job.state, job.attempt, job.file_name, job.file_sha256, job.finished_at) == ("DONE", 2, *before)
    assert job_file(job).is_file() and not attempt_dir(stale, 1).exists()
    assert not AuditEntry.objects.filter(event="audit.export_failed", object_id=str(job.id)).exists()


@pytest.mark.integration
def test_an_attempt_that_still_shows_progress_is_not_given_up(export_world):
    job = _job(export_world, state="RUNNING", attempt=1)
    job_dir(job).mkdir(parents=True)
    (job_dir(job) / "progress.json").write_text('{"written": 10000, "total": 90000, "attempt": 1}')  # just now
    assert reconcile()["audit_exports"] == 0
    job.refresh_from_db()
    assert (job.state, job.attempt) == ("RUNNING", 1)


@pytest.mark.integration
def test_an_export_whose_attempts_are_spent_fails_audited(export_world):
    job = _job(export_world, state="RUNNING", attempt=3)
    assert reconcile()["audit_exports"] == 1
    job.refresh_from_db()
    assert (job.state, job.error_code, job.attempt) == ("FAILED", "export_abandoned", 3)
    failed = AuditEntry.objects.get(event="audit.export_failed", object_id=str(job.id))
    assert failed.outcome == "error" and failed.body["error"] == "export_abandoned"
    assert reconcile()["audit_exports"] == 0  # nothing more to do: no fourth attempt
    job.refresh_from_db()
    assert (job.state, job.attempt) == ("FAILED", 3)


@pytest.mark.integration
def test_a_lost_message_is_sent_again_and_a_recent_one_is_not(export_world):
    lost = _job(export_world, state="QUEUED", sent_at=timezone.now() - LONG_AGO)
    waiting = _job(export_world, state="QUEUED", sent_at=timezone.now())  # sent just now, maybe still queued
    assert reconcile()["audit_exports"] == 1
    job = wait_until(lambda: _finished(lost.id), timeout=90, interval=0.3, what="the lost export to be written")
    assert (job.state, job.attempt) == ("DONE", 1)
    waiting.refresh_from_db()
    assert (waiting.state, waiting.attempt) == ("QUEUED", 0)  # its message was never sent: nobody ran it
