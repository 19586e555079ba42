"""Publishing live messages after commit, off the committing thread.

`submit` is what the `transaction.on_commit` callbacks call (gateway/realtime/events.py): it appends the
batch to an in-process list and returns at once. One daemon thread per process (started on first
use, again after a fork, so every Celery child has its own) sends what was appended, once per
window: woken by the first batch, it waits WINDOW_SECONDS more (and at least MIN_INTERVAL_SECONDS
since its previous send), then takes every batch queued meanwhile and sends them together. A busy
worker finishes several tasks per window: one wake-up and one Redis round trip for all their
messages, instead of a wake-up, an event-loop turn and a round trip per message. It sends

- with channels-redis's pub/sub layer (tests, production), straight to Redis: one pipelined call of
  PUBLISH commands, each exactly what the layer's own group_send publishes (the layer's channel
  name for the group, the layer's serializer), so the receiving hubs see ordinary layer messages.
  The layer itself has no batch send: group_send is one awaited round trip per message;
- to any other channel layer through its group_send, one message at a time;
- in both cases with a short timeout; errors are logged and the messages dropped, and after a
  failure the layer is left alone for a few seconds, so a dead Redis costs the engine nothing, not
  even a timeout per transition;
- or, when the layer is Channels' in-memory one (the embedded `make run`), to the relay
  (gateway/realtime/relay.py), which the ASGI process drains into its in-memory layer: a Celery
  worker cannot reach another process's memory.

The queue is bounded: when the sender cannot keep up, new batches are dropped (and counted) rather
than held. Live messages are hints; a page resyncs from the API on every (re)connect.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time

from django.conf import settings

log = logging.getLogger(__name__)

Envelope = tuple[str, dict]  # (group name, channel-layer message)
WINDOW_SECONDS = 0.005  # after the first batch, how long the sender waits for more before sending
# A busy process (a worker finishing a task every few ms) sends at most this often: each send then
# carries several tasks' messages. A lone commit still goes out after WINDOW_SECONDS.
MIN_INTERVAL_SECONDS = 0.025
Batch = list[Envelope]


def _conf(name: str):
    return settings.GATEHOUSE_LIVE[name]


def in_memory_layer() -> bool:
    from channels.layers import InMemoryChannelLayer
    from django.utils.module_loading import import_string

    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    try:
        return issubclass(import_string(backend), InMemoryChannelLayer)
    except ImportError:
        return False


def _pubsub_layer_config() -> dict | None:
    """The configuration of the default layer when it is channels-redis's pub/sub layer on plain
    Redis URLs (what the pipelined sink can publish for); otherwise None."""
    from channels_redis.pubsub import RedisPubSubChannelLayer
    from django.utils.module_loading import import_string

    conf = settings.CHANNEL_LAYERS.get("default", {})
    try:
        if not issubclass(import_string(conf.get("BACKEND", "")), RedisPubSubChannelLayer):
            return None
    except ImportError:
        return None
    from channels_redis.utils import decode_hosts

    config = conf.get("CONFIG", {})
    hosts = decode_hosts(config.get("hosts"))
    if not all(set(h) == {"address"} for h in hosts):
        return None  # sentinels or connection keywords: left to the layer itself
    return config


class _Backoff:
    down_until = 0.0
    dropped = 0

    def down(self) -> bool:
        return time.monotonic() < self.down_until

    def failed(self, exc: Exception, count: int) -> None:
        self.dropped += count
        self.down_until = time.monotonic() + _conf("BACKOFF_SECONDS")
        log.warning("live updates: channel layer unavailable (%s: %s); dropping messages for %ss",
                    type(exc).__name__, exc, _conf("BACKOFF_SECONDS"))


class RedisPipelineSink(_Backoff):
    """channels-redis pub/sub layer: every message of a send in one pipelined round trip per Redis
    host (PUBLISH to the group's channel, as RedisPubSubLoopLayer.group_send does)."""

    def __init__(self, config: dict):
        import redis
        from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
        from channels_redis.utils import _consistent_hash, decode_hosts
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)  # its serializer (and keys)
        self.prefix = config.get("prefix", "asgi")  # the layer's default too
        self.hash = _consistent_hash
        timeout = _conf("PUBLISH_TIMEOUT_SECONDS")
        # One attempt: a dead Redis costs one timeout, then the backoff (redis-py retries by default).
        self.clients = [redis.Redis.from_url(h["address"], socket_timeout=timeout, socket_connect_timeout=timeout,
                                             retry=Retry(NoBackoff(), 0))
                        for h in decode_hosts(config.get("hosts"))]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"  # RedisPubSubLoopLayer._get_group_channel_name

    def send_now(self, envelopes: list[Envelope]) -> None:
        if self.down():
            self.dropped += len(envelopes)
            return
        pipes = [client.pipeline(transaction=False) for client in self.clients]
        for group, message in envelopes:
            channel = self.channel(group)
            pipes[self.hash(channel, len(pipes))].publish(channel, self.layer.serialize(message))
        for pipe in pipes:
            if not pipe:
                continue
            try:
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - a live message is never worth an error upstream
                self.failed(exc, len(pipe))
                pipe.reset()
                return


class LayerSink(_Backoff):
    """group_send to the configured channel layer, each bounded by PUBLISH_TIMEOUT_SECONDS."""

    def __init__(self):
        from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

        # A layer instance of this thread's own (channels-redis keeps connections per event loop).
        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def send_now(self, envelopes: list[Envelope]) -> None:
        self.loop.run_until_complete(self.send(envelopes))

    async def send(self, envelopes: list[Envelope]) -> None:
        timeout = _conf("PUBLISH_TIMEOUT_SECONDS")
        for group, message in envelopes:
            if self.down():
                self.dropped += 1
                continue
            try:
                await asyncio.wait_for(self.layer.group_send(group, message), timeout)
            except Exception as exc:  # noqa: BLE001 - a live message is never worth an error upstream
                self.failed(exc, 1)


class RelaySink:
    """The embedded default: batches go through the relay to the ASGI process."""

    def __init__(self):
        from .relay import Relay

        self.relay = Relay()

    def close(self) -> None:
        self.relay.close()

    def send_now(self, envelopes: list[Envelope]) -> None:
        try:
            self.relay.put(envelopes)
        except Exception:  # noqa: BLE001
            log.warning("live updates: the relay refused a batch", exc_info=True)


def _close_quietly(sink) -> None:
    try:
        sink.close()
    except Exception:  # noqa: BLE001
        log.debug("live updates: closing a sink failed", exc_info=True)


def make_sink():
    if in_memory_layer():
        return RelaySink()
    config = _pubsub_layer_config()
    return RedisPipelineSink(config) if config is not None else LayerSink()


class Publisher:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pending: collections.deque[Batch] = collections.deque()
        self._wake = threading.Event()
        self._busy = False
        self.dropped = 0
        self.sends = 0  # sends to the sink (each carries every batch of one window)

    def submit(self, batch: Batch) -> None:
        """Queue a batch for sending; never blocks, never raises."""
        try:
            pending = self._ensure()
            if len(pending) >= _conf("QUEUE_MAX_BATCHES"):
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning("live updates: the send queue is full; %d batches dropped so far", self.dropped)
                return
            pending.append(batch)  # deque.append is atomic
            if not self._wake.is_set():  # already set while the sender has not taken the list yet
                self._wake.set()
        except Exception:  # noqa: BLE001
            log.warning("live updates: could not queue a batch", exc_info=True)

    def _ensure(self) -> collections.deque:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:  # first use, or a forked child: a list and a sender of its own
                    self._pending, self._wake, self._busy = collections.deque(), threading.Event(), False
                    threading.Thread(target=self._run, args=(self._pending, self._wake),
                                     name="gatehouse-live-publisher", daemon=True).start()
                    self._pid = pid
        return self._pending

    def _run(self, pending: collections.deque, wake: threading.Event) -> None:
        sink, sink_key = None, None
        last_send = 0.0
        while True:
            wake.wait()
            self._busy = True  # until what it takes is sent (flush and pending() wait for it)
            # The on-commit callbacks of one transaction, and the next transactions of a busy
            # process, come within a few ms: one send for all of them.
            time.sleep(max(WINDOW_SECONDS, last_send + MIN_INTERVAL_SECONDS - time.monotonic()))
            last_send = time.monotonic()
            wake.clear()  # before taking: a batch appended from now on sets it again
            batches = []
            while pending:
                batches.append(pending.popleft())
            try:
                key = repr((settings.CHANNEL_LAYERS, settings.GATEHOUSE_LIVE["RELAY_DIR"]))
                if sink is None or key != sink_key:  # settings are read once, but tests change them
                    if sink is not None:
                        _close_quietly(sink)
                    sink, sink_key = make_sink(), key
                envelopes = merge([e for batch in batches for e in batch])
                if envelopes:
                    self.sends += 1
                    sink.send_now(envelopes)
            except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                log.warning("live updates: a batch was not sent", exc_info=True)
            finally:
                self._busy = False

    def pending(self) -> int:
        """Batches queued in this process, plus one while its sender is sending (0: all handled)."""
        if self._pid != os.getpid():
            return 0
        return len(self._pending) + (1 if self._busy or self._wake.is_set() else 0)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued batch was handled (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def merge(envelopes: list[Envelope]) -> list[Envelope]:
    """Consecutive events for the same group become one layer message: one publish, and a socket gets
    them in one write (a gate's opening is its task's state and gate.opened). Only consecutive ones,
    so the order of everything, control messages included, stays the order of the commits."""
    out: list[Envelope] = []
    for group, message in envelopes:
        last = out[-1][1] if out else None
        if (last is not None and out[-1][0] == group and message.get("type") == last.get("type") == "live.event"
                and message.get("unless") == last.get("unless")):
            last["events"] = [*last["events"], *message["events"]]
        else:
            out.append((group, dict(message)))
    return out


publisher = Publisher()
