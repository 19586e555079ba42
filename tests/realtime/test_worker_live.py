"""Task and run states published by a real Celery worker process reach the page's socket."""
from __future__ import annotations

import pytest

from approvals.models import Gate
from approvals.services import gate_decide
from gateway.services import run_submit
from tests.integration.conftest import processes, shared_artefacts  # noqa: F401 - fixtures

from .test_live_updates import workflow

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_worker_process_publishes_task_and_run_states(processes, daphne, sockets,  # noqa: F811
                                                        tenant, author, analyst):
    run_submit(tenant=tenant, actor=author, source=workflow(gate_label="UNCLASSIFIED", name="warm"))
    page = sockets(daphne, analyst)
    processes.worker("w1")
    run = run_submit(tenant=tenant, actor=author, source=workflow(gate_label="UNCLASSIFIED"))
    gate = Gate.objects.get(run=run)
    page.wait_for(lambda f: f == {"type": "gate.opened", "gate": str(gate.id), "run": str(run.id)})
    gate_decide(gate=gate, actor=analyst, option="confirm")
    # RUNNING and SUCCEEDED are written by the worker (the hot path's single statements) and
    # published from its process; the run closes there too.
    for state in ("RUNNING", "SUCCEEDED"):
        page.wait_for(lambda f, s=state: f == {"type": "task.state", "run": str(run.id), "task": "after", "state": s},
                      timeout=60, what=f"after {state} from the worker")
    page.wait_for(lambda f: f == {"type": "run.state", "run": str(run.id), "state": "SUCCEEDED"}, timeout=30)
