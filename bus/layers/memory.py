"""``InMemoryBusLayer``: Channels' in-memory layer with the bus extension API, for one process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import heapq
import itertools
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from channels.layers import InMemoryChannelLayer  # type: ignore[import-untyped, unused-ignore]

from bus.layers.durable import DurableDepth, DurableMessage, DurableQueues
from bus.layers.presence import BusExtensions, Message

__all__ = ["InMemoryBusLayer"]

_Entry = tuple[float, Message]  # (expires_at, message), as the parent stores them


@dataclass
class _DurableChannel:
    """A durable channel in memory: what waits, what each consumer holds, what is delayed."""

    ready: collections.deque[DurableMessage] = field(default_factory=collections.deque)
    held: dict[str, dict[str, DurableMessage]] = field(default_factory=dict)
    delayed: list[tuple[float, int, DurableMessage]] = field(default_factory=list)  # a heap by due time
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def promote(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])

    def put(self, delivery: DurableMessage, due: float | None, order: int) -> None:
        if due is not None and due > time.time():
            heapq.heappush(self.delayed, (due, order, delivery))
        else:
            self.ready.append(delivery)
            self.arrived.set()


class InMemoryBusLayer(DurableQueues, BusExtensions, InMemoryChannelLayer):  # type: ignore[misc]
    """Channels' ``InMemoryChannelLayer`` with the bus extension API, for tests and dev.

    It works around a bug of Channels' own layer (channels 4.3, ``receive``): the ``finally``
    after its wait drops the channel's queue from ``self.channels`` whenever it is empty, even
    while another receiver still waits on that queue object, so messages sent afterwards go to
    a fresh queue nobody waits on and are lost. (No upstream issue names it as of channels 4.3.2;
    django/channels#1976 reworked the layer around it.) Here a channel's queue stays registered
    while anyone waits on it, and expired messages are skipped on receive. Everything lives
    in this process and is bound to the event loop that first waits on it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parent stores channel_capacity raw, and get_capacity then fails on a dict of globs.
        self.channel_capacity = self.compile_capacities(kwargs.get("channel_capacity") or {})
        # channel -> (queue being waited on, number of waiters)
        self._held: dict[str, tuple[asyncio.Queue[_Entry], int]] = {}
        self._presence: dict[str, dict[str, bytes]] = {}
        self._durable: dict[str, _DurableChannel] = {}
        self._ids = itertools.count(1)
        self._subscribers: dict[str, dict[str, float]] = {}

    def _queue(self, channel: str) -> asyncio.Queue[_Entry]:
        queue: asyncio.Queue[_Entry] | None = self.channels.get(channel)
        if queue is None:
            queue = asyncio.Queue(maxsize=self.get_capacity(channel))
            self.channels[channel] = queue
        return queue

    @contextlib.contextmanager
    def _hold(self, channel: str) -> Iterator[asyncio.Queue[_Entry]]:
        """Keep ``channel``'s queue registered while this receiver waits on it."""
        queue = self._queue(channel)
        _, waiters = self._held.get(channel, (queue, 0))
        self._held[channel] = (queue, waiters + 1)
        try:
            yield queue
        finally:
            held, waiters = self._held[channel]
            if waiters > 1:
                self._held[channel] = (held, waiters - 1)
            else:
                del self._held[channel]
                if held.empty() and self.channels.get(channel) is held:
                    del self.channels[channel]

    def _restore_held(self) -> None:
        for channel, (queue, _) in self._held.items():
            self.channels.setdefault(channel, queue)

    def _clean_expired(self) -> None:
        super()._clean_expired()
        self._restore_held()  # the parent drops queues it emptied, waiters or not

    async def flush(self) -> None:
        await super().flush()
        self._presence = {}
        self._durable = {}
        self._subscribers = {}
        for queue, _ in self._held.values():
            while not queue.empty():
                queue.get_nowait()
        self._restore_held()

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        self._clean_expired()
        with self._hold(channel) as queue:
            while True:
                expires_at, message = await queue.get()
                if expires_at >= time.time():
                    return message

    async def receive_batch(self, channel: str, max_messages: int, timeout: float) -> list[Message]:
        """Same contract as ``RedisBusLayer.receive_batch``; nothing is lost on timeout."""
        self._check_batch_args(channel, max_messages, timeout)
        self._clean_expired()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._hold(channel) as queue:
            while True:
                entries: list[_Entry] = []
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return []
                    try:
                        # Queue.get only takes the item after its wait succeeds, so a timeout
                        # or cancellation here never loses a message.
                        async with asyncio.timeout(remaining):
                            entries.append(await queue.get())
                    except TimeoutError:
                        return []
                while len(entries) < max_messages and not queue.empty():
                    entries.append(queue.get_nowait())
                now = time.time()
                messages = [message for expires_at, message in entries if expires_at >= now]
                if messages:
                    return messages

    async def _live_depth(self, channel: str) -> int:
        self._clean_expired()
        queue: asyncio.Queue[_Entry] | None = self.channels.get(channel)
        return 0 if queue is None else queue.qsize()

    async def _presence_store(self, channel: str, member: str, record: bytes, ttl: float) -> None:
        self._presence.setdefault(channel, {})[member] = record

    async def _presence_load(self, channel: str) -> dict[str, bytes]:
        return dict(self._presence.get(channel, {}))

    async def _presence_prune(self, channel: str, dead: Mapping[str, bytes]) -> None:
        members = self._presence.get(channel, {})
        for member, record in dead.items():
            if members.get(member) == record:
                del members[member]
        if not members:
            self._presence.pop(channel, None)

    async def _presence_remove(self, channel: str, member: str) -> None:
        members = self._presence.get(channel, {})
        members.pop(member, None)
        if not members:
            self._presence.pop(channel, None)

    # -- durable channels (bus.layers.durable), for the life of this process -----------------

    def _durable_channel(self, channel: str) -> _DurableChannel:
        return self._durable.setdefault(channel, _DurableChannel())

    async def _durable_send(self, channel: str, message: Message, due: float | None) -> bool:
        queue = self._durable_channel(channel)
        depth = await self._durable_depth(channel)
        if depth.waiting + depth.held + depth.delayed >= self.durable_capacity:
            return False
        order = next(self._ids)
        queue.put(DurableMessage(str(order), copy.deepcopy(message)), due, order)
        return True

    async def _durable_receive(
        self, channel: str, consumer: str, max_messages: int, timeout: float
    ) -> list[DurableMessage]:
        queue = self._durable_channel(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            queue.promote(time.time())
            if queue.ready:
                taken = [queue.ready.popleft() for _ in range(min(max_messages, len(queue.ready)))]
                holding = queue.held.setdefault(consumer, {})
                for delivery in taken:
                    holding[delivery.id] = delivery
                return [DurableMessage(d.id, copy.deepcopy(d.message), d.number, d.history) for d in taken]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if queue.delayed:
                remaining = min(remaining, max(0.0, queue.delayed[0][0] - time.time()))
            queue.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await queue.arrived.wait()

    async def _durable_ack(self, channel: str, consumer: str, ids: Sequence[str]) -> int:
        holding = self._durable_channel(channel).held.get(consumer, {})
        return sum(holding.pop(id, None) is not None for id in ids)

    async def _durable_requeue(
        self, channel: str, consumer: str, id: str, message: Message | None, due: float | None
    ) -> bool:
        queue = self._durable_channel(channel)
        delivery = queue.held.get(consumer, {}).pop(id, None)
        if delivery is None:
            return False
        order = next(self._ids)
        body = delivery.message if message is None else copy.deepcopy(message)
        queue.put(DurableMessage(str(order), body, delivery.number, delivery.history), due, order)
        return True

    async def _durable_reclaim(self, channel: str) -> int:
        queue = self._durable_channel(channel)
        alive = await self.presence(channel)
        moved = 0
        for consumer in [name for name in queue.held if name not in alive]:
            for delivery in queue.held.pop(consumer).values():
                order = next(self._ids)
                again = DurableMessage(
                    str(order), delivery.message, delivery.number + 1, (*delivery.history, consumer)
                )
                queue.put(again, None, order)
                moved += 1
        return moved

    async def _durable_release(
        self, channel: str, consumer: str, in_hand: Collection[str], idle: float
    ) -> int:
        # In one process a receive cannot lose its reply: what a consumer holds, it has in hand.
        return 0

    async def _durable_depth(self, channel: str) -> DurableDepth:
        queue = self._durable.get(channel)
        if queue is None:
            return DurableDepth(0, 0, 0)
        held = sum(len(holding) for holding in queue.held.values())
        return DurableDepth(len(queue.ready), held, len(queue.delayed))

    async def _subscription_store(self, group: str, channel: str, expires_at: float) -> None:
        self._subscribers.setdefault(group, {})[channel] = expires_at

    async def _subscriptions_load(self, group: str) -> dict[str, float]:
        return dict(self._subscribers.get(group, {}))

    async def _subscriptions_prune(self, group: str, channels: Sequence[str]) -> None:
        for channel in channels:
            self._subscribers.get(group, {}).pop(channel, None)
