"""Step-by-step driving of the engine through its real entry points (claim, finish, decide,
reconcile), with dispatch messages recorded instead of sent, so a test picks the order."""
from __future__ import annotations

import yaml

from executors.base import JobState, JobStatus
from gateway.dispatch import RecordingDispatcher
from gateway.models import Run, TaskInstance
from gateway.services import run_submit
from gateway.worker import Outcome, task_claim, task_finish

OK = Outcome(JobStatus(JobState.SUCCEEDED, 0, "exit code 0"))
FAIL = Outcome(JobStatus(JobState.FAILED, 3, "exit code 3"))


def workflow(*tasks: dict, name: str = "wf") -> str:
    spec = {"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "tasks": []}
    for task in tasks:
        task = dict(task)
        if task.get("type") == "gate":
            task.setdefault("title", f"Gate {task['id']}")
            task.setdefault("options", ["confirm", "reject"])
        else:
            task.setdefault("run", "true")
        spec["tasks"].append(task)
    return yaml.safe_dump(spec, sort_keys=False)


def submit(tenant, actor, *tasks: dict, name: str = "wf") -> Run:
    return run_submit(tenant=tenant, actor=actor, source=workflow(*tasks, name=name))


class Driver:
    def __init__(self, run: Run):
        self.run = run
        self.seen = 0

    def task(self, key: str) -> TaskInstance:
        return TaskInstance.objects.get(run=self.run, key=key)

    def states(self) -> dict[str, str]:
        return dict(TaskInstance.objects.filter(run=self.run).values_list("key", "state"))

    def new_messages(self) -> list[tuple[int, int]]:
        """Messages sent since the last call, for this run's tasks."""
        ids = set(TaskInstance.objects.filter(run=self.run).values_list("id", flat=True))
        fresh = [m for m in RecordingDispatcher.sent[self.seen:] if m[0] in ids]
        self.seen = len(RecordingDispatcher.sent)
        return fresh

    def message_for(self, key: str) -> tuple[int, int]:
        task = self.task(key)
        return (task.id, task.attempt)

    def complete(self, key: str, outcome: Outcome = OK) -> str:
        task_id, attempt = self.message_for(key)
        assert task_claim(task_id, attempt) is not None, f"{key} could not be claimed"
        return task_finish(task_id, attempt, outcome)

    def refresh(self) -> Run:
        self.run.refresh_from_db()
        return self.run


def in_threads(target, count: int) -> None:
    """Run `target` in `count` threads released together, each with its own database connection
    (closed when it ends), and wait for them all."""
    import threading

    from django.db import connections

    barrier = threading.Barrier(count)

    def run():
        try:
            barrier.wait()
            target()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
