"""The inbox page reads only the columns it shows, in a number of queries that does not grow with its
rows, and still shows only what the selectors let the analyst see and decide."""
from __future__ import annotations

import pytest
import yaml
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gateway.services import run_submit

pytestmark = pytest.mark.django_db


def gates_workflow(n: int, label: str, name: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "classification": label,
        "tasks": [{"id": f"g{i}", "type": "gate", "title": f"{name} gate {i}", "options": ["confirm", "reject"],
                   "approvers": ["analyst"], "timeout": "2h", "on_timeout": "reject"} for i in range(n)],
    }, sort_keys=False)


def inbox_queries(client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/inbox/")
    assert response.status_code == 200
    return response.content.decode(), len(queries)


def test_the_inbox_costs_the_same_queries_for_few_rows_or_many(world, login):
    home, users = world["home"], world["users"]
    client = login(users["analyst"])
    inbox_queries(client)  # the first request of a connection has a query less (its scope is not reset)
    run_submit(tenant=home, actor=users["author"], source=gates_workflow(2, "CONFIDENTIAL", "some-work"))
    html, few = inbox_queries(client)
    assert html.count("<tr data-gate=") == 3

    run_submit(tenant=home, actor=users["author"], source=gates_workflow(6, "CONFIDENTIAL", "more-work"))
    html, many = inbox_queries(client)
    assert html.count("<tr data-gate=") == 9
    assert many == few  # no row loads anything of its own (a column left out would cost a query per row)
    assert "more-work gate 5" in html and "<td>more-work</td>" in html  # the title and the run's name
    assert html.count('<span class="label" data-label="CONFIDENTIAL">CONFIDENTIAL</span>') == 8
    assert html.count(" UTC</time>") == 8  # the eight with a timeout show their deadline; the world's has none


def test_the_inbox_still_hides_gates_above_clearance_and_of_other_tenants(world, login):
    home, away, users = world["home"], world["away"], world["users"]
    run_submit(tenant=home, actor=users["author"], source=gates_workflow(2, "TOP SECRET", "too-high"))
    run_submit(tenant=away, actor=users["away"], source=gates_workflow(2, "UNCLASSIFIED", "elsewhere"))
    run_submit(tenant=home, actor=users["author"], source=gates_workflow(2, "UNCLASSIFIED", "visible"))

    html = login(users["low"]).get("/inbox/").content.decode()  # cleared CONFIDENTIAL
    assert html.count("<tr data-gate=") == 2 and "visible gate 0" in html and "visible gate 1" in html
    assert "too-high" not in html and "elsewhere" not in html and "TOP SECRET" not in html
    html = login(users["analyst"]).get("/inbox/").content.decode()  # cleared TOP SECRET
    assert "visible gate 1" in html and "too-high gate 1" in html and "elsewhere" not in html
