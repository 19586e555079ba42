"""Publishing live messages after commit, off the committing thread.

`submit` is what the `transaction.on_commit` callbacks call (gateway/realtime/events.py): it puts the
batch on an in-process queue and returns at once. One daemon thread per process (started on first
use, again after a fork, so every Celery child has its own) sends the queued batches:

- to the channel layer (channels-redis) with a short timeout per message; errors are logged and the
  messages dropped, and after a failure the layer is left alone for a few seconds, so a dead Redis
  costs the engine nothing, not even a timeout per transition;
- or, when the layer is Channels' in-memory one (the embedded `make run`), to the relay
  (gateway/realtime/relay.py), which the ASGI process drains into its in-memory layer: a Celery
  worker cannot reach another process's memory.

The queue is bounded: when the sender cannot keep up, new batches are dropped (and counted) rather
than held. Live messages are hints; a page resyncs from the API on every (re)connect.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time

from django.conf import settings

log = logging.getLogger(__name__)

Envelope = tuple[str, dict]  # (group name, channel-layer message)
LINGER_SECONDS = 0.002  # how long the sender waits for more batches before sending what it holds
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


class LayerSink:
    """group_send to the configured channel layer, each bounded by PUBLISH_TIMEOUT_SECONDS."""

    def __init__(self):
        from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

        # A layer instance of this thread's own (channels-redis keeps connections per event loop).
        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        self.down_until = 0.0
        self.dropped = 0

    async def send(self, envelopes: list[Envelope]) -> None:
        timeout = _conf("PUBLISH_TIMEOUT_SECONDS")
        for group, message in envelopes:
            if time.monotonic() < self.down_until:
                self.dropped += 1
                continue
            try:
                await asyncio.wait_for(self.layer.group_send(group, message), timeout)
            except Exception as exc:  # noqa: BLE001 - a live message is never worth an error upstream
                self.dropped += 1
                self.down_until = time.monotonic() + _conf("BACKOFF_SECONDS")
                log.warning("live updates: channel layer unavailable (%s: %s); dropping messages for %ss",
                            type(exc).__name__, exc, _conf("BACKOFF_SECONDS"))


class RelaySink:
    """The embedded default: batches go through the relay to the ASGI process."""

    def __init__(self):
        from .relay import Relay

        self.relay = Relay()

    async def send(self, envelopes: list[Envelope]) -> None:
        try:
            self.relay.put(envelopes)
        except Exception:  # noqa: BLE001
            log.warning("live updates: the relay refused a batch", exc_info=True)


class Publisher:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue | None = None
        self.dropped = 0

    def submit(self, batch: Batch) -> None:
        """Queue a batch for sending; never blocks, never raises."""
        try:
            self._ensure().put_nowait(batch)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("live updates: the send queue is full; %d batches dropped so far", self.dropped)
        except Exception:  # noqa: BLE001
            log.warning("live updates: could not queue a batch", exc_info=True)

    def _ensure(self) -> queue.Queue:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    q: queue.Queue = queue.Queue(maxsize=_conf("QUEUE_MAX_BATCHES"))
                    threading.Thread(target=self._run, args=(q,), name="gatehouse-live-publisher",
                                     daemon=True).start()
                    self._queue, self._pid = q, pid
        return self._queue

    def _run(self, q: queue.Queue) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sink, sink_key = None, None
        while True:
            batches = [q.get()]
            # The on-commit callbacks of one transaction run back to back: take what they queued too.
            try:
                while len(batches) < 1000:
                    batches.append(q.get(timeout=LINGER_SECONDS))
            except queue.Empty:
                pass
            try:
                key = repr((settings.CHANNEL_LAYERS, settings.GATEHOUSE_LIVE["RELAY_DIR"]))
                if sink is None or key != sink_key:  # settings are read once, but tests change them
                    sink, sink_key = (RelaySink() if in_memory_layer() else LayerSink()), key
                envelopes = merge([e for batch in batches for e in batch])
                if envelopes:
                    loop.run_until_complete(sink.send(envelopes))
            except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                log.warning("live updates: a batch was not sent", exc_info=True)
            finally:
                for _ in batches:
                    q.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued batch was handled (tests and benchmarks)."""
        q = self._queue
        if q is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while q.unfinished_tasks:
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
