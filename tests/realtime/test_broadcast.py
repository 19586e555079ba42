"""The hub's broadcast path in a real Daphne process: a message for a group is framed once and
written to every local socket holding the group, in order, and to no other socket."""
from __future__ import annotations

import pytest

from approvals.models import Gate
from gateway.realtime.consumer import _wire
from gateway.services import run_submit

from .conftest import flush_publisher
from .test_live_updates import people, workflow  # noqa: F401 - people: the fixture

pytestmark = pytest.mark.django_db(transaction=True)


def test_many_sockets_each_get_every_frame_of_a_broadcast_in_order(recording, daphne, sockets, people):
    tabs = [sockets(daphne, people["high"], name=f"high-{i}") for i in range(12)]
    low = [sockets(daphne, people["low"], name=f"low-{i}") for i in range(4)]
    foreign = sockets(daphne, people["foreign"])

    runs = [run_submit(tenant=people["acme"], actor=people["author"], source=workflow()) for _ in range(3)]
    flush_publisher()
    gates = {str(g.run_id): str(g.id) for g in Gate.objects.filter(run__in=runs)}
    for tab in tabs:
        for n, run in enumerate(runs, start=1):
            tab.wait_for(lambda f, r=str(run.id): f.get("type") == "gate.opened" and f["run"] == r,
                         what=f"gate.opened of run {n}")
        secret = [f for f in tab.seen if f.get("run") in gates and (f.get("task") == "review" or "gate" in f)]
        # Per commit the gate task's state, then its gate.opened: one message, written as two frames.
        assert secret == [frame for run in runs for frame in (
            {"type": "task.state", "run": str(run.id), "task": "review", "state": "AWAITING_DECISION"},
            {"type": "gate.opened", "gate": gates[str(run.id)], "run": str(run.id)})], tab.name
    # The same commits' SECRET messages reached no CONFIDENTIAL socket and nothing reached the other tenant.
    for socket in low:
        socket.drain(0.5)
        assert [f for f in socket.seen if f.get("task") == "review" or "gate" in f] == [], socket.name
    assert foreign.drain(0.2) == [] and foreign.seen == []


def test_a_send_that_is_not_daphnes_takes_the_asgi_path():
    async def send(message):  # what Channels' test communicator or another server hands the consumer
        pass

    assert _wire(send) is None
    assert _wire(None) is None
