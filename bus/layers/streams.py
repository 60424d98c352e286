"""Durable channels (durable.py) on Redis: a stream per channel with one consumer group.

Each worker reads as its own consumer (XREADGROUP), so Redis keeps what a worker took in its
pending list until the worker acknowledges it; the steps that must not be split are Lua scripts
(scripts.py). A channel's stream, its delayed retries and its presence live on one host, so that
one script can judge a worker dead and take back what it held.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ResponseError

from bus.layers import scripts, wire
from bus.layers.durable import RECLAIM_BATCH, DurableDepth, DurableMessage, DurableQueues, parse_history
from bus.layers.presence import Message
from bus.layers.sends import PendingSend

__all__ = ["RedisDurableQueues"]

logger = logging.getLogger(__name__)

#: Seconds between moves of due retries onto a durable channel, per channel and process.
_PROMOTE_EVERY: Final = 0.25


class RedisDurableQueues(DurableQueues):
    """The durable channel primitives of ``RedisBusLayer``."""

    if TYPE_CHECKING:
        prefix: str
        brpop_timeout: float

        def serialize(self, message: Message) -> bytes: ...
        def deserialize(self, message: bytes) -> Any: ...
        def consistent_hash(self, value: str) -> int: ...
        def _host(self, index: int) -> Any: ...
        def _presence_conn(self, channel: str) -> Any: ...
        def _presence_key(self, channel: str) -> str: ...

    #: durable channel -> (when due retries were last moved here, when the next one is due)
    _promoted: dict[str, tuple[float, float]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._promoted = {}

    # -- durable channels (bus.layers.durable) -----------------------------------------------

    def _durable_keys(self, channel: str) -> tuple[str, str]:
        # ":" cannot occur in channel names, so these never collide with a channel's own key.
        return f"{self.prefix}:durable:{channel}", f"{self.prefix}:delayed:{channel}"

    async def _durable_send(self, channel: str, message: Message, due: float | None) -> bool:
        now = time.time()
        args = (self.serialize(message), self.durable_capacity, due or 0, now, _nonce())
        call = PendingSend(scripts.DURABLE_SEND, self._durable_keys(channel), args)
        return bool(await self._host(self.consistent_hash(channel)).sends.send(call))

    async def _durable_receive(
        self, channel: str, consumer: str, max_messages: int, timeout: float
    ) -> list[DurableMessage]:
        stream, _ = self._durable_keys(channel)
        conns = self._host(self.consistent_hash(channel)).conns
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = max(0.0, deadline - loop.time())
            block = await self._promote_due(channel, min(remaining, self.brpop_timeout))
            async with conns.borrowed() as conn:
                entries = await wire.read_group(conn, stream, consumer, max_messages, block)
            if entries or loop.time() >= deadline:
                break
        deliveries = []
        for entry_id, fields in entries:
            try:
                message = self.deserialize(fields[b"m"])
                if not isinstance(message, dict):
                    raise TypeError(f"it decodes to a {type(message).__name__}")
            except Exception as exc:
                logger.warning("dropped a durable message from %s that does not decode (%s)", stream, exc)
                await self._durable_ack(channel, consumer, [entry_id])
                continue
            number = int(fields.get(b"n", b"1"))
            deliveries.append(DurableMessage(entry_id, message, number, parse_history(fields.get(b"h", b""))))
        return deliveries

    async def _promote_due(self, channel: str, block: float) -> float:
        """Move due retries onto the stream (every few receives, or when one is due); how long
        the next receive may block without keeping a retry waiting past its time."""
        now = time.time()
        last, next_due = self._promoted.get(channel, (0.0, math.inf))
        if now - last >= _PROMOTE_EVERY or now >= next_due:
            stream, delayed = self._durable_keys(channel)
            found = await scripts.DURABLE_PROMOTE.run(
                self._presence_conn(channel), (stream, delayed), (now, RECLAIM_BATCH)
            )
            next_due = math.inf if found is None else float(found)
            self._promoted[channel] = (now, next_due)
        return max(0.0, min(block, next_due - now))

    async def _durable_ack(self, channel: str, consumer: str, ids: Sequence[str]) -> int:
        stream, _ = self._durable_keys(channel)
        # Through the pipeline with sends: a worker finishing many messages at once acknowledges
        # them in one round trip.
        call = PendingSend(scripts.DURABLE_ACK, (stream,), (consumer, *ids))
        return int(await self._host(self.consistent_hash(channel)).sends.send(call))

    async def _durable_requeue(
        self, channel: str, consumer: str, id: str, message: Message | None, due: float | None
    ) -> bool:
        serialized = b"" if message is None else self.serialize(message)
        args = (consumer, id, serialized, due or 0, time.time(), _nonce())
        done = await scripts.DURABLE_REQUEUE.run(
            self._presence_conn(channel), self._durable_keys(channel), args
        )
        if due is not None and channel in self._promoted:
            last, next_due = self._promoted[channel]
            self._promoted[channel] = (last, min(next_due, due))
        return bool(done)

    async def _durable_reclaim(self, channel: str) -> int:
        stream, _ = self._durable_keys(channel)
        keys = (stream, self._presence_key(channel))
        args = (time.time(), RECLAIM_BATCH)
        return int(await scripts.DURABLE_RECLAIM.run(self._presence_conn(channel), keys, args))

    async def _durable_release(
        self, channel: str, consumer: str, in_hand: Collection[str], idle: float
    ) -> int:
        stream, _ = self._durable_keys(channel)
        args = (consumer, max(1, math.ceil(idle * 1000)), *in_hand)
        return int(await scripts.DURABLE_RELEASE.run(self._presence_conn(channel), (stream,), args))

    async def _durable_depth(self, channel: str) -> DurableDepth:
        stream, delayed = self._durable_keys(channel)
        conn = self._presence_conn(channel)
        async with conn.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.zcard(delayed)
            length, waiting_later = await pipe.execute()
        held = 0
        if length:
            try:
                held = int((await conn.xpending(stream, "workers"))["pending"])
            except ResponseError:
                held = 0  # no group yet
        return DurableDepth(waiting=int(length) - held, held=held, delayed=int(waiting_later))

    def _subscriptions_key(self, group: str) -> str:
        return f"{self.prefix}:subscribers:{group}"

    async def _subscription_store(self, group: str, channel: str, expires_at: float) -> None:
        conn = self._presence_conn(group)
        await conn.hset(self._subscriptions_key(group), channel, repr(expires_at))

    async def _subscriptions_load(self, group: str) -> dict[str, float]:
        raw = await self._presence_conn(group).hgetall(self._subscriptions_key(group))
        loaded = {}
        for channel, expires_at in raw.items():
            try:
                loaded[channel.decode()] = float(expires_at)
            except (UnicodeDecodeError, ValueError):
                loaded[channel.decode(errors="replace")] = 0.0  # written by something else: pruned
        return loaded

    async def _subscriptions_prune(self, group: str, channels: Sequence[str]) -> None:
        await self._presence_conn(group).hdel(self._subscriptions_key(group), *channels)


def _nonce() -> str:
    """Keeps two equal delayed messages apart in their sorted set."""
    return os.urandom(6).hex()
