"""Publishing never sits in the engine's path, and the embedded default's relay reaches the server."""
from __future__ import annotations

import socket
import time

import pytest
import yaml

from approvals.models import Gate
from approvals.services import gate_decide
from gateway.models import Run, TaskInstance
from gateway.realtime.groups import label_group, tenant_group, user_group
from gateway.realtime.publisher import publisher
from gateway.services import run_submit
from gateway.worker import task_execute

from .conftest import Daphne, flush_publisher, needs_servers, server_env
from .test_live_updates import workflow


def test_group_names_are_valid_for_any_label():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    banner = "TOP SECRET//" + "/".join(f"COMPARTMENT{i}" for i in range(40)) + "//REL TO " + ", ".join(
        f"C{i:02d}" for i in range(60))
    for name in (label_group(123456789, banner), tenant_group(123456789), user_group(987654321)):
        assert layer.require_valid_group_name(name)
        assert len(name) < 100
    assert label_group(1, "SECRET") != label_group(2, "SECRET") != label_group(1, "TOP SECRET")
    assert "SECRET" not in label_group(1, "SECRET")


class SilentServer:
    """Accepts TCP connections (the kernel's backlog does) and never answers: a hung Redis."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: connections are refused


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("layer", ["closed port", "silent server"])
def test_a_dead_channel_layer_never_delays_or_fails_the_engine(recording, settings, tenant, author, analyst,
                                                                 layer, caplog):
    timeout = 10.0  # generous: the engine's own work must fit in it on a loaded machine
    with SilentServer() as silent_port:
        port = closed_port() if layer == "closed port" else silent_port
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                               "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]}}}
        settings.GATEHOUSE_LIVE = {**settings.GATEHOUSE_LIVE, "PUBLISH_TIMEOUT_SECONDS": timeout}
        t0 = time.monotonic()
        run = run_submit(tenant=tenant, actor=author, source=workflow(gate_label="UNCLASSIFIED"))
        gate = Gate.objects.get(run=run)
        gate_decide(gate=gate, actor=analyst, option="confirm")
        after = TaskInstance.objects.get(run=run, key="after")
        assert task_execute(after.id, 1) == "succeeded"
        elapsed = time.monotonic() - t0
        # Committed, and the run finished, while the sender may still wait on the layer: the first
        # message alone takes the whole timeout when the server never answers.
        assert Run.objects.get(id=run.id).state == "SUCCEEDED"
        assert elapsed < timeout, f"the engine waited for the channel layer ({elapsed:.2f}s)"
        if layer == "silent server":
            assert publisher.pending() > 0, "the sender was expected to be still waiting"
        assert publisher.flush(40), "the sender did not get past the dead layer"
    assert "channel layer unavailable" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_embedded_default_relays_worker_messages_to_the_server(recording, settings, sockets, tmp_path,
                                                                    tenant, author, analyst, make_member):
    """In-memory layer (no Redis): this process stands for the Celery worker; it publishes through
    the relay directory, which the Daphne process drains into its own in-memory layer."""
    needs_servers()
    relay = tmp_path / "relay"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.GATEHOUSE_LIVE = {**settings.GATEHOUSE_LIVE, "RELAY_DIR": str(relay)}
    run_submit(tenant=tenant, actor=author, source=workflow(gate_label="SECRET", name="warm"))
    flush_publisher()
    low = make_member(tenant, "analyst", username="low", clearance="CONFIDENTIAL")
    env = server_env(GATEHOUSE_LIVE_RELAY_DIR=str(relay), GATEHOUSE_BROKER_URL="filesystem://",
                     GATEHOUSE_VAR_DIR=str(tmp_path / "var"))
    env.pop("GATEHOUSE_CHANNEL_LAYER_URL", None)
    server = Daphne(env, tmp_path / "daphne.log").start()
    try:
        high_socket, low_socket = sockets(server, analyst), sockets(server, low)
        run = run_submit(tenant=tenant, actor=author, source=workflow(gate_label="SECRET"))
        gate = Gate.objects.get(run=run)
        high_socket.wait_for(lambda f: f == {"type": "gate.opened", "gate": str(gate.id), "run": str(run.id)},
                             what="gate.opened through the relay")
        gate_decide(gate=gate, actor=analyst, option="confirm")
        queued = {"type": "task.state", "run": str(run.id), "task": "after", "state": "QUEUED"}
        low_socket.wait_for(lambda f: f == queued, what="the UNCLASSIFIED task's state through the relay")
        assert [f for f in low_socket.seen if str(gate.id) in str(f)] == []
    finally:
        server.stop()


def test_only_consecutive_events_of_one_group_are_merged():
    from gateway.realtime.publisher import merge

    def event(group, n, **extra):
        return group, {"type": "live.event", "group": group, "events": [{"n": n}], **extra}

    recheck = ("gh.u1", {"type": "live.recheck", "group": "gh.u1", "why": "user"})
    merged = merge([event("a", 1), event("a", 2), recheck, event("a", 3), event("b", 4), event("a", 5, unless="b"),
                    event("a", 6, unless="b")])
    assert [(g, m.get("events"), m.get("unless")) for g, m in merged] == [
        ("a", [{"n": 1}, {"n": 2}], None), ("gh.u1", None, None), ("a", [{"n": 3}], None), ("b", [{"n": 4}], None),
        ("a", [{"n": 5}, {"n": 6}], "b")]


def test_one_send_carries_many_commits_as_the_layer_would_deliver_them(settings):
    """The pipelined sink publishes what channels-redis's own group_send would: a real pub/sub layer
    (what each server process's hub holds) receives every message, decoded, in commit order; a group
    nobody holds receives nothing; everything submitted within one window went in one send."""
    import asyncio

    from channels.layers import channel_layers

    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    layer = channel_layers.make_backend("default")
    held, other = label_group(7, "SECRET"), label_group(7, "TOP SECRET")
    async def scenario():
        channel = await layer.new_channel("probe.")
        await layer.group_add(held, channel)
        try:
            flush_publisher()
            sends = publisher.sends
            for n in range(20):  # one transaction's callbacks each, alternating groups: not merged
                publisher.submit([(held, {"type": "live.event", "group": held, "events": [{"n": n}]}),
                                  (other, {"type": "live.event", "group": other, "events": [{"n": -n}]})])
            await asyncio.get_running_loop().run_in_executor(None, flush_publisher)
            sends = publisher.sends - sends
            got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(20)]
            with pytest.raises(asyncio.TimeoutError):  # nothing of the other group came through
                await asyncio.wait_for(layer.receive(channel), 0.5)
            return got, sends
        finally:
            await layer.group_discard(held, channel)
            await layer.flush()

    got, sends = asyncio.run(scenario())
    assert got == [{"type": "live.event", "group": held, "events": [{"n": n}]} for n in range(20)]
    # One send when the 20 submissions fit in one window (a few µs here); a descheduled test thread
    # may split them, but never into one send per transaction.
    assert 1 <= sends <= 3, f"expected the 20 transactions' messages in one send, got {sends} sends"
