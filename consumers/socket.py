"""`/ws/`: events for a page, designed to die: heartbeats, a lifetime, resume by cursor, bounded backlog.

The protocol (JSON text frames). The client sends:
    {"type": "resume", "cursor": "<epoch:offset>" | null}   once, first; null means "I just loaded my state"
    {"type": "ack", "cursor": "<epoch:offset>"}             what it has shown (bounds its backlog)
    {"type": "pong"}                                        the answer to a ping (any frame will do)
How often: every frame is at most MAX_FRAME bytes (4 KiB). An ack that acknowledges at least one
event not acknowledged before is free: at most one per event sent, so a page may acknowledge every
event however fast they come. Every other frame (pongs, a repeated or stale ack, anything else)
takes a token from a bucket of BURST (30) that refills at RATE (10) per second.
The server sends:
    {"type": "hello", "cursor", "topics", "heartbeat", "lifetime"}
    {"type": "event", "cursor", "topic", "kind", "data"}    missed events first, then live ones
    {"type": "reload", "cursor", "reason"}                  the cursor cannot be resumed: load state
                                                            over HTTP, then go on from this cursor
    {"type": "ping"}                                        every `heartbeat` seconds
    {"type": "error", "message"}                            a frame it could not use; the socket stays
Close codes: 4000 lifetime reached (reconnect and resume at once), 4001 heartbeat missed,
4002 too slow (too many unacknowledged events; resume), 4003 the channel layer's server was lost
or could not be reached for a resume (live events may have been missed: reconnect with backoff and
resume), 4008 a frame too large, or frames too frequent. After its close the server sends nothing
more and ignores what the client still sends.
A handshake from a foreign Origin is refused before the socket opens (HTTP 403).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus import metrics
from bus.threads import in_pool

from . import events

logger = logging.getLogger(__name__)

LIFETIME_REACHED, HEARTBEAT_MISSED, TOO_SLOW, LAYER_LOST, POLICY = 4000, 4001, 4002, 4003, 4008
#: What the channel layer raises when its server cannot be reached.
LAYER_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

DEFAULTS = {
    "HEARTBEAT": 15.0,  # seconds between pings; silence for twice that closes the socket
    "LIFETIME": 3600.0,  # seconds a socket lives before the server closes it with 4000
    "LIFETIME_JITTER": 0.1,  # up to this fraction earlier: sockets opened together reconnect apart
    "MAX_UNACKED": 200,  # events sent but not acknowledged before the socket is too slow
    "MAX_FRAME": 4096,  # bytes in one client frame
    "RATE": 10.0,  # client frames per second, sustained
    "BURST": 30,  # client frames at once
}


def option(name: str) -> Any:
    """One of settings.EDGE_WEBSOCKET, falling back to DEFAULTS (read per use: tests override it)."""
    configured: dict[str, Any] = getattr(settings, "EDGE_WEBSOCKET", {})
    return configured[name] if name in configured else DEFAULTS[name]


#: Offsets a socket remembers having sent, to tell a late (overtaken) push from a repeated one.
_SENT_KEPT = 2_000


class EventsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no type hints
    """One browser tab's event stream."""

    #: Set by the first close: nothing is sent after it (daphne raises on a send to a closing socket).
    closed = False

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Channels' ``AsyncConsumer.__call__`` with one reader task per source instead of its
        ``await_many_dispatch``, which starts a task and an ``asyncio.wait`` for every message: a
        fifth of daphne's CPU in a broadcast to 5,000 sockets (bench/edge.py). Handlers still run
        one at a time."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        self.base_send = send
        turn = asyncio.Lock()

        async def read(source: Callable[[], Awaitable[dict[str, Any]]]) -> None:
            while True:
                message = await source()
                async with turn:
                    await self.dispatch(message)

        readers = [asyncio.ensure_future(read(source)) for source in sources]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            for reader in done:
                reader.result()
        except StopConsumer:
            pass
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def connect(self) -> None:
        # The signed-in customer's name, read once at the handshake (consumers/customer.py).
        self.customer: str | None = self.scope.get("customer")
        self.topics = [events.STOCK] + ([events.orders_topic(self.customer)] if self.customer else [])
        self.groups_joined: list[str] = []
        self.resumed = False
        self.buffer: list[dict[str, Any]] = []  # live events that arrive while missed ones are replayed
        # Offsets at or below `floor` are the page's already; above it, `sent` holds what went out.
        self.floor = -1
        self.sent: set[int] = set()
        self.unacked: list[int] = []  # sorted: a push may be overtaken by a later one
        self.tokens = float(option("BURST"))
        self.refilled = self.last_heard = time.monotonic()
        await self.accept()
        metrics.websockets_open.inc()
        # Loop timers, not a task each: a sleeping task costs about 1 KiB per socket (bench/edge.py).
        loop = asyncio.get_running_loop()
        lifetime = option("LIFETIME") * (1 - random.uniform(0, option("LIFETIME_JITTER")))
        self.timers = [
            loop.call_later(option("HEARTBEAT"), self._heartbeat),
            loop.call_later(lifetime, self._expire),
        ]

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its thread hop to close database connections before every
        message: a broadcast would queue one hop per socket. Database work here runs through
        `in_pool`, which closes stale connections in its own threads."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # Channels sets `channel_receive` to the layer's receive for this socket's channel just before
    # it starts reading; the setter keeps that and reads through `_receive_or_lost` instead.
    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        return self._receive_or_lost

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._layer_receive = receive

    async def _receive_or_lost(self) -> dict[str, Any]:
        """The layer's next message; its server gone becomes a message, not a crashed consumer."""
        try:
            return await self._layer_receive()
        except LAYER_ERRORS as exc:
            return {"type": "layer.lost", "error": f"{type(exc).__name__}: {exc}"}

    async def layer_lost(self, message: dict[str, Any]) -> None:
        """Live events may have been missed: close, so the page resumes from its cursor."""
        if not self.closed:
            logger.info("Closing a socket: the channel layer was lost (%s).", message["error"])
            await self.close(code=LAYER_LOST, reason="events interrupted: reconnect and resume")

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close once; the client's frames already on their way are then ignored."""
        if not self.closed:
            self.closed = True
            await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "timers"):
            metrics.websockets_open.dec()
        for timer in getattr(self, "timers", []):
            timer.cancel()
        try:
            for group in getattr(self, "groups_joined", []):
                await self.channel_layer.group_discard(group, self.channel_name)
        except LAYER_ERRORS:
            pass  # the layer's server is gone; group memberships expire there on their own

    # -- frames from the client -------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closed:
            return  # sent before the client heard the close
        self.last_heard = time.monotonic()
        raw = text_data.encode() if text_data is not None else (bytes_data or b"")
        too_large = len(raw) > option("MAX_FRAME")
        message = None if too_large else _frame(raw)
        # An ack of new events is paid for by the events it acknowledges; every other frame by a token.
        acknowledged = message is not None and message["type"] == "ack" and self._acknowledge(message)
        if too_large or not (acknowledged or self._take_token()):
            await self.close(code=POLICY, reason="frames too large or too frequent")
            return
        if message is None:
            await self._send(
                {"type": "error", "message": 'Frames are JSON objects with a "type": resume, ack or pong.'}
            )
            return
        kind = message["type"]
        if kind == "resume" and not self.resumed:
            cursor = message.get("cursor")
            try:
                await self._resume(cursor if isinstance(cursor, str) else None)
            except LAYER_ERRORS as exc:  # Redis is down: like losing it while the socket is open
                await self.layer_lost({"error": f"{type(exc).__name__}: {exc}"})
        elif kind not in ("ack", "pong"):
            await self._send({"type": "error", "message": f"Unknown or repeated frame type {kind!r}."})

    def _take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(option("BURST")), self.tokens + (now - self.refilled) * option("RATE"))
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def _resume(self, cursor: Any) -> None:
        # Join first, so nothing published while the missed events are read slips between the two.
        for topic in self.topics:
            group = events.group_for(topic)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        head = await in_pool(events.head)
        await self._send(
            {
                "type": "hello",
                "cursor": head,
                "topics": self.topics,
                "heartbeat": option("HEARTBEAT"),
                "lifetime": option("LIFETIME"),
            }
        )
        if isinstance(cursor, str) and cursor:
            try:
                for entry in await in_pool(events.since, cursor, self.topics, int(option("MAX_UNACKED"))):
                    await self._deliver(entry.as_message())
            except events.CursorGone as gone:
                await self._send({"type": "reload", "cursor": head, "reason": str(gone)})
                self.floor = _offset(head)
        else:
            self.floor = _offset(head)
        self.resumed = True
        for message in self.buffer:
            await self._deliver(message)
        self.buffer.clear()

    def _acknowledge(self, message: dict[str, Any]) -> bool:
        """Forget the events up to the ack's cursor; True when there was at least one."""
        cursor = message.get("cursor")
        acked = _offset(cursor) if isinstance(cursor, str) else -1
        if not self.unacked or self.unacked[0] > acked:
            return False
        del self.unacked[: bisect.bisect_right(self.unacked, acked)]
        return True

    # -- events from the log ------------------------------------------------------

    async def log_event(self, message: dict[str, Any]) -> None:
        """A live event pushed by the presentation worker (group message "log.event")."""
        event = {**message, "type": "event"}
        if not self.resumed:
            self.buffer.append(event)
            return
        await self._deliver(event)

    async def _deliver(self, event: dict[str, Any]) -> None:
        offset = _offset(event["cursor"])
        if offset <= self.floor or offset in self.sent:
            return  # replayed already, or pushed twice
        if len(self.unacked) >= option("MAX_UNACKED"):
            await self.close(code=TOO_SLOW, reason="too slow: resume from your cursor")
            return
        # Not dropped when lower than what went out last: pushes from concurrent presentation
        # handlers can cross, and an overtaken event would be lost to this page for good.
        self.sent.add(offset)
        if len(self.sent) > _SENT_KEPT:
            self.floor = sorted(self.sent)[-_SENT_KEPT // 2]
            self.sent = {sent for sent in self.sent if sent > self.floor}
        bisect.insort(self.unacked, offset)
        await self._send(event)

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            await self.send(text_data=json.dumps(message))

    # -- designed to die ------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = option("HEARTBEAT")
        if time.monotonic() - self.last_heard > 2 * interval:
            _run_soon(self.close(code=HEARTBEAT_MISSED, reason="heartbeat missed"))
            return
        _run_soon(self._send({"type": "ping"}))
        self.timers[0] = asyncio.get_running_loop().call_later(interval, self._heartbeat)

    def _expire(self) -> None:
        _run_soon(self.close(code=LIFETIME_REACHED, reason="lifetime reached: reconnect and resume"))


#: The timers' sends and closes while they run (the event loop keeps only weak references to tasks).
_running: set[asyncio.Task[None]] = set()


def _run_soon(step: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(step)
    _running.add(task)
    task.add_done_callback(_running.discard)


def _frame(raw: bytes) -> dict[str, Any] | None:
    """A client frame as a JSON object with a "type", or None when it is not one."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested too deep
        return None
    return message if isinstance(message, dict) and "type" in message else None


def _offset(cursor: str) -> int:
    parsed = events.parse_cursor(cursor)
    return parsed[1] if parsed is not None else -1
