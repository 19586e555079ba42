"""Sending many dispatch messages at once (gateway.dispatch.send_many) on the test broker, and the
Celery app's configuration read from Django's settings."""
from __future__ import annotations

import uuid

import pytest
from django.conf import settings

from gateway.celery import app
from gateway.dispatch import SEND_BATCH, send_many


# The probe task names its queue as a task attribute (Celery deprecates it for task_routes, which
# the app reads once at start): a queue of the test's own, on the test broker.
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*The 'queue' task attribute is deprecated")


@pytest.fixture
def probe():
    """A task of its own routed to a queue of its own, so that nothing else consumes or sends there;
    the queue is emptied and deleted afterwards."""
    queue = f"gatehouse-test-send-{uuid.uuid4().hex[:8]}"
    name = f"tests.send_probe.{queue}"

    @app.task(name=name, queue=queue, acks_late=True, ignore_result=True)
    def send_probe(task_id: int, attempt: int) -> None:  # never executed: the test reads the queue
        raise AssertionError("not to be run")

    try:
        yield send_probe, queue
    finally:
        with app.connection_for_write() as conn:
            simple = conn.SimpleQueue(queue)
            simple.clear()
            simple.queue.delete()
            simple.close()
        app.tasks.unregister(name)


def _drain(queue: str) -> list:
    got = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get(timeout=1.0)
                except simple.Empty:
                    return got
                got.append((message.headers, message.decode()))
                message.ack()
        finally:
            simple.close()


def test_send_many_delivers_every_message_once_as_celery_sends_it(probe):
    task, queue = probe
    count = 2 * SEND_BATCH + 7  # several pipelined batches and a partial one
    send_many(task, [(i, 1) for i in range(count)])
    got = _drain(queue)
    assert len(got) == count
    assert {headers["task"] for headers, _ in got} == {task.name}
    assert len({headers["id"] for headers, _ in got}) == count  # a task id of its own each
    args = sorted(tuple(body[0]) for _, body in got)  # protocol 2: (args, kwargs, embed)
    assert args == [(i, 1) for i in range(count)]
    assert all(body[1] == {} for _, body in got)


def test_send_many_of_nothing_sends_nothing(probe):
    task, queue = probe
    send_many(task, [])
    assert _drain(queue) == []


def test_celery_reads_its_settings_from_django():
    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    assert app.conf.task_ignore_result is settings.CELERY_TASK_IGNORE_RESULT is True
    # A setting Django's settings leave alone keeps Celery's default.
    assert not hasattr(settings, "CELERY_TASK_ALWAYS_EAGER")
    assert app.conf.task_always_eager is False
