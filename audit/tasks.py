"""Celery tasks of the audit app (thin: load by id, call the service)."""
from celery import shared_task


@shared_task(name="audit.tasks.audit_export_task", acks_late=True)
def audit_export_task(job_id: str) -> str:
    from .export_jobs import export_job_run

    return export_job_run(job_id)
