"""A tenant with one member per role, a SECRET run whose first task has run and whose gate is open,
a member of every role cleared only to CONFIDENTIAL, and another tenant with every role."""
from __future__ import annotations

import pytest

from approvals.models import Gate
from gateway.models import Artefact, TaskInstance

ROLES = ["author", "analyst", "tenant_admin", "auditor", "platform_auditor", "platform_admin"]
SECRET_TITLE = "Check the secret detections"
WORKFLOW = """\
apiVersion: gatehouse/v1
kind: Workflow
name: portal-world
classification: SECRET
tasks:
  - id: make
    run: "echo '[{\\"id\\": 1, \\"kind\\": \\"probe\\"}]' > out.json"
    outputs: [{name: out, path: out.json}]
  - id: check
    type: gate
    needs: [make]
    title: %s
    shows: [make/out]
    options: [confirm, {name: reject, outcome: reject}]
    form:
      type: object
      required: [verdict]
      properties:
        verdict: {type: string, enum: [benign, hostile]}
        score: {type: integer}
        notes: {type: string}
        urgent: {type: boolean}
        tags: {type: array, items: {enum: [a, b, c]}}
        extra: {type: object}
    approvers: [analyst]
  - id: after
    needs: [check]
    run: "true"
""" % SECRET_TITLE


@pytest.fixture
def world(db, recording, settings, tmp_path, make_tenant, make_member):
    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "witness")}
    settings.GATEHOUSE_APPROVAL_SIGNING = {**settings.GATEHOUSE_APPROVAL_SIGNING,
                                           "MASTER_KEY_FILE": str(tmp_path / "approval-master.key")}
    from audit.keys import forget_signer
    from audit.witness import _witness
    from gateway.services import run_submit
    from gateway.worker import task_execute

    forget_signer()
    _witness.cache_clear()
    home, away = make_tenant("home"), make_tenant("away")
    users = {r: make_member(home, r, username=f"home-{r}") for r in ROLES}
    users["away"] = make_member(away, *ROLES, username="away-all")
    users["low"] = make_member(home, *ROLES, clearance="CONFIDENTIAL", username="home-low")
    run = run_submit(tenant=home, actor=users["author"], source=WORKFLOW)
    make = TaskInstance.objects.get(run=run, key="make")
    assert task_execute(make.id, make.attempt) == "succeeded"
    yield {"home": home, "away": away, "users": users, "run": run, "gate": Gate.objects.get(run=run),
           "artefact": Artefact.objects.get(run=run, name="out")}
    forget_signer()
    _witness.cache_clear()


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user
