"""The Celery application. Tasks live in each app's tasks.py and stay thin."""
import os
from collections.abc import Mapping

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")


class _CelerySettings(Mapping):
    """Django's CELERY_* settings as a plain dict, read once, when Celery first looks at its
    configuration. Celery reads several settings for every message it sends (the engine sends a
    message per ready task: thousands at once for a fan-out), most of them settings left at Celery's
    defaults; read through Django's settings object, each of those misses costs attribute lookups
    through its lazy wrapper and a caught exception, about half of the CPU of sending a message.
    Settings are fixed once the process runs (no test or code changes a CELERY_* setting later)."""

    def __init__(self):
        self._values = None

    def _read(self) -> dict:
        if self._values is None:
            from django.conf import settings

            self._values = {name: getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")}
        return self._values

    def __getitem__(self, key):
        return self._read()[key]

    def __iter__(self):
        return iter(self._read())

    def __len__(self):
        return len(self._read())


app = Celery("gatehouse")
app.config_from_object(_CelerySettings(), namespace="CELERY")
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
