"""Replies to this process's calls: one reply channel per event loop, shared by every call on it.

A call registers its request id (`expect`), sends, and awaits the future; one task per loop
receives replies in batches and hands each to the call that waits for it. When the channel
layer's server goes away, the calls in flight fail at once with BrokerUnreachable instead of at
their deadlines, and the task tries again with backoff (settings.BUS["RECONNECT_BACKOFF"]).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.exceptions
from channels.layers import BaseChannelLayer

from . import messages
from .conf import backoff_setting
from .exceptions import BadMessage, BrokerUnreachable

# What the channel layer raises when its server does not answer.
BROKER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class ReplyListener:
    """One reply channel per event loop, and the calls waiting on it, by request id."""

    batch = 100

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.channel = f"bus.reply.{messages.new_id()}"
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    def expect(self, message_id: str) -> asyncio.Future[dict[str, Any]]:
        """The future that the reply to `message_id` will resolve; call it before sending."""
        if message_id in self.pending:
            # Replies are matched by request id: two requests in flight with one id would steal
            # each other's reply. A resent message (same id) goes out once its last send is over.
            raise BadMessage(
                f"A request with id {message_id} is already waiting for its reply in this process."
            )
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._listen(), name=f"bus reply listener {self.channel}")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = future
        return future

    def forget(self, message_id: str) -> None:
        """Stop waiting for the reply to `message_id` (it came, or the call gave up)."""
        future = self.pending.pop(message_id, None)
        if future is not None and not future.done():
            # Nobody waits on it any more (the send failed, the deadline passed): a failing
            # receive must not set an error that no one will read.
            future.cancel()

    async def close(self) -> None:
        """Stop receiving on this loop's reply channel."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _listen(self) -> None:
        layer = self.layer
        failures = 0
        while True:
            # Calls that start while this receive is failing send after it, on a fresh connection.
            waiting = list(self.pending.values())
            try:
                replies = await receive_batch(layer, self.channel, self.batch, timeout=5.0)
            except BROKER_ERRORS as exc:
                failures += 1
                if failures == 1:
                    # Often a pooled connection that went stale while Redis restarted: try afresh once.
                    continue
                # Redis is really gone: the calls in flight will not get their replies, so fail
                # them now rather than at their deadline.
                error = BrokerUnreachable(
                    f"Lost the channel layer's server while waiting for a reply ({exc}); the call "
                    "may or may not have run."
                )
                for future in waiting:
                    if not future.done():
                        future.set_exception(error)
                await asyncio.sleep(backoff_setting("RECONNECT_BACKOFF").delay(failures - 1))
                continue
            failures = 0
            for reply in replies:
                future = self.pending.pop(str(reply.get("in_reply_to")), None)  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(reply)
            if replies:
                # Let the callers go on (and send their next requests) before this blocks on
                # Redis again: re-arming the receive is not on anyone's critical path.
                await asyncio.sleep(0)


async def receive_batch(
    layer: BaseChannelLayer, channel: str, most: int, *, timeout: float
) -> list[dict[str, Any]]:
    """Up to `most` messages from `channel`, through the bus layer's batch receive when it has one."""
    batch = getattr(layer, "receive_batch", None)
    if batch is not None:
        received: list[dict[str, Any]] = await batch(channel, most, timeout)
        return received
    try:
        return [await asyncio.wait_for(layer.receive(channel), timeout)]
    except TimeoutError:
        return []
