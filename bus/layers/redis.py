"""``RedisBusLayer``: channels-redis's layer made fit for a bus of competing workers."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from channels.exceptions import ChannelFull  # type: ignore[import-untyped, unused-ignore]
from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped, unused-ignore]
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError

from bus.layers import scripts, wire
from bus.layers.local import LocalInbox
from bus.layers.presence import BusExtensions, Message, strip_channel_marker
from bus.layers.sends import PendingSend, SendCoalescer
from bus.layers.streams import RedisDurableQueues

__all__ = ["DEFAULT_MAX_CONNECTIONS", "RedisBusLayer"]

logger = logging.getLogger(__name__)

#: Default pool size per host and event loop. redis-py 8 defaults to 100 and raises
#: MaxConnectionsError beyond that; the bus runs hundreds of concurrent calls per process.
DEFAULT_MAX_CONNECTIONS: Final = 200
#: Seconds until a connection to a server that went silent (its host lost, a partition) fails,
#: instead of the kernel's many minutes: TCP keepalive probes idle connections (a blocking
#: receive) and TCP_USER_TIMEOUT bounds data sent but not acknowledged.
DEAD_SERVER_SECONDS: Final = 3
#: Seconds a new connection (TCP and TLS) may take; a silent host never answers the first packet.
CONNECT_TIMEOUT: Final = 2.0
#: Seconds to connect to a Sentinel and for its answer: it answers at once, or is gone.
SENTINEL_TIMEOUT: Final = 1.0


def dead_server_options(seconds: int = DEAD_SERVER_SECONDS) -> dict[str, Any]:
    """Connection options that notice a silent server within `seconds` (where the OS can)."""
    tcp = {
        "TCP_KEEPIDLE": 1,
        "TCP_KEEPINTVL": 1,
        "TCP_KEEPCNT": max(1, seconds - 1),
        "TCP_USER_TIMEOUT": seconds * 1000,
    }
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": {
            getattr(socket, name): value for name, value in tcp.items() if hasattr(socket, name)
        },
    }


@dataclass(frozen=True, slots=True)
class _LoopHost:
    """One Redis host as one event loop uses it: its kept connections and its send pipeline."""

    conns: wire.HostConnections
    sends: SendCoalescer


class RedisBusLayer(RedisDurableQueues, BusExtensions, RedisChannelLayer):  # type: ignore[misc]
    """channels-redis's ``RedisChannelLayer`` made fit for competing workers.

    It works around these upstream problems:

    * django/channels_redis#163: ``receive`` restores ``<channel>$inflight`` before every
      BZPOPMIN, which moves *other processes'* in-flight messages back into the queue; with
      3 workers on one channel, 730 of 3,000 messages ran twice. Normal channels here are
      received with one plain BZPOPMIN and no backup (at-most-once delivery).
    * django/channels_redis#413: ``runworker`` prefetches without bound and a crashing
      handler drops the prefetch. ``receive_batch`` takes exactly as many messages as the
      worker has free slots.
    * django/channels_redis#422: redis-py's default ``socket_timeout`` (5 s) equals the
      BZPOPMIN block time, so an idle ``receive`` raised ``TimeoutError``. Every host gets
      ``socket_timeout=None`` unless it sets one.
    * redis-py 8's async pool caps at 100 connections and raises ``MaxConnectionsError``.
      Non-Sentinel hosts get a ``BlockingConnectionPool`` (callers wait for a free
      connection) with ``max_connections`` = 200 by default; set ``max_connections`` and
      ``pool_timeout`` (seconds to wait for a connection, default forever) per host.

    Also: ``send`` is one Lua call instead of 4 round trips, and concurrent sends from one
    event loop are coalesced into pipelines. A batch receive is one BZMPOP on Redis >= 7.0
    (the version is asked once per host and loop, and again after a reconnect). Sends and
    normal-channel receives run on connections each event loop keeps per host (see
    ``wire.HostConnections``) rather than through the pool for every command. Expired messages are skipped
    on receive. Process-local (``!``) channels, one per Channels consumer, are read by one task
    per event loop that hands each message to its channel (``bus.layers.local``), instead of the
    parent's turn-taking of every receiver at the shared key.
    Sentinel hosts go through the parent's pool factory (a non-blocking
    ``SentinelConnectionPool``) with the same socket_timeout and max_connections defaults.

    Durable channels (``bus.layers.durable``) are Redis streams with one consumer group, on the
    host that keeps the channel's presence, so that one script can judge a consumer dead and
    hand back what it held. ``durable_capacity`` (default 100,000) bounds each.
    """

    hosts: list[dict[str, Any]]

    def __init__(
        self, hosts: Any = None, *args: Any, durable_capacity: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(hosts, *args, **kwargs)
        if durable_capacity is not None:
            self.durable_capacity = int(durable_capacity)
        self._pool_waits: list[float | None] = []
        prepared: list[dict[str, Any]] = []
        for host in self.hosts:
            host = dict(host)
            self._pool_waits.append(host.pop("pool_timeout", None))
            host.setdefault("socket_timeout", None)
            host.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
            if not str(host.get("address", "")).startswith("unix:"):
                for name, value in dead_server_options().items():
                    host.setdefault(name, value)
            if "sentinels" in host:
                # Sentinels answer at once: one that is gone must not hold up asking the others.
                sentinel = host["sentinel_kwargs"] = dict(host.get("sentinel_kwargs") or {})
                sentinel.setdefault("socket_timeout", SENTINEL_TIMEOUT)
                sentinel.setdefault("socket_connect_timeout", SENTINEL_TIMEOUT)
            if "lib_name" not in host and "lib_version" not in host:
                host.setdefault("driver_info", wire.DRIVER_INFO)
            socket_timeout = host["socket_timeout"]
            if socket_timeout is not None and socket_timeout <= self.brpop_timeout:
                logger.warning(
                    "socket_timeout=%s is not above the %s s blocking receive: idle receives "
                    "will fail with TimeoutError",
                    socket_timeout,
                    self.brpop_timeout,
                )
            prepared.append(host)
        self.hosts = prepared
        self._hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _LoopHost]] = (
            weakref.WeakKeyDictionary()
        )
        # This process's process-local keys: their mailboxes and reader (see bus.layers.local).
        self._local: dict[str, LocalInbox] = {}
        self._sentinel_pools: list[Any] = []

    def create_pool(self, index: int) -> aioredis.ConnectionPool:
        """A blocking pool for URL and plain hosts; Sentinel hosts use the parent's factory."""
        host = dict(self.hosts[index])
        if "master_name" in host:
            pool: aioredis.ConnectionPool = super().create_pool(index)
            # Its Sentinel clients are not the pool's connections: close_pools closes them.
            self._sentinel_pools.append(pool)
            return pool
        wait = self._pool_waits[index]
        address = host.pop("address", None)
        if address is not None:
            return aioredis.BlockingConnectionPool.from_url(address, timeout=wait, **host)
        return aioredis.BlockingConnectionPool(timeout=wait, **host)

    # -- sending ------------------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Send with one atomic Lua call (trim expired, capacity check, ZADD, EXPIRE)."""
        if not isinstance(message, dict):
            raise TypeError("message is not a dict")
        self.require_valid_channel_name(channel)
        if "__asgi_channel__" in message:
            raise ValueError("message must not contain the reserved key __asgi_channel__")
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
            shared = self.non_local_name(channel)
            key = self.prefix + shared
            index: int = self.consistent_hash(shared)  # where its receiver reads (and group_send sends)
        else:
            key = self.prefix + channel
            index = next(self._send_index_generator)
        now = time.time()
        args = (
            self.serialize(message),
            now,
            now - self.expiry,
            int(self.get_capacity(channel)),
            max(1, math.ceil(self.expiry)),
        )
        if not await self._host(index).sends.send(PendingSend(scripts.SEND, (key,), args)):
            raise ChannelFull(channel)

    def _host(self, index: int) -> _LoopHost:
        per_loop = self._hosts.setdefault(asyncio.get_running_loop(), {})
        host = per_loop.get(index)
        if host is None:
            conns = wire.HostConnections(self.connection(index).connection_pool)
            host = per_loop[index] = _LoopHost(
                conns, SendCoalescer(functools.partial(self._run_sends, conns))
            )
        return host

    async def close_pools(self) -> None:
        """Close the pools, and with them the hot paths' connections, on every event loop."""
        for inbox in self._local.values():
            inbox.close()  # first: a reader whose connection closed under it would fail receivers
        await super().close_pools()
        sentinel_pools, self._sentinel_pools = self._sentinel_pools, []
        for pool in sentinel_pools:
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()
        for per_loop in self._hosts.values():
            for host in per_loop.values():
                host.conns.closed = True
        self._hosts.clear()

    async def _run_sends(self, conns: wire.HostConnections, items: Sequence[PendingSend]) -> list[Any]:
        """Run the script calls ``items`` in one round trip; one reply (or error) per item.

        Connection errors raise.
        """
        commands = [("EVALSHA", item.script.sha, len(item.keys), *item.keys, *item.args) for item in items]
        async with conns.borrowed() as conn:
            outcomes = await wire.commands(conn, commands)
            missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
            if missing:
                # The script cache is empty (Redis restarted): load them and redo just those.
                for script in {items[i].script for i in missing}:
                    await wire.command(conn, "SCRIPT", "LOAD", script.source)
                redone = await wire.commands(conn, [commands[i] for i in missing])
                for i, outcome in zip(missing, redone, strict=True):
                    outcomes[i] = outcome
        return outcomes

    # -- receiving ----------------------------------------------------------------------------

    async def receive(self, channel: str) -> Message:
        """One BZMPOP per attempt on normal channels; no ``$inflight`` backup (see #163)."""
        self.require_valid_channel_name(channel)
        if "!" in channel:
            return await self._local_inbox(channel).receive(channel)
        while True:
            messages = await self._pop(self.prefix + channel, None, 1, self.brpop_timeout)
            if messages:
                message: Message = strip_channel_marker(messages[0])
                return message

    def _local_inbox(self, channel: str) -> LocalInbox:
        """The mailboxes and reader of ``channel``'s shared key (see ``bus.layers.local``)."""
        shared = self.non_local_name(channel)
        if not shared.endswith(self.client_prefix + "!"):
            raise ValueError(f"{channel!r} is another process's channel; only its own process can receive it")
        inbox = self._local.get(shared)
        if inbox is None:
            key = self.prefix + shared
            index = self.consistent_hash(shared)
            inbox = self._local[shared] = LocalInbox(
                functools.partial(self._pop, key, index),
                capacity=self.get_capacity,
                block=self.brpop_timeout,
                expiry=self.expiry,
                name=key,
            )
        return inbox

    async def receive_batch(self, channel: str, max_messages: int, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` s for a message, then take at most ``max_messages`` in all.

        Each attempt is one round trip: one BZMPOP, or on Redis < 7.0 BZPOPMIN and ZPOPMIN
        pipelined. Cancelling this call loses whatever Redis already handed over (at-most-once).
        """
        self._check_batch_args(channel, max_messages, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            block = min(remaining, self.brpop_timeout)
            messages = await self._pop(self.prefix + channel, None, max_messages, block)
            if messages or loop.time() >= deadline:
                return [strip_channel_marker(message) for message in messages]

    async def _pop(self, key: str, index: int | None, count: int, block: float) -> list[Message]:
        """Pop up to ``count`` live messages off ``key`` on host ``index`` (None: the next in
        turn), blocking up to ``block`` s for the first. Members that do not decode to a dict
        are logged and skipped."""
        conns = self._host(next(self._receive_index_generator) if index is None else index).conns
        async with conns.borrowed() as conn:
            if conns.bzmpop is None:
                conns.bzmpop = await wire.has_bzmpop(conn)
            popped = await wire.pop_min(conn, key, count, block, bzmpop=conns.bzmpop)
        if not popped:
            return []
        cutoff = time.time() - self.expiry
        messages: list[Message] = []
        for member, score in popped:
            if float(score) < cutoff:
                logger.debug("dropped an expired message from %s", key)
                continue
            try:
                message = self.deserialize(member)
            except Exception as exc:
                logger.warning("dropped a message from %s that does not decode (%s)", key, exc)
                continue
            if not isinstance(message, dict):
                logger.warning("dropped a message from %s that decodes to a %s", key, type(message).__name__)
                continue
            messages.append(message)
        return messages

    # -- groups -------------------------------------------------------------------------------

    async def group_send(self, group: str, message: Message) -> None:
        """The parent's group_send, except that members which are not channel names are
        dropped instead of failing the whole send.

        channels-redis decodes every member as UTF-8, so one bad member (anything with access
        to Redis can write one) made every send to the group raise until the member expired:
        a topic's live events stopped for up to a day while pings went on.
        """
        try:
            await super().group_send(group, message)
        except UnicodeDecodeError:
            await self._drop_bad_members(group)
            await super().group_send(group, message)

    async def _drop_bad_members(self, group: str) -> None:
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        for member in await connection.zrange(key, 0, -1):
            try:
                member.decode("utf8")
            except UnicodeDecodeError:
                logger.warning(
                    "group %s had a member that is not a channel name (%r): removed it",
                    group,
                    bytes(member[:60]),
                )
                await connection.zrem(key, member)

    # -- bus extension storage ----------------------------------------------------------------

    async def _live_depth(self, channel: str) -> int:
        key = self.prefix + channel
        low = f"({time.time() - self.expiry!r}"
        # Normal channels are spread over all shards by send's round robin.
        counts = await asyncio.gather(
            *(self.connection(i).zcount(key, low, "+inf") for i in range(self.ring_size))
        )
        return sum(int(c) for c in counts)

    def _presence_key(self, channel: str) -> str:
        # ":" cannot occur in channel or group names, so this never collides with them.
        return f"{self.prefix}:presence:{channel}"

    def _presence_conn(self, channel: str) -> Any:
        return self.connection(self.consistent_hash(channel))

    async def _presence_store(self, channel: str, member: str, record: bytes, ttl: float) -> None:
        ttl_ms = max(1, math.ceil(ttl * 1000))
        await scripts.PRESENCE_BEAT.run(
            self._presence_conn(channel), (self._presence_key(channel),), (member, record, ttl_ms)
        )

    async def _presence_load(self, channel: str) -> dict[str, bytes]:
        raw = await self._presence_conn(channel).hgetall(self._presence_key(channel))
        return {member.decode(): record for member, record in raw.items()}

    async def _presence_prune(self, channel: str, dead: Mapping[str, bytes]) -> None:
        flat: list[Any] = []
        for member, record in dead.items():
            flat += [member, record]
        await scripts.PRESENCE_PRUNE.run(self._presence_conn(channel), (self._presence_key(channel),), flat)

    async def _presence_remove(self, channel: str, member: str) -> None:
        await self._presence_conn(channel).hdel(self._presence_key(channel), member)
