"""Durable channels: at-least-once queues beside the layer's at-most-once channels.

A normal channel loses a message that was popped by a worker that then died. A durable channel
keeps every message it handed out until the worker that holds it says it is done:

* ``durable_send(channel, message, due=None)``: queue it (or hold it until ``due``, a
  ``time.time()``); ``ChannelFull`` beyond ``durable_capacity`` waiting messages. It needs no
  live worker: messages wait for one.
* ``durable_receive(channel, consumer, max_messages, timeout)``: up to ``max_messages``
  ``DurableMessage`` objects, now held by ``consumer`` (a worker id that beats presence on
  ``channel``).
* ``durable_ack(channel, consumer, ids)``: done with them; they leave the queue.
* ``durable_requeue(channel, consumer, id, message=None, due=None)``: give one back, now (a
  worker stopping) or at ``due`` (a retry), optionally replaced by ``message``.
* ``durable_reclaim(channel)``: what consumers without a live presence record hold goes back to
  the queue, each delivery number raised by one and the dead consumer added to its history.
  Workers run it with each heartbeat, so a dead worker's messages are handled again within a
  few heartbeats of its last one; never while its presence lives.
* ``durable_release(channel, consumer, in_hand, idle)``: what ``consumer`` holds in the queue
  but not in hand (a receive whose reply was lost with its connection), held for ``idle``
  seconds, goes back; a live worker runs it with its heartbeat.
* ``durable_depth(channel)``: how many wait, are held, and are delayed.
* ``durable_subscribe(group, channel, ttl)`` / ``durable_subscribers(group)``: the durable
  channels an event group's messages are queued on (a subscriber domain's), each for ``ttl``
  seconds after its last subscribe; unlike a Channels group, for a domain with no worker alive.

Acknowledging and requeueing only act on what the consumer still holds: a worker frozen past
its presence finds, once resumed, that its messages went to another, and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from bus.layers.presence import Message

__all__ = ["DEFAULT_DURABLE_CAPACITY", "DurableDepth", "DurableMessage", "DurableQueues"]

#: Messages a durable channel holds (waiting, held and delayed) before sends get ChannelFull.
DEFAULT_DURABLE_CAPACITY: Final = 100_000

#: Messages moved per reclaim or promotion round; the rest go at the next.
RECLAIM_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class DurableMessage:
    """One message as a durable channel handed it to a worker."""

    id: str
    message: Message
    #: 1 on the first delivery; each worker that died holding it adds one.
    number: int = 1
    #: The workers that died holding it, oldest first.
    history: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DurableDepth:
    waiting: int
    held: int
    delayed: int


class DurableQueues:
    """The durable channel API, validated once over each layer's storage primitives."""

    durable_capacity: int = DEFAULT_DURABLE_CAPACITY

    if TYPE_CHECKING:

        def _require_normal_channel(self, channel: str) -> None: ...

        def require_valid_group_name(self, name: str) -> bool: ...

    # -- storage primitives, implemented by each layer ---------------------------------------

    async def _durable_send(self, channel: str, message: Message, due: float | None) -> bool:
        raise NotImplementedError

    async def _durable_receive(
        self, channel: str, consumer: str, max_messages: int, timeout: float
    ) -> list[DurableMessage]:
        raise NotImplementedError

    async def _durable_ack(self, channel: str, consumer: str, ids: Sequence[str]) -> int:
        raise NotImplementedError

    async def _durable_requeue(
        self, channel: str, consumer: str, id: str, message: Message | None, due: float | None
    ) -> bool:
        raise NotImplementedError

    async def _durable_reclaim(self, channel: str) -> int:
        raise NotImplementedError

    async def _durable_release(
        self, channel: str, consumer: str, in_hand: Collection[str], idle: float
    ) -> int:
        raise NotImplementedError

    async def _durable_depth(self, channel: str) -> DurableDepth:
        raise NotImplementedError

    async def _subscription_store(self, group: str, channel: str, expires_at: float) -> None:
        raise NotImplementedError

    async def _subscriptions_load(self, group: str) -> dict[str, float]:
        raise NotImplementedError

    async def _subscriptions_prune(self, group: str, channels: Sequence[str]) -> None:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------

    async def durable_send(self, channel: str, message: Message, *, due: float | None = None) -> None:
        """Queue ``message`` on durable ``channel`` (delayed until ``due``, if given)."""
        from channels.exceptions import ChannelFull

        self._require_normal_channel(channel)
        if not isinstance(message, dict):
            raise TypeError("message is not a dict")
        if not await self._durable_send(channel, message, due):
            raise ChannelFull(channel)

    async def durable_receive(
        self, channel: str, consumer: str, max_messages: int, timeout: float
    ) -> list[DurableMessage]:
        """Wait up to ``timeout`` s for a message; take up to ``max_messages``, held by ``consumer``."""
        self._require_normal_channel(channel)
        _require_consumer(consumer)
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        return await self._durable_receive(channel, consumer, max_messages, max(0.0, timeout))

    async def durable_ack(self, channel: str, consumer: str, ids: Sequence[str]) -> int:
        """Done with these deliveries; how many ``consumer`` still held (the rest went elsewhere)."""
        self._require_normal_channel(channel)
        _require_consumer(consumer)
        return await self._durable_ack(channel, consumer, list(ids)) if ids else 0

    async def durable_requeue(
        self,
        channel: str,
        consumer: str,
        id: str,
        *,
        message: Message | None = None,
        due: float | None = None,
    ) -> bool:
        """Give a delivery back (replaced by ``message`` if given), now or at ``due``."""
        self._require_normal_channel(channel)
        _require_consumer(consumer)
        return await self._durable_requeue(channel, consumer, id, message, due)

    async def durable_reclaim(self, channel: str) -> int:
        """Put back what dead consumers hold; how many messages went back."""
        self._require_normal_channel(channel)
        return await self._durable_reclaim(channel)

    async def durable_release(
        self, channel: str, consumer: str, in_hand: Collection[str], idle: float
    ) -> int:
        """Put back what `consumer` holds, idle `idle` seconds, but has not in hand; how many."""
        self._require_normal_channel(channel)
        _require_consumer(consumer)
        return await self._durable_release(channel, consumer, in_hand, idle)

    async def durable_depth(self, channel: str) -> DurableDepth:
        self._require_normal_channel(channel)
        return await self._durable_depth(channel)

    async def durable_subscribe(self, group: str, channel: str, ttl: float) -> None:
        """Queue ``group``'s durable messages on ``channel`` for the next ``ttl`` seconds."""
        self._require_normal_channel(channel)
        self.require_valid_group_name(group)
        await self._subscription_store(group, channel, time.time() + ttl)

    async def durable_subscribers(self, group: str) -> list[str]:
        """The durable channels subscribed to ``group`` now."""
        self.require_valid_group_name(group)
        subscribed = await self._subscriptions_load(group)
        now = time.time()
        expired = [channel for channel, expires_at in subscribed.items() if expires_at < now]
        if expired:
            await self._subscriptions_prune(group, expired)
        return sorted(channel for channel, expires_at in subscribed.items() if expires_at >= now)


def _require_consumer(consumer: str) -> None:
    if not consumer or "," in consumer:
        raise ValueError(f"consumer must be a non-empty name without commas, got {consumer!r}")


def parse_history(raw: bytes | str) -> tuple[str, ...]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return tuple(name for name in text.split(",") if name)
