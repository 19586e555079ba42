"""The dispatch window: of the tasks readied together, at most DISPATCH_WINDOW get a message; the
rest are held (QUEUED, no message) and the workers that run the sent ones claim them next, each
exactly once, until DRAIN_SECONDS pass, when the worker hands on with one message. A held task
nobody claims gets its message from the reconciler; a cancelled run leaves nothing to claim."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from audit.models import AuditEntry
from gateway import worker_sql
from gateway.models import Run, TaskInstance, TaskTransition
from gateway.reconcile import reconcile
from gateway.services import run_cancel
from gateway.worker import task_claim, task_claim_held, task_execute

from .driver import Driver, in_threads, submit

pytestmark = pytest.mark.django_db(transaction=True)

FAN = 8


def fan_out(tenant, author, n: int = FAN):
    return submit(tenant, author, {"id": "root"}, *({"id": f"t{i}", "needs": ["root"]} for i in range(n)),
                  {"id": "join", "needs": [f"t{i}" for i in range(n)]})


@pytest.fixture
def window(settings):
    def set_window(size: int, drain_seconds: float = 30.0) -> None:
        settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "DISPATCH_WINDOW": size,
                                     "DRAIN_SECONDS": drain_seconds}
    return set_window


@pytest.fixture(params=["statement", "orm"])
def path(request, monkeypatch):
    """Both ways a worker moves tasks: PostgreSQL's single statements and the ORM path."""
    if request.param == "orm":
        monkeypatch.setattr(worker_sql, "enabled", lambda: False)
    return request.param


def rows(run) -> dict[str, TaskInstance]:
    return {t.key: t for t in TaskInstance.objects.filter(run=run).order_by("id")}


def held(run) -> list[str]:
    return list(TaskInstance.objects.filter(run=run, state="QUEUED", held=True).order_by("id")
                .values_list("key", flat=True))


def test_a_fan_out_past_the_window_sends_the_window_and_holds_the_rest(recording, tenant, author, window, path):
    window(3)
    driver = Driver(fan_out(tenant, author))
    driver.new_messages()
    assert driver.complete("root") == "succeeded"
    tasks = rows(driver.run)
    assert driver.new_messages() == [(tasks[f"t{i}"].id, 1) for i in range(3)]
    assert held(driver.run) == [f"t{i}" for i in range(3, FAN)]
    # Held or sent, every readied task is QUEUED at attempt 1 with its history row and audit entry.
    for i in range(FAN):
        task = tasks[f"t{i}"]
        assert (task.state, task.attempt, task.held) == ("QUEUED", 1, i >= 3)
        assert TaskTransition.objects.filter(transition_id=f"ready:{task.id}:1", to_state="QUEUED").exists()
        assert AuditEntry.objects.filter(event="task.transition", object_id=str(task.id),
                                         body__data__to="QUEUED").count() == 1


def test_the_worker_of_a_sent_task_runs_the_held_ones_once_each(recording, tenant, author, window, path):
    window(2)
    driver = Driver(fan_out(tenant, author))
    (root,) = driver.new_messages()
    assert task_execute(*root) == "succeeded"
    first, second = driver.new_messages()
    # The first message's worker runs its task, then every held one, in id order.
    assert task_execute(*first) == "succeeded"
    assert held(driver.run) == []
    tasks = rows(driver.run)
    assert tasks["t1"].state == "QUEUED"  # sent, so not taken: its own message runs it
    assert all(tasks[f"t{i}"].state == "SUCCEEDED" for i in [0, *range(2, FAN)])
    assert driver.new_messages() == []
    assert task_execute(*second) == "succeeded"
    (join,) = driver.new_messages()
    assert join == (rows(driver.run)["join"].id, 1)
    assert task_execute(*join) == "succeeded"
    assert Run.objects.get(id=driver.run.id).state == "SUCCEEDED"
    claims = TaskTransition.objects.filter(task__run=driver.run, to_state="RUNNING")
    assert sorted(claims.values_list("task__key", "attempt")) == sorted((key, 1) for key in rows(driver.run))


def test_a_drain_stops_at_its_time_and_hands_on_with_a_message(recording, tenant, author, window, path):
    window(2, drain_seconds=0.0)
    driver = Driver(fan_out(tenant, author))
    (root,) = driver.new_messages()
    task_execute(*root)
    tasks = rows(driver.run)
    # The window's two, and one more: root's worker had no time left to take a held task itself.
    assert driver.new_messages() == [(tasks[f"t{i}"].id, 1) for i in range(3)]
    assert task_execute(tasks["t0"].id, 1) == "succeeded"
    tasks = rows(driver.run)
    # Its time was up after its own task: no held task ran. Its claim sent t3 in its message's place,
    # and its hand-on t4.
    assert [k for k, t in tasks.items() if t.state == "SUCCEEDED"] == ["root", "t0"]
    assert driver.new_messages() == [(tasks["t3"].id, 1), (tasks["t4"].id, 1)]
    assert held(driver.run) == [f"t{i}" for i in range(5, FAN)]
    assert [(tasks[k].state, tasks[k].held) for k in ("t3", "t4")] == [("QUEUED", False)] * 2
    # Sent, not moved: no history row beyond their readiness.
    assert TaskTransition.objects.filter(task=tasks["t4"]).count() == 1


def test_a_message_taken_is_replaced_by_a_held_task_s(recording, tenant, author, window, path):
    """So the run keeps its window of messages queued while tasks are held, and a worker that
    becomes free (a long task elsewhere ended, a worker was added) finds one of them."""
    window(2)
    driver = Driver(fan_out(tenant, author))
    driver.new_messages()  # root's
    driver.complete("root")  # claim and finish only: no worker drains here
    tasks = rows(driver.run)
    assert driver.new_messages() == [(tasks["t0"].id, 1), (tasks["t1"].id, 1)]
    assert task_claim(tasks["t0"].id, 1) is not None
    assert driver.new_messages() == [(tasks["t2"].id, 1)]
    assert held(driver.run) == [f"t{i}" for i in range(3, FAN)]
    # A held task's claim takes no message from the queue, so it sends none.
    assert task_claim_held(driver.run.id).key == "t3"
    assert driver.new_messages() == []
    assert held(driver.run) == [f"t{i}" for i in range(4, FAN)]
    # A stale message claims nothing and sends nothing.
    assert task_claim(tasks["t0"].id, 1) is None
    assert driver.new_messages() == []


def test_workers_draining_one_run_claim_each_held_task_once(recording, tenant, author, window):
    window(1)
    n = 40
    driver = Driver(fan_out(tenant, author, n))
    driver.complete("root")
    assert len(held(driver.run)) == n - 1
    claimed = []

    def drain():
        while (task := task_claim_held(driver.run.id)) is not None:
            claimed.append(task.key)

    in_threads(drain, 4)
    assert sorted(claimed) == sorted(f"t{i}" for i in range(1, n))
    assert held(driver.run) == []
    for key, task in rows(driver.run).items():
        if key.startswith("t") and key != "t0":
            assert (task.state, task.held) == ("RUNNING", False)
            assert TaskTransition.objects.filter(task=task, to_state="RUNNING").count() == 1


def test_the_reconciler_sends_a_message_for_a_task_held_too_long(recording, tenant, author, window):
    window(2)
    driver = Driver(fan_out(tenant, author, 3))
    driver.complete("root")
    driver.new_messages()
    t2 = rows(driver.run)["t2"]
    assert t2.held
    # Not yet overdue: nothing is sent and it stays held.
    reconcile(now=timezone.now())
    assert driver.new_messages() == [] and held(driver.run) == ["t2"]
    overdue = timezone.now() + timedelta(seconds=django_settings.GATEHOUSE_ENGINE["DISPATCH_TIMEOUT_SECONDS"] + 1)
    reconcile(now=overdue)
    t2.refresh_from_db()
    assert (t2.state, t2.attempt, t2.held) == ("QUEUED", 2, False)
    assert (t2.id, 2) in driver.new_messages()
    assert held(driver.run) == []


def test_a_cancelled_run_leaves_nothing_to_drain(recording, tenant, author, window, path):
    window(2)
    driver = Driver(fan_out(tenant, author))
    driver.complete("root")
    run_cancel(run=driver.run, actor=author)
    assert task_claim_held(driver.run.id) is None
    assert held(driver.run) == []
    assert not TaskTransition.objects.filter(task__run=driver.run, to_state="RUNNING").exclude(task__key="root").exists()
    assert set(TaskInstance.objects.filter(run=driver.run).exclude(key="root").values_list("state", flat=True)) == {
        "CANCELLED"}
    assert not TaskInstance.objects.filter(run=driver.run, held=True).exists()  # every move ends holding


def test_window_zero_sends_every_readied_task(recording, tenant, author, window, path):
    window(0)
    driver = Driver(fan_out(tenant, author))
    driver.new_messages()
    driver.complete("root")
    assert len(driver.new_messages()) == FAN
    assert held(driver.run) == []


def test_with_the_window_closed_no_worker_drains(recording, tenant, author, window, path):
    """Tasks held before the window was set to 0 wait for the reconciler; a worker takes only its message's."""
    window(2)
    driver = Driver(fan_out(tenant, author))
    driver.new_messages()
    driver.complete("root")
    first, _ = driver.new_messages()
    window(0)
    assert task_execute(*first) == "succeeded"
    assert held(driver.run) == [f"t{i}" for i in range(3, FAN)]  # t2 was sent in place of t0's message
    assert [k for k, t in rows(driver.run).items() if t.state == "SUCCEEDED"] == ["root", "t0"]
