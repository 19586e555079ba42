"""Sending ready tasks to workers, always after commit.

The dispatcher is a setting, like Django's email backends: Celery in every real deployment;
a recording dispatcher that keeps the messages in memory for tests that drive the engine
step by step in an order they choose.

The dispatch window: of the tasks readied together (a fan-out's thousands), the first
DISPATCH_WINDOW in id order get a message; the rest are *held*: QUEUED at attempt 1 like them,
with their history and audit entries, but no message. A worker that has run a task claims the
run's held tasks next, one by one, for up to DRAIN_SECONDS (gateway/worker.py), then sends a
message for one more (`dispatch_held`) and takes its next message from the queue. A message's
claim sends one held task a message in its place, so the run keeps its window of messages queued
while tasks are held: a worker that becomes free finds one, and a run of long tasks spreads over
every free worker at once, as with a message per task. So a fan-out of short tasks costs tens of
messages instead of one per task (a message's trip through the broker and the worker's main
process cost about as much CPU as the engine's own bookkeeping of a no-op task), and other runs'
messages are served between one drain and the next instead of after the whole fan-out.
A held task nobody claims (every worker draining its run died) is sent by the reconciler after
DISPATCH_TIMEOUT, as a lost message is.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from contextlib import nullcontext
from functools import lru_cache

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

Message = tuple[int, int]  # (task instance id, attempt)


#: Broker commands per round trip when many messages are sent at once (kombu's publish batch).
SEND_BATCH = 100


def send_many(task, arguments: list[tuple]) -> None:
    """`task.apply_async(args)` for each of `arguments`, through one producer and, where the broker's
    transport can (Redis), in pipelined batches of SEND_BATCH commands (kombu's Producer.batch): a
    fan-out of thousands of messages costs tens of round trips to the broker, not thousands, and half
    the CPU. A batch whose delivery is uncertain (kombu's BatchPublishError: the connection failed
    during its pipeline) is sent again message by message with Celery's retry policy: a message
    delivered twice is harmless (the claim runs an attempt at most once; the second finds it taken)."""
    from kombu import exceptions

    if not arguments:
        return
    app = task.app
    with app.producer_or_acquire() as producer:
        # The task's queue is declared once for the batch, not once per message (what Celery
        # does when not told otherwise: kombu then copies and binds the queue for every message).
        route = app.amqp.router.route({}, task.name, None, None, task)
        queue = route.get("queue")
        if queue is not None and not isinstance(queue, str):
            producer.maybe_declare(queue)
        batch = getattr(producer, "batch", None)  # kombu 5.7+; before it, one round trip per message
        uncertain = getattr(exceptions, "BatchPublishError", ())
        try:
            with batch(max_size=SEND_BATCH) if batch is not None else nullcontext():
                for args in arguments:
                    task.apply_async(args, producer=producer, declare=[])
        except uncertain:
            for args in arguments:
                task.apply_async(args, producer=producer, declare=[])


class CeleryDispatcher:
    def send(self, messages: list[Message]) -> None:
        from .tasks import execute_task_task

        # One producer for the whole batch, pipelined (a fan-out can be thousands of messages).
        send_many(execute_task_task, [(task_id, attempt) for task_id, attempt in messages])

    def send_retry(self, task_id: int, attempt: int, countdown: float) -> None:
        from .tasks import requeue_task

        requeue_task.apply_async((task_id, attempt), countdown=max(0.0, countdown))

    def send_collect(self, task_id: int, attempt: int, status: dict) -> None:
        from .tasks import collect_remote_task

        collect_remote_task.apply_async((task_id, attempt, status))

    def send_cancel(self, task_id: int, attempt: int) -> None:
        from .tasks import cancel_remote_task

        cancel_remote_task.apply_async((task_id, attempt))


class RecordingDispatcher:
    """Keeps messages in memory; tests pop them and run them in any order."""

    lock = threading.Lock()
    sent: list[Message] = []
    retries: list[tuple[int, int, float]] = []
    collects: list[tuple[int, int, dict]] = []
    cancels: list[tuple[int, int]] = []

    def send(self, messages: list[Message]) -> None:
        with self.lock:
            self.sent.extend(messages)

    def send_retry(self, task_id: int, attempt: int, countdown: float) -> None:
        with self.lock:
            self.retries.append((task_id, attempt, countdown))

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.sent.clear()
            cls.retries.clear()
            cls.collects.clear()
            cls.cancels.clear()

    def send_collect(self, task_id: int, attempt: int, status: dict) -> None:
        with self.lock:
            self.collects.append((task_id, attempt, status))

    def send_cancel(self, task_id: int, attempt: int) -> None:
        with self.lock:
            self.cancels.append((task_id, attempt))


@lru_cache(maxsize=4)
def _dispatcher(path: str):
    return import_string(path)()


def get_dispatcher():
    return _dispatcher(settings.GATEHOUSE_ENGINE["DISPATCHER"])


def dispatch_window() -> int:
    """How many of the tasks readied together are sent as messages (0: all of them); the rest are
    held, and the workers that run the sent ones claim them next (gateway/worker.py)."""
    return int(settings.GATEHOUSE_ENGINE["DISPATCH_WINDOW"])


def held_tasks(run_id):
    """The run's held tasks, first first, locked as read; a row another transaction holds is
    skipped (its claim or its message is under way there). The ORM's form of worker_sql's."""
    from .choices import TaskState
    from .models import TaskInstance

    return (TaskInstance.objects.select_for_update(skip_locked=True)
            .filter(run_id=run_id, state=TaskState.QUEUED, held=True).order_by("id"))


def dispatch_on_commit(messages: Iterable[Message]) -> None:
    batch = list(messages)
    if batch:
        transaction.on_commit(lambda: get_dispatcher().send(batch))


def retry_on_commit(task_id: int, attempt: int, countdown: float) -> None:
    transaction.on_commit(lambda: get_dispatcher().send_retry(task_id, attempt, countdown))


def collect_on_commit(task_id: int, attempt: int, status: dict) -> None:
    """A finished remote job: collect its outputs and finish the attempt (gateway/remote.py)."""
    transaction.on_commit(lambda: get_dispatcher().send_collect(task_id, attempt, status))


def cancel_remote_on_commit(task_id: int, attempt: int) -> None:
    """A cancelled task whose job runs on a remote backend: stop that job (gateway/remote.py)."""
    transaction.on_commit(lambda: get_dispatcher().send_cancel(task_id, attempt))


def dispatch_held(run_id, count: int) -> int:
    """Send messages for up to `count` of the run's held tasks (no longer held), after commit."""
    from .models import TaskInstance

    with transaction.atomic():
        ids = list(held_tasks(run_id).values_list("id", "attempt")[:count])
        if ids:
            # Still QUEUED at the same attempt: no move, so no history row; only a message now.
            TaskInstance.objects.filter(id__in=[i for i, _ in ids]).update(held=False)
            dispatch_on_commit(ids)
    return len(ids)
