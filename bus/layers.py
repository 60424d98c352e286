"""Channel layers for the bus.

Two layers that keep the Channels layer interface (send, receive, new_channel, groups, flush)
and add the small extension API the bus worker and ``bus status`` use:

* ``receive_batch(channel, max_messages, timeout)``: take up to ``max_messages`` off a normal
  channel, waiting at most ``timeout`` seconds for the first one.
* ``queue_depth(channel)``: messages waiting on a normal channel, expired ones excluded.
* ``presence_beat`` / ``presence_leave`` / ``presence``: which workers serve a channel.

Delivery is at-most-once: a message popped off Redis by a receive that is then cancelled, or
held by a worker that dies, is lost. Work that must happen needs caller retries with
idempotency keys; in exchange no message ever runs twice because of the layer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import redis
from channels.exceptions import ChannelFull  # type: ignore[import-untyped, unused-ignore]
from channels.layers import InMemoryChannelLayer  # type: ignore[import-untyped, unused-ignore]
from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped, unused-ignore]
from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.driver_info import DriverInfo
from redis.exceptions import NoScriptError, ResponseError

from bus.inbox import LocalInbox

__all__ = ["DEFAULT_MAX_CONNECTIONS", "InMemoryBusLayer", "Message", "RedisBusLayer"]

logger = logging.getLogger(__name__)

Message = dict[str, Any]

#: Default pool size per host and event loop. redis-py 8 defaults to 100 and raises
#: MaxConnectionsError beyond that; the bus runs hundreds of concurrent calls per process.
DEFAULT_MAX_CONNECTIONS: Final = 200

#: Upper bounds for one coalesced send pipeline (count and payload bytes), so a burst of
#: large messages does not become one giant write.
_MAX_PIPELINE_SENDS: Final = 512
_MAX_PIPELINE_BYTES: Final = 8 * 1024 * 1024

#: Idle connections the hot paths keep per host and event loop; beyond that they go back to
#: the pool, so a burst of concurrent receives does not keep the pool drained afterwards.
_MAX_IDLE_CONNECTIONS: Final = 16

#: The first Redis version with BZMPOP and ZMPOP (one command for a whole batch).
_BZMPOP_SINCE: Final = (7, 0)

#: Given to every connection: without it redis-py 8 looks its own version up in the package
#: metadata (importlib.metadata, about 0.9 ms) for CLIENT SETINFO on each new connection.
_DRIVER_INFO: Final = DriverInfo(lib_version=redis.__version__)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _encode_presence(info: Mapping[str, Any], expires_at: float) -> bytes:
    """Serialize one presence record; JSON so that ``bus status`` output is inspectable."""
    record = {"info": dict(info), "expires_at": expires_at}
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def _decode_presence(raw: bytes) -> tuple[dict[str, Any], float] | None:
    """Parse a presence record; ``None`` for anything malformed (treated as dead)."""
    try:
        record = json.loads(raw)
        info = record["info"]
        expires_at = float(record["expires_at"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(info, dict):
        return None
    return info, expires_at


def _strip_channel_marker(message: Message) -> Message:
    """Drop the ``__asgi_channel__`` key that group_send and process-local sends add."""
    message.pop("__asgi_channel__", None)
    return message


class _BusExtensions:
    """The bus extension API, written once over a few storage primitives.

    Both layers validate arguments and interpret presence records the same way; only where
    the data lives differs (Redis vs. process memory).
    """

    expiry: float

    if TYPE_CHECKING:
        # Provided by channels.layers.BaseChannelLayer (untyped); declared for mypy only.
        def require_valid_channel_name(self, name: str, receive: bool = False) -> bool: ...

    # -- storage primitives, implemented by each layer ---------------------------------------

    async def _live_depth(self, channel: str) -> int:
        raise NotImplementedError

    async def _presence_store(self, channel: str, member: str, record: bytes, ttl: float) -> None:
        raise NotImplementedError

    async def _presence_load(self, channel: str) -> dict[str, bytes]:
        raise NotImplementedError

    async def _presence_prune(self, channel: str, dead: Mapping[str, bytes]) -> None:
        raise NotImplementedError

    async def _presence_remove(self, channel: str, member: str) -> None:
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------

    def _require_normal_channel(self, channel: str) -> None:
        """Batch receive, depth and presence are for shared (normal) channels only."""
        self.require_valid_channel_name(channel)
        if "!" in channel:
            raise ValueError(f"{channel!r} is a process-local channel; a normal one is needed")

    def _check_batch_args(self, channel: str, max_messages: int, timeout: float) -> None:
        self._require_normal_channel(channel)
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if timeout < 0 or math.isnan(timeout):
            raise ValueError(f"timeout must be >= 0, got {timeout}")

    # -- public extension API -----------------------------------------------------------------

    async def queue_depth(self, channel: str) -> int:
        """Messages waiting on a normal channel, not counting expired ones."""
        self._require_normal_channel(channel)
        return await self._live_depth(channel)

    async def presence_beat(self, channel: str, member: str, info: Mapping[str, Any], ttl: float) -> None:
        """Record that ``member`` serves ``channel``; the record lives ``ttl`` seconds."""
        self._require_normal_channel(channel)
        if not member:
            raise ValueError("member must be a non-empty string")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        record = _encode_presence(info, time.time() + ttl)
        await self._presence_store(channel, member, record, ttl)

    async def presence_leave(self, channel: str, member: str) -> None:
        """Forget ``member`` at once (clean shutdown) instead of waiting for its ttl."""
        self._require_normal_channel(channel)
        await self._presence_remove(channel, member)

    async def presence(self, channel: str) -> dict[str, dict[str, Any]]:
        """Live members of ``channel`` -> their info; dead records are pruned on the way."""
        self._require_normal_channel(channel)
        records = await self._presence_load(channel)
        now = time.time()
        live: dict[str, dict[str, Any]] = {}
        dead: dict[str, bytes] = {}
        for member, raw in records.items():
            decoded = _decode_presence(raw)
            if decoded is None or decoded[1] < now:
                dead[member] = raw
            else:
                live[member] = decoded[0]
        if dead:
            await self._presence_prune(channel, dead)
        return live


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lua:
    """A Lua script run by EVALSHA, falling back to EVAL when Redis lost its script cache."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)

    async def run(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: EVAL runs it and caches it again.
            return await conn.eval(self.source, len(keys), *keys, *args)


# KEYS[1] channel key; ARGV: message, score (now), expiry cutoff, capacity, key ttl (s).
# Returns 1 when stored, 0 when the channel is full. Receivers skip expired messages, so they
# are only trimmed once they could make the channel look full.
_SEND = _Lua(
    """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
        return 0
    end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
)

# KEYS[1] presence hash; ARGV: member, record, ttl (ms). The hash outlives its longest member.
_PRESENCE_BEAT = _Lua(
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

# KEYS[1] presence hash; ARGV: member1, record1, member2, record2, ...
# Deletes a member only if it still holds the record that was judged dead, so a beat that
# lands between reading and pruning is not thrown away.
_PRESENCE_PRUNE = _Lua(
    """
local removed = 0
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return removed
"""
)


@dataclass(slots=True)
class _PendingSend:
    channel: str
    key: str
    args: tuple[bytes, float, float, int, int]
    future: asyncio.Future[None] | None = None


class _SendCoalescer:
    """Turns concurrent sends of one event loop to one Redis host into pipelines.

    The first send while idle goes out alone (no added latency). Sends that arrive while it
    is on the wire queue up and leave together as the next pipeline, and so on until the
    queue is empty. Each caller still gets its own outcome: ``None``, ``ChannelFull`` for its
    own channel, or the Redis error. A caller cancelled before its send left the queue is
    dropped from the pipeline; after that, a cancelled send may or may not have been stored.
    """

    def __init__(self, layer: RedisBusLayer, shard: _Shard) -> None:
        self._layer = layer
        self._shard = shard
        self._queue: collections.deque[_PendingSend] = collections.deque()
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None

    async def send(self, item: _PendingSend) -> None:
        if not self._busy:
            self._busy = True
            try:
                (outcome,) = await self._layer._run_sends(self._shard, [item])
            finally:
                self._hand_over()
            _raise_for(item, outcome)
            return
        item.future = asyncio.get_running_loop().create_future()
        self._queue.append(item)
        await item.future

    def _hand_over(self) -> None:
        if self._queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    def _take_batch(self) -> list[_PendingSend]:
        batch: list[_PendingSend] = []
        size = 0
        while self._queue and len(batch) < _MAX_PIPELINE_SENDS:
            if batch and size + len(self._queue[0].args[0]) > _MAX_PIPELINE_BYTES:
                break
            item = self._queue.popleft()
            assert item.future is not None
            if item.future.done():  # caller cancelled before it went out: skip it
                continue
            batch.append(item)
            size += len(item.args[0])
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    outcomes = await self._layer._run_sends(self._shard, batch)
                except BaseException as exc:
                    for item in batch:
                        _settle(item, exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for item, outcome in zip(batch, outcomes, strict=True):
                        _settle(item, outcome)
        finally:
            self._busy = False
            self._drainer = None
            while self._queue:  # only left over when the drainer itself was cancelled
                pending = self._queue.popleft().future
                if pending is not None and not pending.done():
                    pending.cancel()


def _raise_for(item: _PendingSend, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        raise outcome
    if not outcome:
        raise ChannelFull(item.channel)


def _settle(item: _PendingSend, outcome: Any) -> None:
    future = item.future
    if future is None or future.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    elif not outcome:
        future.set_exception(ChannelFull(item.channel))
    else:
        future.set_result(None)


def _block_seconds(seconds: float) -> float:
    """A BZ*POP* timeout that Redis will not round down to 0 (0 would block forever)."""
    return max(0.01, math.ceil(seconds * 1000) / 1000)


class _Shard:
    """One Redis host as used from one event loop: the send coalescer and the hot paths' own
    connections.

    Sends and normal-channel receives run on connections taken from here, not through the
    pool for every command: the ``BlockingConnectionPool`` (lock, condition, readiness check)
    and redis-py's client layer cost 30-40 µs a command. The connections are borrowed from
    the pool once, so they count against ``max_connections`` and closing the pool (loop
    close, ``close_pools``) closes them too. One the server closed while it was idle (Redis
    restarted) is reconnected when taken; one that failed mid-command was disconnected by
    redis-py, its caller got the error, and it reconnects on its next use.
    """

    def __init__(self, layer: RedisBusLayer, pool: Any) -> None:
        self.pool = pool
        self.sends = _SendCoalescer(layer, self)
        self.closed = False
        #: Whether the server has BZMPOP; None until asked, and again after any reconnect.
        self.bzmpop: bool | None = None
        self._idle: list[AbstractConnection] = []

    async def take(self) -> AbstractConnection:
        if not self._idle:
            conn: AbstractConnection = await self.pool.get_connection()
            conn.register_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
            return conn
        conn = self._idle.pop()
        if conn.is_connected and await conn.can_read():
            # Bytes nobody asked for, or end of stream, on an idle connection: the server
            # closed it (a restart). Drop the socket. The pool's own check is off while
            # redis-py's maintenance notifications are on ("auto").
            await conn.disconnect()
        if not conn.is_connected:
            # connect(), not the implicit reconnect of send_packed_command: only connect()
            # makes a Sentinel-managed connection ask Sentinel for the current primary.
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py: untyped
        return conn

    async def give(self, conn: AbstractConnection) -> None:
        if self.closed:
            # Borrowed from a pool that close_pools() has since closed and replaced.
            await conn.disconnect()
        elif len(self._idle) < _MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.deregister_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
            await self.pool.release(conn)

    def _reconnected(self, conn: AbstractConnection) -> None:
        # Another server may answer now (a restart, a Sentinel failover): ask it again.
        self.bzmpop = None


def _pack(args: Sequence[bytes | str | float], chunks: list[bytes]) -> None:
    """Append one command in RESP to ``chunks``.

    redis-py's ``pack_command`` takes 13 µs for a send's 10 arguments (its encoder checks
    every type it supports); the hot paths only pass bytes, ASCII strings (commands, keys)
    and numbers, which this packs in 5. Floats use ``repr`` as redis-py does, so no precision
    is lost.
    """
    chunks.append(b"*%d\r\n" % len(args))
    for arg in args:
        data = arg if isinstance(arg, bytes) else (arg if isinstance(arg, str) else repr(arg)).encode()
        chunks += (b"$%d\r\n" % len(data), data, b"\r\n")


async def _command(conn: AbstractConnection, *args: bytes | str | float) -> Any:
    """One command straight on ``conn``: raw RESP reply, errors raised."""
    chunks: list[bytes] = []
    _pack(args, chunks)
    await conn.send_packed_command(chunks)
    return await conn.read_response()


async def _commands(conn: AbstractConnection, commands: Sequence[Sequence[bytes | str | float]]) -> list[Any]:
    """Several commands in one write; each reply in order, a command's error as its reply."""
    chunks: list[bytes] = []
    for command in commands:
        _pack(command, chunks)
    await conn.send_packed_command(chunks)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def _has_bzmpop(conn: AbstractConnection) -> bool:
    """Whether the server is Redis >= 7.0; older ones answer BZMPOP with an error."""
    info = await _command(conn, "INFO", "server")
    text = info if isinstance(info, str) else bytes(info).decode()
    found = re.search(r"^redis_version:(\d+)\.(\d+)", text, re.MULTILINE)
    return found is not None and (int(found[1]), int(found[2])) >= _BZMPOP_SINCE


async def _mpop(conn: AbstractConnection, key: str, count: int, block: float) -> list[Any]:
    """(member, score) pairs by one ZMPOP, or BZMPOP when blocking (Redis >= 7.0)."""
    if block <= 0:
        reply = await _command(conn, "ZMPOP", 1, key, "MIN", "COUNT", count)
    else:
        reply = await _command(conn, "BZMPOP", _block_seconds(block), 1, key, "MIN", "COUNT", count)
    return [] if reply is None else list(reply[1])


async def _zpopmin(conn: AbstractConnection, key: str, count: int, block: float) -> list[Any]:
    """As ``_mpop`` for older servers: BZPOPMIN pipelined with ZPOPMIN for the rest."""
    if block <= 0:
        return _pairs(await _command(conn, "ZPOPMIN", key, count))
    commands: list[tuple[Any, ...]] = [("BZPOPMIN", key, _block_seconds(block))]
    if count > 1:
        commands.append(("ZPOPMIN", key, count - 1))
    first, *rest = await _commands(conn, commands)
    for reply in (first, *rest):
        if isinstance(reply, ResponseError):
            raise reply
    popped = [] if first is None else [first[1:]]
    return popped + _pairs(rest[0]) if rest else popped


def _pairs(reply: list[Any]) -> list[Any]:
    """ZPOPMIN's reply as (member, score) pairs: RESP3 nests them, RESP2 gives a flat list."""
    if reply and not isinstance(reply[0], list):
        return list(zip(reply[::2], reply[1::2], strict=True))
    return reply


class RedisBusLayer(_BusExtensions, RedisChannelLayer):  # type: ignore[misc]
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
    ``_Shard``) rather than through the pool for every command. Expired messages are skipped
    on receive. Process-local (``!``) channels, one per Channels consumer, are read by one task
    per event loop that hands each message to its channel (``bus.inbox``), instead of the
    parent's turn-taking of every receiver at the shared key.
    Sentinel hosts go through the parent's pool factory (a non-blocking
    ``SentinelConnectionPool``) with the same socket_timeout and max_connections defaults.
    """

    hosts: list[dict[str, Any]]

    def __init__(self, hosts: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(hosts, *args, **kwargs)
        self._pool_waits: list[float | None] = []
        prepared: list[dict[str, Any]] = []
        for host in self.hosts:
            host = dict(host)
            self._pool_waits.append(host.pop("pool_timeout", None))
            host.setdefault("socket_timeout", None)
            host.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
            if "lib_name" not in host and "lib_version" not in host:
                host.setdefault("driver_info", _DRIVER_INFO)
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
        self._shards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Shard]] = (
            weakref.WeakKeyDictionary()
        )
        # This process's process-local keys: their mailboxes and reader (see bus.inbox).
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
        await self._shard(index).sends.send(_PendingSend(channel, key, args))

    def _shard(self, index: int) -> _Shard:
        per_loop = self._shards.setdefault(asyncio.get_running_loop(), {})
        shard = per_loop.get(index)
        if shard is None:
            shard = per_loop[index] = _Shard(self, self.connection(index).connection_pool)
        return shard

    async def close_pools(self) -> None:
        """Close the pools, and with them the hot paths' connections, on every event loop."""
        for inbox in self._local.values():
            inbox.close()  # first: a reader whose connection closed under it would fail receivers
        await super().close_pools()
        sentinel_pools, self._sentinel_pools = self._sentinel_pools, []
        for pool in sentinel_pools:
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()
        for per_loop in self._shards.values():
            for shard in per_loop.values():
                shard.closed = True
        self._shards.clear()

    async def _run_sends(self, shard: _Shard, items: Sequence[_PendingSend]) -> list[Any]:
        """Run the send script for ``items`` in one round trip; one outcome per item.

        Outcomes are the script's 1/0 or the per-command error. Connection errors raise.
        """
        commands = [("EVALSHA", _SEND.sha, 1, item.key, *item.args) for item in items]
        conn = await shard.take()
        try:
            outcomes = await _commands(conn, commands)
            missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
            if missing:
                # The script cache is empty (Redis restarted): load it and redo just those.
                await _command(conn, "SCRIPT", "LOAD", _SEND.source)
                redone = await _commands(conn, [commands[i] for i in missing])
                for i, outcome in zip(missing, redone, strict=True):
                    outcomes[i] = outcome
        finally:
            await shard.give(conn)
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
                return _strip_channel_marker(messages[0])

    def _local_inbox(self, channel: str) -> LocalInbox:
        """The mailboxes and reader of ``channel``'s shared key (see ``bus.inbox``)."""
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
                return [_strip_channel_marker(message) for message in messages]

    async def _pop(self, key: str, index: int | None, count: int, block: float) -> list[Message]:
        """Pop up to ``count`` live messages off ``key`` on host ``index`` (None: the next in
        turn), blocking up to ``block`` s for the first. Members that do not decode to a dict
        are logged and skipped."""
        shard = self._shard(next(self._receive_index_generator) if index is None else index)
        conn = await shard.take()
        try:
            if shard.bzmpop is None:
                shard.bzmpop = await _has_bzmpop(conn)
            pop = _mpop if shard.bzmpop else _zpopmin
            popped = await pop(conn, key, count, block)
        finally:
            await shard.give(conn)
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
        await _PRESENCE_BEAT.run(
            self._presence_conn(channel), (self._presence_key(channel),), (member, record, ttl_ms)
        )

    async def _presence_load(self, channel: str) -> dict[str, bytes]:
        raw = await self._presence_conn(channel).hgetall(self._presence_key(channel))
        return {member.decode(): record for member, record in raw.items()}

    async def _presence_prune(self, channel: str, dead: Mapping[str, bytes]) -> None:
        flat: list[Any] = []
        for member, record in dead.items():
            flat += [member, record]
        await _PRESENCE_PRUNE.run(self._presence_conn(channel), (self._presence_key(channel),), flat)

    async def _presence_remove(self, channel: str, member: str) -> None:
        await self._presence_conn(channel).hdel(self._presence_key(channel), member)


# --------------------------------------------------------------------------------------------
# In memory
# --------------------------------------------------------------------------------------------

_Entry = tuple[float, Message]  # (expires_at, message), as the parent stores them


class InMemoryBusLayer(_BusExtensions, InMemoryChannelLayer):  # type: ignore[misc]
    """Channels' ``InMemoryChannelLayer`` with the bus extension API, for tests and dev.

    The parent's ``receive`` drops the channel's queue from ``self.channels`` whenever it is
    empty, even while another receiver still waits on that queue object; messages sent
    afterwards go to a fresh queue nobody waits on. Here a channel's queue stays registered
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
