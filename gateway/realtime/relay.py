"""The embedded default's path from any process to the ASGI server's in-memory channel layer.

Channels' InMemoryChannelLayer reaches only the sockets of its own process, and the embedded
`make run` has two processes that publish (Daphne, for decisions made in the portal and the API;
the Celery worker, for task states). So, with the in-memory layer, every process publishes into
a kombu queue on the filesystem transport (the one the embedded Celery already uses: no server,
a directory under GATEHOUSE_VAR_DIR), and the ASGI process runs one drainer thread that takes
batches off it and hands them to its layer on the server's event loop. Batches older than
RELAY_MAX_AGE_SECONDS are dropped: nobody waits for a stale hint, and a page resyncs on reconnect.

With channels-redis (tests, production) none of this runs: every process reaches the layer directly.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)
QUEUE_NAME = "gatehouse-live"


def _connection():
    from kombu import Connection

    root = Path(settings.GATEHOUSE_LIVE["RELAY_DIR"])
    for sub in ("in", "processed", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Connection("filesystem://", transport_options={
        "data_folder_in": str(root / "in"), "data_folder_out": str(root / "in"),
        "processed_folder": str(root / "processed"), "control_folder": str(root / "control"),
        "store_processed": False, "polling_interval": settings.GATEHOUSE_LIVE["RELAY_POLL_SECONDS"],
    })


class Relay:
    def __init__(self):
        self.connection = _connection()
        self.queue = self.connection.SimpleQueue(QUEUE_NAME)

    def put(self, envelopes) -> None:
        self.queue.put({"at": time.time(), "envelopes": [[g, m] for g, m in envelopes]}, serializer="json")

    def get(self, timeout: float):
        """The next batch's envelopes, or None after `timeout` seconds (stale batches skipped)."""
        try:
            message = self.queue.get(block=True, timeout=timeout)
        except self.queue.Empty:
            return None
        message.ack()
        body = message.payload
        if time.time() - body.get("at", 0) > settings.GATEHOUSE_LIVE["RELAY_MAX_AGE_SECONDS"]:
            return []
        return [(g, m) for g, m in body.get("envelopes", [])]

    def close(self) -> None:
        self.queue.close()
        self.connection.release()


_drainer_lock = threading.Lock()
_drainer: threading.Thread | None = None
_target: tuple = (None, None)  # (layer, event loop) of the process's hub, once it started


def start_drainer() -> None:
    """Start (once per process) the thread that empties the relay. Called when the ASGI application
    is loaded, so that batches never pile up in the directory; until the hub attaches (its first
    socket), there is no socket in this process to deliver them to and they are dropped."""
    global _drainer
    with _drainer_lock:
        if _drainer is None or not _drainer.is_alive():
            _drainer = threading.Thread(target=_drain, name="gatehouse-live-relay", daemon=True)
            _drainer.start()


def attach(layer) -> None:
    """From then on, batches go to `layer` on the running event loop (the hub's)."""
    global _target
    _target = (layer, asyncio.get_running_loop())
    start_drainer()


def _drain() -> None:
    relay = None
    while True:
        try:
            if relay is None:
                relay = Relay()
            envelopes = relay.get(timeout=1.0)
            layer, loop = _target
            if envelopes and loop is not None and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(_send(layer, envelopes), loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - keep draining; a broken relay is rebuilt
            log.warning("live updates: relay drain failed", exc_info=True)
            relay = None
            time.sleep(1.0)


async def _send(layer, envelopes) -> None:
    for group, message in envelopes:
        await layer.group_send(group, message)
