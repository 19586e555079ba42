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
