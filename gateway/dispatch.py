"""Sending ready tasks to workers, always after commit.

The dispatcher is a setting, like Django's email backends: Celery in every real deployment;
a recording dispatcher that keeps the messages in memory for tests that drive the engine
step by step in an order they choose.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

Message = tuple[int, int]  # (task instance id, attempt)


class CeleryDispatcher:
    def send(self, messages: list[Message]) -> None:
        from .tasks import execute_task_task

        if not messages:
            return
        app = execute_task_task.app
        # One producer connection for the whole batch (a fan-out can be thousands of messages).
        with app.producer_or_acquire() as producer:
            for task_id, attempt in messages:
                execute_task_task.apply_async((task_id, attempt), producer=producer)

    def send_retry(self, task_id: int, attempt: int, countdown: float) -> None:
        from .tasks import requeue_task

        requeue_task.apply_async((task_id, attempt), countdown=max(0.0, countdown))


class RecordingDispatcher:
    """Keeps messages in memory; tests pop them and run them in any order."""

    lock = threading.Lock()
    sent: list[Message] = []
    retries: list[tuple[int, int, float]] = []

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


@lru_cache(maxsize=4)
def _dispatcher(path: str):
    return import_string(path)()


def get_dispatcher():
    return _dispatcher(settings.GATEHOUSE_ENGINE["DISPATCHER"])


def dispatch_on_commit(messages: Iterable[Message]) -> None:
    batch = list(messages)
    if batch:
        transaction.on_commit(lambda: get_dispatcher().send(batch))


def retry_on_commit(task_id: int, attempt: int, countdown: float) -> None:
    transaction.on_commit(lambda: get_dispatcher().send_retry(task_id, attempt, countdown))
