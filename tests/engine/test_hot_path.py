"""The submission's one-statement insert of a run's tasks, the worker statements' placeholders, and
the removal of an attempt's work directory alongside the finish: each does what the plainer way did."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from gateway import services
from gateway.models import TaskInstance
from gateway.worker import task_execute, task_workdir
from gateway.worker_sql import _Statement

from .driver import submit

pytestmark = pytest.mark.django_db(transaction=True)

# Listed out of topological order on purpose: "join" first, a gate, a chain.
SHAPE = (
    {"id": "join", "needs": ["a", "b"]},
    {"id": "b", "needs": ["root"], "env": {"X": "1"}, "retries": 2},
    {"id": "a", "needs": ["root"]},
    {"id": "g", "type": "gate", "needs": ["a"]},
    {"id": "root"},
)
COLUMNS = [f.attname for f in TaskInstance._meta.concrete_fields
           if f.attname not in ("id", "run_id", "state_changed_at")]


def _rows(run) -> list[tuple]:
    return [tuple(getattr(t, c) for c in COLUMNS) for t in TaskInstance.objects.filter(run=run).order_by("id")]


def test_submit_writes_the_task_rows_the_orm_writes_in_topological_order(recording, tenant, author, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement insert is PostgreSQL's; elsewhere bulk_create runs")
    fast = submit(tenant, author, *SHAPE, name="wf")
    with monkeypatch.context() as m:
        m.setattr(services, "_one_statement_insert", lambda: False)
        reference = submit(tenant, author, *SHAPE, name="wf")
    assert _rows(fast) == _rows(reference)
    keys = [row[COLUMNS.index("key")] for row in _rows(fast)]
    assert keys == ["root", "b", "a", "join", "g"]  # ids grow in topological order (file order among ties)
    tasks = {t.key: t for t in TaskInstance.objects.filter(run=fast)}
    assert tasks["root"].state == "QUEUED" and tasks["root"].attempt == 1  # the root was readied
    assert tasks["join"].state == "PENDING" and tasks["join"].needs_remaining == 2
    assert sorted(tasks["root"].dependants) == ["a", "b"] and tasks["b"].spec["env"] == {"X": "1"}
    assert all(t.state_changed_at is not None and t.external is None for t in tasks.values())
    assert [m for m in recording.sent if m[0] in {t.id for t in tasks.values()}] == [(tasks["root"].id, 1)]


def test_statement_placeholders_become_numbered_once_per_name():
    statement = _Statement("SELECT %(a)s::int, %(b)s::text, %(a)s::int + 1")
    assert statement.sql == "SELECT $1::int, $2::text, $1::int + 1"
    assert statement.params({"b": "x", "a": 3, "unused": 0}) == [3, "x"]
    with pytest.raises(ValueError):
        _Statement("SELECT 1 WHERE name LIKE 'a%' AND id = %(id)s")
    with pytest.raises(KeyError):
        statement.params({"a": 1})


def test_tasks_are_found_by_run_through_the_unique_run_key_index_alone():
    """No index on run_id alone next to the unique (run, key) one: every changed task row would pay
    an entry in it, and the finish's lookup of a dependant by (run, key) could be planned on it and
    read the whole run per dependant (gateway/models.py)."""
    if connection.vendor != "postgresql":
        pytest.skip("the indexes checked are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                       [TaskInstance._meta.db_table])
        indexes = dict(cursor.fetchall())
    assert indexes["task_unique_key_per_run"].endswith("(run_id, key)")
    assert [name for name, text in indexes.items() if text.endswith("(run_id)")] == []


def _attempt_dirs(task: TaskInstance) -> list[Path]:
    workdir = task_workdir(task, task.attempt)
    return [workdir, workdir.parent / f".{task.key}.{task.attempt}.inputs"]


def test_a_finished_attempt_leaves_no_work_directory_when_its_message_is_done(recording, tenant, author):
    run = submit(tenant, author, {"id": "make", "run": "echo made > out.txt", "outputs": [{"name": "out", "path": "out.txt"}]},
                 {"id": "use", "needs": ["make"], "inputs": [{"from": "make/out", "path": "in.txt"}],
                  "run": "cat in.txt"})
    for key in ("make", "use"):
        task = TaskInstance.objects.get(run=run, key=key)
        assert task_execute(task.id, task.attempt) == "succeeded", key
        assert not any(path.exists() for path in _attempt_dirs(task)), key  # work dir and staged inputs
    assert TaskInstance.objects.get(run=run, key="use").state == "SUCCEEDED"


def test_kept_work_directories_are_not_removed(recording, tenant, author, settings):
    settings.GATEHOUSE_ENGINE = {**django_settings.GATEHOUSE_ENGINE, "KEEP_WORKDIRS": True}
    run = submit(tenant, author, {"id": "only", "run": "echo kept > out.txt"})
    task = TaskInstance.objects.get(run=run, key="only")
    assert task_execute(task.id, task.attempt) == "succeeded"
    workdir = _attempt_dirs(task)[0]
    assert (workdir / "out.txt").read_text() == "kept\n"
