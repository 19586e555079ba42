"""The fan-out benchmark's baseline: a task sent straight to Celery that runs the same command
through the same executor as the engine does (gateway.worker.task_run: submit, wait, collect,
in a work directory removed afterwards), without any of the engine's database bookkeeping.
Loaded into the worker with `--include bench.celery_tasks`."""
from __future__ import annotations

import os
import shutil
import tempfile

from celery import shared_task

_redis = {}


def _counter():
    """One Redis client per process (pool children are forked: never share the parent's)."""
    pid = os.getpid()
    client = _redis.get(pid)
    if client is None:
        import redis

        client = redis.Redis.from_url(raw_local_task.app.conf.broker_url)
        _redis.clear()
        _redis[pid] = client
    return client


@shared_task(name="bench.raw_local_task", acks_late=True, ignore_result=True)
def raw_local_task(counter_key: str, job_key: str, argv: list[str], script: str | None, work_root: str,
                   interval: float) -> str:
    from executors.base import JobRequest, JobState
    from executors.registry import get_executor

    executor = get_executor("local")
    os.makedirs(work_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="raw-", dir=work_root)
    try:
        request = JobRequest(
            job_key=job_key,
            argv=tuple(argv),
            env={},
            workdir=os.path.join(tmp, "job"),
            timeout=None,
            script=script,
            labels={"run_id": "raw", "task_id": job_key, "attempt": "1"},
        )
        handle = executor.submit(request)
        status = executor.wait(handle, timeout=None, interval=interval)
        executor.collect(handle, request)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _counter().incr(counter_key)
    if status.state != JobState.SUCCEEDED:
        _counter().incr(counter_key + ":failed")
    return status.state.value
