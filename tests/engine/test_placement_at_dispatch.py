"""Placement is checked again before every submission, through the worker's own path (claim,
then task_run): the claim statement reads which backend configuration the tenant has, and an
unchanged one is not read again (gateway/placement.py keeps it per process); a configuration
changed before the claim (a lowered ceiling, a disabled backend) or a lowered default ceiling stops
the next task before anything is submitted."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from executors.backends import backends_configure
from gateway.models import Artefact, TaskInstance
from gateway.placement import placement_forget
from gateway.worker import task_execute

from .driver import Driver, submit

pytestmark = pytest.mark.django_db(transaction=True)

BACKENDS = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - name: vault-room
    kind: local
    max_classification: TOP SECRET
  - name: spare
    kind: local
    max_classification: TOP SECRET
"""

THREE = ({"id": "a", "classification": "SECRET", "backend": "vault-room"},
         {"id": "b", "classification": "SECRET", "backend": "vault-room"},
         {"id": "c", "classification": "SECRET", "backend": "vault-room"})


@pytest.fixture(autouse=True)
def _fresh_cache():
    placement_forget()
    yield
    placement_forget()


def _run(driver: Driver, key: str) -> tuple[str, list[str]]:
    task = driver.task(key)
    with CaptureQueriesContext(connection) as captured:
        result = task_execute(task.id, task.attempt)
    return result, [q["sql"] for q in captured.captured_queries]


def _refused(driver: Driver, key: str, *, why: str) -> None:
    task = driver.task(key)
    assert task.state == "FAILED" and task.reason.startswith(why), (task.state, task.reason)
    # Nothing reached the backend: no submission on record, nothing collected.
    assert not AuditEntry.objects.filter(event="executor.submitted", object_id=str(task.id)).exists()
    assert not Artefact.objects.filter(task_id=task.id).exists()


def test_an_unchanged_configuration_is_not_read_again_and_a_lowered_ceiling_stops_the_next_task(
        recording, tenant, author):
    backends_configure(tenant=tenant, actor=None, source=BACKENDS)
    driver = Driver(submit(tenant, author, *THREE))
    assert _run(driver, "a")[0] == "succeeded"  # reads the configuration (and keeps it)
    result, statements = _run(driver, "b")
    assert result == "succeeded"
    assert not [sql for sql in statements if "executors_tenantbackend" in sql]  # kept: not read again
    assert AuditEntry.objects.filter(event="executor.submitted", object_id=str(driver.task("b").id)).count() == 1

    backends_configure(tenant=tenant, actor=None, source=BACKENDS.replace(
        "max_classification: TOP SECRET\n  - name: spare", "max_classification: CONFIDENTIAL\n  - name: spare"))
    result, statements = _run(driver, "c")
    assert result == "failed"
    assert [sql for sql in statements if "executors_tenantbackend" in sql]  # a new revision: read again
    _refused(driver, "c", why="no_backend_for_label")
    assert "CONFIDENTIAL" in driver.task("c").reason


def test_a_backend_disabled_after_submission_stops_the_next_task(recording, tenant, author):
    backends_configure(tenant=tenant, actor=None, source=BACKENDS)
    driver = Driver(submit(tenant, author, *THREE[:2]))
    assert _run(driver, "a")[0] == "succeeded"
    backends_configure(tenant=tenant, actor=None, source=BACKENDS.replace(
        "    max_classification: TOP SECRET\n  - name: spare",
        "    max_classification: TOP SECRET\n    enabled: false\n  - name: spare"))
    assert _run(driver, "b")[0] == "failed"
    _refused(driver, "b", why="backend_unavailable")


def test_a_lowered_default_ceiling_stops_the_next_task_of_a_tenant_without_configuration(
        recording, tenant, author, settings):
    settings.GATEHOUSE_BACKEND_DEFAULT_CEILING = "TOP SECRET"
    driver = Driver(submit(tenant, author, {"id": "a", "classification": "SECRET"},
                           {"id": "b", "classification": "SECRET"}))
    assert TaskInstance.objects.get(run=driver.run, key="a").backend == "local"
    assert _run(driver, "a")[0] == "succeeded"
    settings.GATEHOUSE_BACKEND_DEFAULT_CEILING = "CONFIDENTIAL"
    assert _run(driver, "b")[0] == "failed"
    _refused(driver, "b", why="no_backend_for_label")
