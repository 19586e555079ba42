"""The Celery application. Tasks live in each app's tasks.py and stay thin."""
import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

app = Celery("gatehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_reconciler(sender, **kwargs):
    from django.conf import settings

    interval = settings.GATEHOUSE_ENGINE["RECONCILE_INTERVAL_SECONDS"]
    sender.add_periodic_task(interval, sender.signature("gateway.tasks.reconcile_task"), name="reconcile")
    poll = settings.GATEHOUSE_ENGINE.get("REMOTE_POLL_SECONDS", 0)
    if poll:  # the remote-job poller; a round with no slurm or batch backend configured is one query
        sender.add_periodic_task(poll, sender.signature("gateway.tasks.remote_poll_task"), name="remote-poll")


@worker_init.connect
@worker_process_init.connect
def _system_scope(**kwargs):
    """A worker acts for every tenant: its connections see them all under row-level security
    (gateway/dbscope.py), whatever GATEHOUSE_DB_SCOPE says. The main process and each pool child."""
    from gateway import dbscope

    dbscope.set_process_scope(dbscope.SYSTEM)


@task_prerun.connect
def _before_task(task_id=None, **kwargs):
    """Drop a connection that is broken or older than CONN_MAX_AGE (as Django does per request),
    and bind the audit context of this task: the worker host and the Celery task id."""
    from django.db import close_old_connections

    from audit import context

    close_old_connections()
    context.bind(context.Where(task_id=task_id or "", auth_method="worker"))


@task_postrun.connect
def _after_task(**kwargs):
    from django.db import close_old_connections

    from audit import context

    close_old_connections()
    context.bind(context.Where())
