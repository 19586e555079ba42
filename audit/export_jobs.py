"""Signed exports as jobs: requested from the portal, written by a Celery task
(audit.tasks.audit_export_task) through audit.export.audit_export into a directory of its own under
the var directory, packed as one tar.gz, downloaded later by an auditor of the same log.

The rules are the API export's: a tenant auditor exports their tenant's log, a platform auditor any
tenant's or the global log, and only someone cleared for every label in that log (a bundle holds
every entry). A job of another log is not found (404), never forbidden. Progress is kept in the job
row at the start and the end, and in a small file while the entries are written (the export reads
them in one transaction, so the row could not show progress to anyone else until it ends).

Every claim of a job by a worker is a new attempt (`attempt`), written in a directory of its own;
only the current attempt may finish the job. The reconciler (`export_jobs_recover`) sends a QUEUED
job's message again when it seems lost, and gives up a RUNNING attempt that showed no sign of life
(its progress file) for `EXPORT_STALE_SECONDS`: the job is queued again, or FAILED (audited) once
`EXPORT_MAX_ATTEMPTS` attempts were made. A worker given up for dead that finishes late changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway.errors import ErrorCode, Forbidden, GatehouseError, NotFound

from .export import ExportError, audit_export
from .models import AuditExportJob
from .selectors import audit_export_allowed, audit_scope_for_user, is_platform_auditor
from .services import audit_append

log = logging.getLogger(__name__)
State = AuditExportJob.State
OBJECT_TYPE = "audit_export"


def export_root() -> Path:
    return Path(settings.VAR_DIR) / "audit-exports"


def job_dir(job: AuditExportJob) -> Path:
    return export_root() / str(job.id)


def attempt_dir(job: AuditExportJob, attempt: int | None = None) -> Path:
    return job_dir(job) / f"attempt-{job.attempt if attempt is None else attempt}"


def job_file(job: AuditExportJob) -> Path | None:
    if job.state != State.DONE or not job.file_name:
        return None
    return attempt_dir(job) / job.file_name


def _refuse_uncleared(user, tenant) -> None:
    if not audit_export_allowed(user, tenant):
        raise Forbidden(ErrorCode.LABEL_ABOVE_CLEARANCE,
                        "This log holds entries above your clearance; a bundle must hold every entry.")


def export_job_request(*, user, tenant_slug: str | None, since=None, until=None) -> AuditExportJob:
    """Queue an export of the log `user` may read (audit_scope_for_user); refused (403) to an
    auditor not cleared for every label in it. The task is sent after commit."""
    from .tasks import audit_export_task

    tenant = audit_scope_for_user(user, tenant_slug)
    _refuse_uncleared(user, tenant)
    with transaction.atomic():
        job = AuditExportJob.objects.create(tenant=tenant, requested_by=user, since=since, until=until)
        audit_append(event="audit.export_requested", tenant=tenant, actor=user, object_type=OBJECT_TYPE,
                     object_id=str(job.id),
                     data={"tree": "tenant" if tenant else "global", "tenant": tenant.slug if tenant else None,
                           "since": since.isoformat() if since else None,
                           "until": until.isoformat() if until else None})
        job_id = str(job.id)
        transaction.on_commit(lambda: _send(audit_export_task, job_id))
    return job


def _send(task, job_id: str) -> None:
    """After commit: hand the job to the workers; a broker that cannot take it fails the job
    (recorded) instead of leaving it QUEUED for ever or failing the request that already committed."""
    AuditExportJob.objects.filter(id=job_id, state=State.QUEUED).update(sent_at=timezone.now())
    try:
        task.delay(job_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises several kinds for an unreachable broker
        log.error("audit export %s could not be queued: %s", job_id, exc)
        job = AuditExportJob.objects.select_related("tenant", "requested_by").get(id=job_id)
        with transaction.atomic():
            AuditExportJob.objects.filter(id=job_id, state=State.QUEUED).update(
                state=State.FAILED, error_code="queue_unavailable",
                error_message="The export could not be queued; try again.", finished_at=timezone.now())
            audit_append(event="audit.export_failed", tenant=job.tenant, actor=job.requested_by, outcome="error",
                         error_code="queue_unavailable", object_type=OBJECT_TYPE, object_id=job_id,
                         data={"message": str(exc)[:300]})


def export_job_list_for_user(user, tenant) -> list[AuditExportJob]:
    """The jobs of the log `tenant` (None: the global log) the user may read, newest first."""
    jobs = AuditExportJob.objects.filter(tenant=tenant) if tenant is not None else \
        AuditExportJob.objects.filter(tenant__isnull=True)
    return list(jobs.select_related("requested_by", "tenant").order_by("-created_at")[:50])


def export_job_get_for_user(job_id, user) -> AuditExportJob:
    """A job of a log the user may read: their tenant's (auditors), any (platform auditors); else 404.
    Callers reading another tenant's job widen the database scope first (platform auditors)."""
    job = AuditExportJob.objects.select_related("requested_by", "tenant").filter(id=job_id).first()
    if job is None:
        raise NotFound("No such export.")
    if not is_platform_auditor(user):
        own = user.membership.tenant_id
        if job.tenant_id is None or job.tenant_id != own:
            raise NotFound("No such export.")
    return job


def export_job_open_for_download(job_id, user):
    """(job, path) of a finished job's bundle; the clearance rule is checked again now (a lowered
    clearance stops a download of a bundle made earlier). Audited."""
    job = export_job_get_for_user(job_id, user)
    _refuse_uncleared(user, job.tenant)
    if job.state == State.EXPIRED:
        raise GatehouseError(ErrorCode.EXPORT_EXPIRED, "This export's bundle was deleted at the end of its "
                             "retention; request a new export.", status=410)
    path = job_file(job)
    if path is None or not path.is_file():
        raise NotFound("This export has no bundle to download.")
    audit_append(event="audit.export_downloaded", tenant=job.tenant, actor=user, object_type=OBJECT_TYPE,
                 object_id=str(job.id), data={"sha256": job.file_sha256, "size": job.file_size})
    return job, path


def export_job_progress(job: AuditExportJob) -> tuple[int, int | None]:
    """(entries written, entries in the bundle) as far as known now."""
    if job.state == State.RUNNING:
        try:
            data = json.loads((job_dir(job) / "progress.json").read_text())
            if data.get("attempt") in (None, job.attempt):
                return int(data["written"]), int(data["total"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return job.entries_written, job.entries_total


def _write_progress(directory: Path, written: int, total: int, attempt: int | None = None) -> None:
    """The progress of the running attempt, in `directory` (the job's); also its sign of life."""
    tmp = directory / f"progress.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"written": written, "total": total, "attempt": attempt}))
    os.replace(tmp, directory / "progress.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fail(job: AuditExportJob, attempt: int | None, code: str, message: str) -> bool:
    """End the job FAILED (audited), if `attempt` is still the current one (None: any RUNNING or
    QUEUED attempt). Returns whether it did."""
    with transaction.atomic():
        rows = AuditExportJob.objects.filter(id=job.id, state__in=[State.QUEUED, State.RUNNING])
        if attempt is not None:
            rows = rows.filter(state=State.RUNNING, attempt=attempt)
        if not rows.update(state=State.FAILED, error_code=code, error_message=message[:500],
                           finished_at=timezone.now()):
            return False
        audit_append(event="audit.export_failed", tenant=job.tenant, actor=job.requested_by, outcome="error",
                     error_code=code, object_type=OBJECT_TYPE, object_id=str(job.id),
                     data={"message": message[:300], "attempt": job.attempt if attempt is None else attempt})
    return True


def export_job_claim(job_id) -> AuditExportJob | None:
    """QUEUED -> RUNNING as a new attempt; None when the job is not QUEUED (a repeated message)."""
    with transaction.atomic():
        job = AuditExportJob.objects.select_for_update().filter(id=job_id, state=State.QUEUED).first()
        if job is None:
            return None
        job.state, job.started_at, job.attempt = State.RUNNING, timezone.now(), job.attempt + 1
        job.save(update_fields=["state", "started_at", "attempt"])
    return AuditExportJob.objects.select_related("tenant", "requested_by").get(id=job.id)


def export_job_write(job: AuditExportJob) -> str:
    """Write the claimed attempt's bundle and finish the job, unless the attempt was given up
    meanwhile ("SUPERSEDED": its files are removed, the job is left to the current attempt)."""
    attempt = job.attempt
    directory = attempt_dir(job, attempt)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    beat = job_dir(job)
    _write_progress(beat, 0, 0, attempt)
    bundle = directory / "bundle"
    try:
        summary = audit_export(bundle, tenant=job.tenant, since=job.since, until=job.until, actor=job.requested_by,
                               progress=lambda written, total: _write_progress(beat, written, total, attempt))
        _write_progress(beat, summary["entries"], summary["end"] - summary["begin"], attempt)
        name = f"audit-bundle-{job.tenant.slug if job.tenant else 'global'}-{str(job.id)[:8]}.tar.gz"
        archive = directory / name
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(bundle, arcname="bundle")
        shutil.rmtree(bundle)
        finished = AuditExportJob.objects.filter(id=job.id, state=State.RUNNING, attempt=attempt).update(
            state=State.DONE, entries_written=summary["entries"], entries_total=summary["end"] - summary["begin"],
            file_name=name, file_size=archive.stat().st_size, file_sha256=_sha256(archive),
            finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001 - any failure ends the attempt as FAILED, recorded
        code = exc.code if isinstance(exc, ExportError) else "export_failed"
        message = str(exc) if isinstance(exc, ExportError) else "The export could not be written."
        log.exception("audit export %s (attempt %s) failed", job.id, attempt)
        shutil.rmtree(directory, ignore_errors=True)
        return State.FAILED if _fail(job, attempt, code, message) else "SUPERSEDED"
    if not finished:
        log.warning("audit export %s: attempt %s was given up meanwhile; its bundle is dropped", job.id, attempt)
        shutil.rmtree(directory, ignore_errors=True)
        return "SUPERSEDED"
    return State.DONE


def export_job_run(job_id) -> str:
    """Write the job's bundle (the Celery task's body). Idempotent: a job no longer QUEUED is left
    alone, so a repeated message does nothing. Returns the job's final state."""
    job = export_job_claim(job_id)
    if job is None:
        job = AuditExportJob.objects.filter(id=job_id).first()
        return job.state if job else "MISSING"
    return export_job_write(job)


def _last_sign_of_life(job: AuditExportJob):
    """When the running attempt last showed it was alive: its start, or its progress file."""
    latest = job.started_at or job.created_at
    try:
        path = job_dir(job) / "progress.json"
        if json.loads(path.read_text()).get("attempt") == job.attempt:
            from datetime import datetime, timezone as dt_timezone

            latest = max(latest, datetime.fromtimestamp(path.stat().st_mtime, tz=dt_timezone.utc))
    except (OSError, ValueError, AttributeError):
        pass
    return latest


def export_jobs_recover(now=None) -> int:
    """The reconciler's part (gateway/reconcile.py): lost messages of QUEUED jobs sent again;
    RUNNING attempts without a sign of life for EXPORT_STALE_SECONDS queued again, or FAILED
    (audited) when EXPORT_MAX_ATTEMPTS were made. Returns how many jobs it acted on."""
    from datetime import timedelta

    from .tasks import audit_export_task

    conf = settings.GATEHOUSE_AUDIT
    now = now or timezone.now()
    acted = 0
    resend_before = now - timedelta(seconds=float(conf.get("EXPORT_RESEND_SECONDS", 120.0)))
    stale = timedelta(seconds=float(conf.get("EXPORT_STALE_SECONDS", 900.0)))
    max_attempts = int(conf.get("EXPORT_MAX_ATTEMPTS", 3))
    queued = list(AuditExportJob.objects.filter(state=State.QUEUED, created_at__lt=resend_before)
                  .filter(Q(sent_at__isnull=True) | Q(sent_at__lt=resend_before)).values_list("id", flat=True)[:100])
    for job_id in queued:
        _send(audit_export_task, str(job_id))
        acted += 1
    running = AuditExportJob.objects.filter(state=State.RUNNING, started_at__lt=now - stale) \
        .select_related("tenant", "requested_by")[:100]
    for job in list(running):
        if _last_sign_of_life(job) >= now - stale:
            continue
        if job.attempt >= max_attempts:
            if _fail(job, job.attempt, "export_abandoned",
                     f"The export was given up after {job.attempt} attempts without finishing."):
                shutil.rmtree(job_dir(job), ignore_errors=True)
                acted += 1
            continue
        with transaction.atomic():
            requeued = AuditExportJob.objects.filter(id=job.id, state=State.RUNNING, attempt=job.attempt).update(
                state=State.QUEUED)
            if requeued:
                job_id = str(job.id)
                transaction.on_commit(lambda job_id=job_id: _send(audit_export_task, job_id))
        if requeued:
            shutil.rmtree(attempt_dir(job), ignore_errors=True)
            log.warning("audit export %s: attempt %s showed no sign of life; queued again", job.id, job.attempt)
            acted += 1
    return acted


def export_jobs_expire(now=None) -> int:
    """The reconciler's part (gateway/reconcile.py): DONE jobs whose bundle was written more than
    EXPORT_RETENTION_SECONDS ago become EXPIRED (audited, one transaction per job) and, after
    commit, their directory is deleted. Returns how many jobs expired (at most 100 a round)."""
    from datetime import timedelta

    retention = float(settings.GATEHOUSE_AUDIT.get("EXPORT_RETENTION_SECONDS", 0) or 0)
    if retention <= 0:
        return 0
    now = now or timezone.now()
    due = AuditExportJob.objects.filter(state=State.DONE, finished_at__lt=now - timedelta(seconds=retention)) \
        .select_related("tenant", "requested_by").order_by("finished_at")[:100]
    expired = 0
    for job in list(due):
        with transaction.atomic():
            if not AuditExportJob.objects.filter(id=job.id, state=State.DONE).update(state=State.EXPIRED):
                continue  # expired meanwhile by another reconciler
            audit_append(event="audit.export_expired", tenant=job.tenant, object_type=OBJECT_TYPE,
                         object_id=str(job.id), data={"sha256": job.file_sha256, "size": job.file_size,
                                                      "finished_at": job.finished_at.isoformat()})
            directory = job_dir(job)
            transaction.on_commit(lambda directory=directory: shutil.rmtree(directory, ignore_errors=True))
        expired += 1
    return expired
