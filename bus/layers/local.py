"""One reader for a process's process-local channels, handing each message to its channel.

Every Channels consumer receives on a process-local channel of its own (``specific.<process>!
<id>``), and all of a process's such channels share one Redis key. channels-redis lets the
receivers take turns at that key: a lock, two tasks and a cancellation per message and receiver,
one message per round trip. With 1,000 WebSocket consumers waiting, a broadcast wakes all of
them for every turn. Here one task per key pops whole batches and hands each message to its
channel's mailbox: a broadcast costs one round trip and one future per socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bus.conf import backoff_setting

__all__ = ["LocalInbox"]

logger = logging.getLogger(__name__)

Message = dict[str, Any]

#: Messages taken off the shared key per round trip.
_BATCH: Final = 500


@dataclass(slots=True)
class _Mailbox:
    messages: collections.deque[Message] = field(default_factory=collections.deque)
    waiters: collections.deque[asyncio.Future[Message]] = field(default_factory=collections.deque)
    #: Loop time of the last receive that returned or gave up; a box nobody came back to for
    #: ``expiry`` seconds belongs to a consumer that is gone.
    idle_since: float = 0.0
    #: The error that interrupted reading while this box's consumer was busy: its next receive
    #: raises it, so every consumer that may have missed messages hears so.
    lost: Exception | None = None


class LocalInbox:
    """The process-local channels behind one shared key.

    ``pop(count, block)`` takes up to ``count`` messages off the shared key, waiting up to
    ``block`` seconds for the first; each carries its target channel, or a list of them (a
    group message for several consumers of this process), under ``__asgi_channel__``.

    One reader task, on the event loop that receives, pops and hands each message to its
    channel's mailbox, creating the mailbox if needed (a message may arrive before its
    consumer's first receive). Mailboxes outlive loops and ``close``, as channels-redis's
    receive buffers do. A mailbox goes when its receiver gives up (a cancelled receive with
    nothing buffered: the consumer is gone) or when nobody has received from it for ``expiry``
    seconds (what it held has expired). It keeps at most ``capacity(channel)`` messages,
    dropping the oldest. When the key cannot be read, every receiver fails with the error (now
    if it waits, at its next receive if it is busy): its consumer may have missed messages and
    should say so (a WebSocket closes, and its client resumes from its cursor). The reader stops
    by itself once no mailbox is left, after its current pop (at most ``block`` seconds).
    """

    def __init__(
        self,
        pop: Callable[[int, float], Awaitable[list[Message]]],
        *,
        capacity: Callable[[str], int],
        block: float,
        expiry: float,
        name: str,
    ) -> None:
        self._pop = pop
        self._capacity = capacity
        self._block = block
        self._expiry = expiry
        self._name = name
        self._mailboxes: dict[str, _Mailbox] = {}
        self._reader: asyncio.Task[None] | None = None
        self._next_sweep = 0.0

    async def receive(self, channel: str) -> Message:
        """The next message for ``channel``, waiting for it as long as it takes."""
        loop = asyncio.get_running_loop()
        box = self._mailbox(channel, loop)
        if box.lost is not None:
            # Said once; what arrived since the reader came back stays for the next receive.
            lost, box.lost = box.lost, None
            raise lost
        if box.messages:
            box.idle_since = loop.time()
            return box.messages.popleft()
        self._read_on(loop)
        waiter: asyncio.Future[Message] = loop.create_future()
        box.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                box.messages.appendleft(waiter.result())  # delivered as the receive was cancelled
            with contextlib.suppress(ValueError):
                box.waiters.remove(waiter)
            if not box.messages and not box.waiters:
                self._forget(channel)
            raise
        finally:
            box.idle_since = loop.time()

    def close(self) -> None:
        """Stop reading (``close_pools``); waiting receives are cancelled, buffered messages kept."""
        reader, self._reader = self._reader, None
        if reader is not None:
            _cancel(reader)
        for box in self._mailboxes.values():
            for waiter in box.waiters:
                _cancel(waiter)
            box.waiters.clear()

    def _read_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a reader runs on ``loop``, the only one that may receive here."""
        reader = self._reader
        if reader is not None and not reader.done():
            if reader.get_loop() is loop:
                return
            if not reader.get_loop().is_closed() and any(box.waiters for box in self._mailboxes.values()):
                raise RuntimeError(
                    "Two event loops are receiving process-local channels of one channel layer; "
                    "receive them from one loop (Channels consumers all run on the server's)."
                )
            self.close()  # the other loop has stopped receiving: its reader must not steal
        self._reader = loop.create_task(self._read(), name=f"bus local reader {self._name}")

    def _mailbox(self, channel: str, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        box = self._mailboxes.get(channel)
        if box is None:
            box = self._mailboxes[channel] = _Mailbox(idle_since=loop.time())
        return box

    def _forget(self, channel: str) -> None:
        self._mailboxes.pop(channel, None)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while self._mailboxes:
            try:
                messages = await self._pop(_BATCH, self._block)
                for message in messages:
                    self._deliver(message, loop)
                self._sweep(loop)
            except Exception as exc:
                failures += 1
                self._fail_receivers(exc)
                await asyncio.sleep(backoff_setting("RECONNECT_BACKOFF").delay(failures))
                continue
            failures = 0

    def _deliver(self, message: Message, loop: asyncio.AbstractEventLoop) -> None:
        target = message.pop("__asgi_channel__", None)
        channels = target if isinstance(target, list) else [target]
        for channel in channels:
            if not isinstance(channel, str):
                logger.warning("dropped a message on %s without a valid target channel", self._name)
                continue
            box = self._mailbox(channel, loop)
            copy = dict(message) if len(channels) > 1 else message
            while box.waiters:
                waiter = box.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(copy)
                    break
            else:
                if len(box.messages) >= self._capacity(channel):
                    box.messages.popleft()
                    logger.warning("%s is full: dropped its oldest message", channel)
                box.messages.append(copy)

    def _fail_receivers(self, exc: Exception) -> None:
        logger.warning(
            "cannot read process-local channels (%s: %s): failing their receives", type(exc).__name__, exc
        )
        for channel, box in list(self._mailboxes.items()):
            if box.waiters:
                for waiter in box.waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._forget(channel)
            else:
                box.lost = exc

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._expiry
        for channel, box in list(self._mailboxes.items()):
            if not box.waiters and now - box.idle_since > self._expiry:
                self._forget(channel)


def _cancel(future: asyncio.Future[Any]) -> None:
    """Cancel ``future`` now if it belongs to the running loop, else soon on its own loop."""
    loop = future.get_loop()
    if future.done() or loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        future.cancel()
    else:
        loop.call_soon_threadsafe(future.cancel)
