"""Live updates end to end: a real Daphne process, real websocket clients with real portal sessions,
channels-redis on the test Redis, the engine and services driven through their real entry points."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import yaml
from django.utils import timezone

from approvals.models import Gate
from approvals.services import gate_decide, gate_relabel
from gateway.clearances import ClearanceInput, clearance_revoke, clearance_set
from gateway.models import Clearance, TaskInstance
from gateway.services import run_cancel, run_submit
from gateway.worker import task_execute

from .conftest import flush_publisher

pytestmark = pytest.mark.django_db(transaction=True)


def workflow(gate_label: str = "SECRET", name: str = "live") -> str:
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "classification": "UNCLASSIFIED",
        "tasks": [
            {"id": "review", "type": "gate", "title": "Review", "classification": gate_label,
             "options": ["confirm", "reject"], "approvers": ["analyst"]},
            {"id": "after", "needs": ["review"], "run": "true"},
        ],
    }, sort_keys=False)


def cleared(level: str) -> ClearanceInput:
    return ClearanceInput(policy=None, max_level=level, compartments=[], releasability=[])


@pytest.fixture
def people(make_tenant, make_member):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    p = {
        "acme": acme,
        "globex": globex,
        "author": make_member(acme, "author", username="author", clearance="TOP SECRET"),
        "admin": make_member(acme, "tenant_admin", username="admin", clearance="TOP SECRET"),
        "high": make_member(acme, "analyst", username="high", clearance="SECRET"),
        "low": make_member(acme, "analyst", username="low", clearance="CONFIDENTIAL"),
        "foreign": make_member(globex, "analyst", username="foreign", clearance="TOP SECRET"),
        "foreign_author": make_member(globex, "author", username="foreign-author", clearance="TOP SECRET"),
    }
    # Register the labels in both tenants before any socket connects (a label new since the socket
    # connected has its own test below).
    run_submit(tenant=acme, actor=p["author"], source=workflow(name="warm"))
    run_submit(tenant=globex, actor=p["foreign_author"], source=workflow(name="warm"))
    flush_publisher()
    return p


def mentions(frames: list[dict], *needles: str) -> list[dict]:
    return [f for f in frames if any(n in json.dumps(f) for n in needles)]


def test_a_secret_gate_reaches_only_the_cleared_socket_of_its_tenant(recording, daphne, sockets, people):
    high = sockets(daphne, people["high"])
    low = sockets(daphne, people["low"])
    foreign = sockets(daphne, people["foreign"])

    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow())
    gate = Gate.objects.get(run=run)
    opened = high.wait_for(lambda f: f.get("type") == "gate.opened", what="gate.opened")
    assert opened == {"type": "gate.opened", "gate": str(gate.id), "run": str(run.id)}
    high.wait_for(lambda f: f == {"type": "task.state", "run": str(run.id), "task": "review",
                                  "state": "AWAITING_DECISION"}, what="the gate task's state")
    # The lower-cleared analyst and the other tenant receive nothing at all: no frame, and so no id.
    assert low.drain() == []
    assert foreign.drain(0.2) == []

    gate_decide(gate=gate, actor=people["high"], option="confirm")
    high.wait_for(lambda f: f == {"type": "gate.changed", "gate": str(gate.id), "run": str(run.id)},
                  what="gate.changed")
    high.wait_for(lambda f: f == {"type": "gate.closed", "gate": str(gate.id), "run": str(run.id)},
                  what="gate.closed")
    # The task after the gate is UNCLASSIFIED: both analysts of the tenant see it queued.
    queued = {"type": "task.state", "run": str(run.id), "task": "after", "state": "QUEUED"}
    high.wait_for(lambda f: f == queued, what="after QUEUED")
    low.wait_for(lambda f: f == queued, what="after QUEUED")
    low.drain(0.5)  # whatever else arrives is checked below
    assert mentions(low.seen, str(gate.id), '"review"') == []
    assert all("title" not in f and "Review" not in json.dumps(f) for f in high.seen)
    assert foreign.drain(0.2) == []
    assert foreign.seen == []


def test_task_and_run_states_follow_the_worker(recording, daphne, sockets, people):
    low = sockets(daphne, people["low"])
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow(gate_label="UNCLASSIFIED"))
    gate = Gate.objects.get(run=run)
    low.wait_for(lambda f: f == {"type": "gate.opened", "gate": str(gate.id), "run": str(run.id)})
    gate_decide(gate=gate, actor=people["high"], option="confirm")
    after = TaskInstance.objects.get(run=run, key="after")
    assert task_execute(after.id, 1) == "succeeded"  # the worker's own path: claim, run, finish
    for state in ("QUEUED", "RUNNING", "SUCCEEDED"):
        low.wait_for(lambda f, s=state: f == {"type": "task.state", "run": str(run.id), "task": "after", "state": s},
                     what=f"after {state}")
    low.wait_for(lambda f: f == {"type": "run.state", "run": str(run.id), "state": "SUCCEEDED"}, what="run.state")


def test_a_cancelled_run_closes_its_gate_on_the_open_pages(recording, daphne, sockets, people):
    high = sockets(daphne, people["high"])
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow())
    gate = Gate.objects.get(run=run)
    high.wait_for(lambda f: f.get("type") == "gate.opened" and f["gate"] == str(gate.id))
    run_cancel(run=run, actor=people["author"])
    high.wait_for(lambda f: f == {"type": "gate.closed", "gate": str(gate.id), "run": str(run.id)})
    high.wait_for(lambda f: f == {"type": "run.state", "run": str(run.id), "state": "CANCELLED"})


def test_a_lowered_clearance_resyncs_the_page_and_stops_secret_messages(recording, daphne, sockets, people):
    high = sockets(daphne, people["high"])
    clearance_set(tenant=people["acme"], user=people["high"], data=cleared("CONFIDENTIAL"), actor=people["admin"])
    high.wait_for(lambda f: f == {"type": "resync"}, what="resync")
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow())
    gate = Gate.objects.get(run=run)
    flush_publisher()
    assert mentions(high.drain(), str(gate.id), '"review"') == []
    # ... while the UNCLASSIFIED part of the run still reaches the page, and the SECRET part does not.
    run_cancel(run=run, actor=people["author"])
    high.wait_for(lambda f: f == {"type": "run.state", "run": str(run.id), "state": "CANCELLED"})
    high.drain(0.5)
    assert mentions(high.seen, str(gate.id), '"review"') == []
    assert not high.closed.is_set()


def test_a_raised_clearance_starts_secret_messages_without_reconnecting(recording, daphne, sockets, people):
    low = sockets(daphne, people["low"])
    clearance_set(tenant=people["acme"], user=people["low"], data=cleared("SECRET"), actor=people["admin"])
    low.wait_for(lambda f: f == {"type": "resync"}, what="resync")
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow())
    gate = Gate.objects.get(run=run)
    low.wait_for(lambda f: f == {"type": "gate.opened", "gate": str(gate.id), "run": str(run.id)})


def test_a_revoked_clearance_or_a_disabled_account_closes_the_socket(recording, daphne, sockets, people):
    from gateway.identity.provisioning import tenant_user_set_enabled

    high, low = sockets(daphne, people["high"]), sockets(daphne, people["low"])
    row = Clearance.objects.get(user=people["high"], tenant=people["acme"])
    clearance_revoke(tenant=people["acme"], clearance=row, actor=people["admin"])
    # Without a clearance the member still reads nothing labelled, so every group goes: a resync.
    high.wait_for(lambda f: f == {"type": "resync"})
    tenant_user_set_enabled(tenant=people["acme"], actor=people["admin"], user=people["low"], enabled=False)
    assert low.closed.wait(10), "a disabled member's socket stayed open"
    assert low.close_code == 4403
    assert not high.closed.is_set()


def test_a_clearance_that_expires_drops_the_label_on_time(recording, daphne, sockets, people):
    high = sockets(daphne, people["high"])
    until = timezone.now() + timedelta(seconds=2)
    clearance_set(tenant=people["acme"], user=people["high"],
                  data=ClearanceInput(policy=None, max_level="SECRET", compartments=[], releasability=[],
                                      valid_until=until), actor=people["admin"])
    high.wait_for(lambda f: f == {"type": "resync"})  # the change itself
    # No message announces the end of the window: the socket's own timer does.
    high.wait_for(lambda f: f == {"type": "resync"}, timeout=10, what="resync at valid_until", count=2)
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow())
    gate = Gate.objects.get(run=run)
    flush_publisher()
    assert mentions(high.drain(), str(gate.id)) == []


def test_a_label_new_since_connect_is_joined(recording, daphne, sockets, people):
    high, low = sockets(daphne, people["high"]), sockets(daphne, people["low"])
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow(gate_label="RESTRICTED"))
    gate = Gate.objects.get(run=run)
    # RESTRICTED was not registered when the sockets connected: both join its group and are told to
    # resync (the gate.opened itself may have been sent before they joined).
    for client in (high, low):
        client.wait_for(lambda f: f == {"type": "resync"}, what="resync on a new label")
    gate_decide(gate=gate, actor=people["high"], option="confirm")
    for client in (high, low):
        client.wait_for(lambda f: f == {"type": "gate.closed", "gate": str(gate.id), "run": str(run.id)})


def test_a_relabelled_gate_leaves_the_pages_no_longer_cleared(recording, daphne, sockets, people):
    run = run_submit(tenant=people["acme"], actor=people["author"], source=workflow(gate_label="CONFIDENTIAL"))
    gate = Gate.objects.get(run=run)
    flush_publisher()
    high, low = sockets(daphne, people["high"]), sockets(daphne, people["low"])
    gate_relabel(gate=gate, classification="SECRET", actor=people["admin"])
    closed = {"type": "gate.closed", "gate": str(gate.id), "run": str(run.id)}
    low.wait_for(lambda f: f == closed, what="gate.closed on relabel")
    high.wait_for(lambda f: f == {"type": "gate.changed", "gate": str(gate.id), "run": str(run.id)})
    flush_publisher()
    assert closed not in high.drain(0.5) + high.seen


def test_anonymous_other_origin_and_memberless_sockets_are_refused(daphne, sockets, people):
    from django.contrib.auth import get_user_model
    from websockets.exceptions import InvalidStatus

    anonymous = sockets(daphne)
    assert anonymous.closed.wait(10) and anonymous.close_code == 4401
    assert anonymous.seen == [] and anonymous.raw == []
    with pytest.raises(InvalidStatus) as refused:
        sockets(daphne, people["high"], origin="http://evil.example")
    assert refused.value.response.status_code == 403
    nobody = get_user_model().objects.create_user(username="nobody", password="pw")
    memberless = sockets(daphne, nobody)
    assert memberless.closed.wait(10) and memberless.close_code == 4403
    # A forged or ended session is anonymous.
    from .conftest import LiveClient

    forged = LiveClient(daphne.url, origin=daphne.origin, session="not-a-session")
    assert forged.closed.wait(10) and forged.close_code == 4401


def test_a_logged_out_session_loses_its_socket_at_the_next_recheck(recording, daphne, sockets, people):
    from django.contrib.sessions.models import Session

    high = sockets(daphne, people["high"])
    Session.objects.all().delete()  # a logout, or a back-channel logout, ends the session
    clearance_set(tenant=people["acme"], user=people["high"], data=cleared("SECRET"), actor=people["admin"])
    assert high.closed.wait(10)
    assert high.close_code == 4401


def test_a_logout_closes_the_sessions_socket(daphne, sockets, people):
    from django.conf import settings as django_settings
    from django.test import Client

    from .conftest import LiveClient

    client = Client()
    client.force_login(people["high"])
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page = LiveClient(daphne.url, origin=daphne.origin, session=session, name="high")
    other = sockets(daphne, people["low"])
    try:
        client.logout()  # Django's logout: the user_logged_out signal
        assert page.closed.wait(10), "the logged-out session kept its socket"
        assert page.close_code == 4401
        assert not other.closed.wait(1)
    finally:
        page.close()
