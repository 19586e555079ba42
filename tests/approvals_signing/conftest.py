"""Fixtures for the signing of gate decisions: a master key of the test's own, gates made by the real
services (run_submit opens a root gate at once), approvers made by member_create."""
from __future__ import annotations

import pytest


@pytest.fixture
def master_key_file(settings, tmp_path):
    path = tmp_path / "keys" / "approval-master.key"
    settings.GATEHOUSE_APPROVAL_SIGNING = {**settings.GATEHOUSE_APPROVAL_SIGNING, "BACKEND": "local",
                                           "MASTER_KEY_FILE": str(path)}
    return path


@pytest.fixture
def make_gate(recording, tenant, author):
    """A gate opened by run_submit: make_gate(required_approvals=2, options=[...], ...)."""
    from approvals.models import Gate
    from tests.engine.driver import Driver, submit

    def make(**gate):
        d = Driver(submit(tenant, author, {"id": "g", "type": "gate", **gate}, {"id": "after", "needs": ["g"]}))
        return Gate.objects.get(task=d.task("g"))

    return make


@pytest.fixture
def approvers(make_member, tenant):
    """Three analysts of the tenant."""
    return [make_member(tenant, "analyst") for _ in range(3)]
