"""Celery tasks: thin wrappers that load by id and call the engine. Safe to run twice."""
from celery import shared_task


@shared_task(name="gateway.tasks.execute_task_task", acks_late=True)
def execute_task_task(task_id: int, attempt: int) -> str:
    from .worker import task_execute

    return task_execute(task_id, attempt)


@shared_task(name="gateway.tasks.requeue_task", acks_late=True)
def requeue_task(task_id: int, attempt: int) -> bool:
    from .worker import task_requeue

    return task_requeue(task_id, attempt)


@shared_task(name="gateway.tasks.reconcile_task", acks_late=True)
def reconcile_task() -> dict:
    from .reconcile import reconcile

    return reconcile()


@shared_task(name="gateway.tasks.remote_poll_task", acks_late=True)
def remote_poll_task() -> dict:
    from .remote import remote_poll_if_configured

    return remote_poll_if_configured()


@shared_task(name="gateway.tasks.collect_remote_task", acks_late=True)
def collect_remote_task(task_id: int, attempt: int, status: dict) -> str:
    from .remote import remote_collect

    return remote_collect(task_id, attempt, status)


@shared_task(name="gateway.tasks.cancel_remote_task", acks_late=True)
def cancel_remote_task(task_id: int, attempt: int) -> str:
    from .remote import remote_cancel

    return remote_cancel(task_id, attempt)
