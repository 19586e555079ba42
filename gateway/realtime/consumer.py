"""The portal's websocket, /ws/live/: one consumer per socket.

At connect the session (Channels' AuthMiddlewareStack, the portal's Django session cookie) must
name an active user with a membership; otherwise the socket is closed with 4401 (not signed in)
or 4403 (no access). The consumer then asks gateway.selectors.scope_for, the one place that decides
what a user may read, for the banners the user's clearances dominate now, and joins the group of
each (groups.label_group), plus the user's own group and the tenant's control group, through the
process's Hub (below). The join is the filter: a message about an object is only ever sent to the
group of its tenant and label. Before a message goes on to a browser the hub re-checks, cheaply,
that the socket still holds the group it came through (a message in flight while the groups
changed is dropped).

The groups are recomputed (a "recheck") when
- the user's clearance, roles or account change (the services send live.recheck to the user's group),
- a label is registered in the tenant after the socket connected (live.recheck to the tenant group:
  the socket joins the new label's group if its user may read it),
- a clearance's validity window opens or closes (a timer set from the clearance rows),
- the user logs out (Django's user_logged_out signal, events.py),
- every RECHECK_SECONDS (jittered) in any case: a session may also end without a signal (a
  back-channel logout deletes it, or it expires).
A recheck leaves the groups no longer allowed, joins the new ones and sends {"type": "resync"} to the
browser, which re-fetches what it shows through the scoped API; a user without access any more has
the socket closed (4403), a session that ended has it closed with 4401.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from importlib import import_module

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from .groups import label_group, tenant_group, user_group

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
SERVER_SEND = "gatehouse.server_send"  # the scope key of the server's own `send` (ServerSendTap)


class ServerSendTap:
    """The outermost layer of the websocket stack (gateway/asgi.py): keeps the server's own `send`
    callable in the scope, where the consumer finds the server's websocket protocol (`_wire`). The
    session middleware's wrapper of `send` only acts on HTTP responses, so for a socket's frames
    nothing is skipped by writing them below it."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        return await self.inner(dict(scope, **{SERVER_SEND: send}), receive, send)


def _wire(send):
    """The autobahn protocol under Daphne's `send` for this socket, or None (another ASGI server,
    Channels' test communicator): the hub then writes through the ASGI `send` as usual.

    Daphne gives each application instance `partial(Server.handle_reply, protocol)`; nothing else is
    assumed, and anything else falls back to the ASGI path. Why: the ASGI path costs, per socket and
    frame, the session wrapper, Daphne's reply dispatch, autobahn's framing and its debug logging's
    argument formatting (bench/live_updates.py: most of the server's time on a thousand-socket
    broadcast). Autobahn frames a broadcast once for any number of sockets (`prepareMessage`, its API
    for this); the hub writes those bytes to each socket's transport."""
    daphne = sys.modules.get("daphne.server")  # never imported here: it installs a Twisted reactor
    if daphne is None or not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    from autobahn.websocket.protocol import WebSocketServerProtocol

    protocol = send.args[0]
    if getattr(send.func, "__func__", None) is not daphne.Server.handle_reply:
        return None
    return protocol if isinstance(protocol, WebSocketServerProtocol) else None


def _send_now(transport, data: bytes) -> None:
    """Write `data` to a socket's transport, straight to the socket when nothing is waiting before it.

    Twisted's `write` only buffers and has the reactor watch the socket for writability, then sends on
    its next turn and stops watching: per socket two epoll changes and a dispatch, which on a
    thousand-socket broadcast cost as much as everything else together. When the transport holds
    nothing unsent (so order is kept) the bytes go to the kernel at once; what the kernel does not
    take (a slow reader), and any transport that is not plain TCP (TLS), goes through `write` as usual.
    """
    from twisted.internet import tcp

    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and not getattr(transport, "_tempDataBuffer", True)
            and getattr(transport, "offset", -1) == len(getattr(transport, "dataBuffer", b"-"))):
        try:
            sent = transport.socket.send(data)
        except OSError:  # would block, or the peer went: the transport's own write handles either
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


def _wire_open(wire) -> bool:
    """Frames may go straight to the transport: the socket is open, uncompressed (Daphne negotiates
    no permessage-deflate), and autobahn holds nothing queued to send before them."""
    return (wire.state == wire.STATE_OPEN and wire._perMessageCompress is None and not wire.send_queue
            and wire.transport is not None)


@dataclass(frozen=True)
class Access:
    user_id: int
    tenant_id: int
    groups: frozenset[str]  # label groups the user may read now
    next_change: float | None  # seconds until a clearance's validity window opens or closes


class SessionGone(Exception):
    pass


def _session_alive(session_key: str | None, user_id: int) -> bool:
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return str(store.load().get("_auth_user_id", "")) == str(user_id)


def _provider_agrees(session_key: str) -> bool:
    """oidc mode: Keycloak still holds the session's access token active (introspection, as the
    portal middleware does on each request). An expired token is left to the page's next request,
    which refreshes it or logs the session out (and the next recheck sees the session gone)."""
    from gateway.identity import tokens
    from gateway.identity.conf import oidc_enabled
    from gateway.identity.views import SESSION_KEY

    if not oidc_enabled():
        return True
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load().get(SESSION_KEY)
    if not isinstance(data, dict):
        return True  # a session of the Django admin's own login: left to Django, as the middleware does
    if not data.get("access_token") or time.time() >= data.get("expires_at", 0):
        return True
    try:
        claims = tokens.access_token_claims(data["access_token"])
        tokens.introspect(data["access_token"], claims)
    except tokens.TokenRefused:
        return False
    except tokens.ProviderUnavailable:
        return True  # as the middleware: Keycloak not answering does not end a session
    return True


def access_for(user_id: int, session_key: str | None) -> Access | None:
    """What the user may receive now, or None. Raises SessionGone when the session has ended."""
    from django.contrib.auth import get_user_model
    from rest_framework.exceptions import APIException

    from gateway import dbscope
    from gateway.errors import GatehouseError
    from gateway.models import Clearance
    from gateway.selectors import scope_for

    if not _session_alive(session_key, user_id) or not _provider_agrees(session_key):
        raise SessionGone()
    try:
        user = get_user_model().objects.select_related("membership").filter(pk=user_id).first()
        if user is None or not user.is_active:
            return None
        try:
            scope = scope_for(user)  # the one place; binds this connection to the user's tenant
        except (GatehouseError, APIException):
            return None
        groups = frozenset(label_group(scope.tenant_id, banner) for banner in scope.banners)
        now = time.time()
        edges = [t.timestamp() for row in Clearance.objects.filter(user_id=user.pk, tenant_id=scope.tenant_id)
                 .values_list("valid_from", "valid_until") for t in row if t is not None and t.timestamp() > now]
        return Access(user.pk, scope.tenant_id, groups, (min(edges) - now) if edges else None)
    finally:
        dbscope.on_request_boundary(None)  # the connection goes back to the pool unbound


class Hub:
    """The process's one member of each group its sockets hold.

    A broadcast to a thousand sockets of one server process arrives here once: it is decoded and
    encoded once, and the text goes to each local socket still holding the group (the socket's own
    re-check). Going through one channel per socket instead (Channels' usual pattern) costs, per
    socket and message, a decode, a dispatch and a hop to the database thread, which made a
    thousand-socket broadcast take over a second (bench/live_updates.py).

    Control messages (live.recheck) come through the hub too, in the order the layer delivered them
    relative to the events: a recheck of a user (a lowered clearance) suspends their sockets at once,
    before any later event is looked at, until the recheck has recomputed their groups.
    """

    def __init__(self):
        self.members: dict[str, set[LiveConsumer]] = {}
        self.layer = None
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.lock: asyncio.Lock | None = None

    def _lock(self) -> asyncio.Lock:
        if self.lock is None:
            self.lock = asyncio.Lock()
        return self.lock

    async def _start(self) -> None:
        """Under the lock: the hub's channel and its receive loop, once per process (again if the
        loop ended)."""
        from channels.layers import get_channel_layer

        if self.task is not None and not self.task.done():
            return
        self.layer = get_channel_layer()
        from .publisher import in_memory_layer

        if in_memory_layer():
            from .relay import attach

            attach(self.layer)
        self.channel = await self.layer.new_channel("gatehouse-live-hub.")
        for group in self.members:  # after a restart of the receive loop
            await self.layer.group_add(group, self.channel)
        self.task = asyncio.ensure_future(self._receive())

    async def join(self, group: str, consumer: LiveConsumer) -> None:
        async with self._lock():
            await self._start()
            members = self.members.setdefault(group, set())
            first = not members
            members.add(consumer)
            if first:
                await self.layer.group_add(group, self.channel)

    async def leave(self, group: str, consumer: LiveConsumer) -> None:
        async with self._lock():
            members = self.members.get(group)
            if members is None:
                return
            members.discard(consumer)
            if not members:
                del self.members[group]
                try:
                    await self.layer.group_discard(group, self.channel)
                except Exception:  # noqa: BLE001 - an extra subscription only costs dropped messages
                    log.warning("live updates: could not leave group %s", group, exc_info=True)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
                await self.deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad message must not stop the process's live updates
                log.warning("live updates: hub failed on a message", exc_info=True)
                await asyncio.sleep(0.1)

    async def deliver(self, message: dict) -> None:
        group = message.get("group")
        members = list(self.members.get(group, ()))
        kind = message.get("type")
        if kind == "live.event":
            texts, frames, unless = None, None, message.get("unless")
            for consumer in members:
                if consumer.suspended or group not in consumer.groups_held or unless in consumer.groups_held:
                    continue
                texts = texts or [json.dumps(event, separators=(",", ":")) for event in message["events"]]
                wire = consumer.wire
                if wire is not None and _wire_open(wire):
                    if frames is None:  # framed once for every socket of the process
                        frames = b"".join(wire.factory.prepareMessage(text.encode("utf-8")).payloadHybi
                                          for text in texts)
                    _send_now(wire.transport, frames)  # never blocks: what the kernel refuses is buffered
                    continue
                for text in texts:  # written together: the server sends them in one go
                    await consumer.push(text)  # buffered by the server: no socket waits for another
        elif kind == "live.recheck":
            announce = message.get("why") == "user"
            for consumer in members:
                if announce:
                    consumer.suspended = True  # nothing more until its groups are recomputed
                asyncio.ensure_future(consumer.recheck(announce=announce))


hub = Hub()


class LiveConsumer(AsyncJsonWebsocketConsumer):
    # No channel per socket: the process's hub is the member of the groups (see Hub). An alias that
    # names no configured layer is how Channels is told so.
    channel_layer_alias = "gatehouse-live-none"
    groups_held: frozenset[str] = frozenset()
    control: frozenset[str] = frozenset()
    access: Access | None = None
    suspended = False
    wire = None  # the server's websocket protocol, when the hub may write frames to it (see _wire)

    async def connect(self):
        """Groups first, then the handshake: once the browser sees the socket open, every message
        for it reaches it. A refusal is an accepted socket closed at once with 4401 or 4403, so the
        browser sees why (a handshake refused before accept shows only as a failed connection)."""
        user = self.scope.get("user")
        self.timer: asyncio.TimerHandle | None = None
        self.rechecking = asyncio.Lock()
        self.wire = _wire(self.scope.get(SERVER_SEND))
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        try:
            access = await database_sync_to_async(access_for)(self.user_id, self.session_key)
        except SessionGone:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        if access is None:
            await self._refuse(CLOSE_FORBIDDEN)
            return
        self.control = frozenset({user_group(access.user_id), tenant_group(access.tenant_id)})
        for group in self.control:
            await hub.join(group, self)
        await self._apply(access)
        await self.accept()

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code):
        if getattr(self, "timer", None) is not None:
            self.timer.cancel()
        groups, self.groups_held, self.access = [*self.groups_held, *self.control], frozenset(), None
        self.control = frozenset()
        for group in groups:
            await hub.leave(group, self)

    async def receive_json(self, content, **kwargs):
        pass  # the browser has nothing to say; it reads through the API

    async def push(self, text: str) -> None:
        """One frame to the browser (called by the hub for each local socket)."""
        try:
            await self.base_send({"type": "websocket.send", "text": text})  # the server's own send
        except Exception:  # noqa: BLE001 - a socket closing meanwhile
            pass

    async def _apply(self, access: Access) -> bool:
        """Hold exactly the groups of `access`; returns whether anything changed."""
        leave = self.groups_held - access.groups
        join = access.groups - self.groups_held
        self.groups_held = self.groups_held - leave  # stop forwarding before leaving
        for group in leave:
            await hub.leave(group, self)
        for group in join:
            await hub.join(group, self)
        self.groups_held, self.access = access.groups, access
        self._schedule(access.next_change)
        return bool(leave or join)

    def _schedule(self, next_change: float | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        # Jittered, so that sockets opened together (a server restart) do not recheck together.
        delay = float(settings.GATEHOUSE_LIVE["RECHECK_SECONDS"]) * random.uniform(0.8, 1.2)
        if next_change is not None:
            delay = min(delay, next_change + 0.5)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(delay, lambda: asyncio.ensure_future(self.recheck()))

    async def recheck(self, *, announce: bool = False) -> None:
        """Recompute the groups; tell the browser to resync when they changed or `announce`."""
        try:
            async with self.rechecking:
                if self.access is None:
                    return
                try:
                    access = await database_sync_to_async(access_for)(self.user_id, self.session_key)
                except SessionGone:
                    await self._drop(CLOSE_UNAUTHENTICATED)
                    return
                except Exception:  # noqa: BLE001 - the database was not there: hold nothing new, try later
                    log.warning("live updates: recheck failed", exc_info=True)
                    self._schedule(5.0)
                    return
                if access is None or access.tenant_id != self.access.tenant_id:
                    await self._drop(CLOSE_FORBIDDEN)
                    return
                changed = await self._apply(access)
                if changed or announce:
                    await self.send_json({"type": "resync"})
        finally:
            self.suspended = False

    async def _drop(self, code: int) -> None:
        await self.disconnect(code)
        await self.close(code=code)
