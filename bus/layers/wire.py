"""Raw Redis on kept connections: the one module that touches redis-py's internals.

The hot paths (send, batch receive) skip redis-py's client layer and its pool on every
command (30-40 µs a command): each event loop keeps a few connections per host
(``HostConnections``) and writes RESP on them itself (``command``, ``commands``). That uses
redis-py's connection API below its public client: ``get_connection``/``release``,
``send_packed_command``, ``read_response``, ``can_read``, ``connect``, connect callbacks.
Those change between releases (redis-py 8.2 made ``can_read`` raise on a closed connection),
so ``pyproject.toml`` bounds redis-py at the newest release tested, and
``tests/bus/test_layers.py`` pins each behaviour used here. The Lua scripts are in scripts.py.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import redis
from redis.asyncio.connection import AbstractConnection
from redis.driver_info import DriverInfo
from redis.exceptions import ResponseError

__all__ = [
    "DRIVER_INFO",
    "HostConnections",
    "closed_by_server",
    "command",
    "commands",
    "has_bzmpop",
    "pop_min",
    "read_group",
]

#: Idle connections the hot paths keep per host and event loop; beyond that they go back to
#: the pool, so a burst of concurrent receives does not keep the pool drained afterwards.
MAX_IDLE_CONNECTIONS: Final = 16

#: After the host did not answer in time (a lost host, a partition: not a refused or closed
#: connection, which fail at once anyway), seconds during which callers fail at once; then one of
#: them tries again while the others still fail at once. So a silent server costs each request a
#: quick error (the web answers 503) instead of a connect or dead-server timeout of its own.
RETRY_UNREACHABLE_AFTER: Final = 0.5
#: What a connection raises when its server cannot be reached.
UNREACHABLE_ERRORS: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

#: The first Redis version with BZMPOP and ZMPOP (one command for a whole batch).
BZMPOP_SINCE: Final = (7, 0)

#: Given to every connection: without it redis-py 8 looks its own version up in the package
#: metadata (importlib.metadata, about 0.9 ms) for CLIENT SETINFO on each new connection.
DRIVER_INFO: Final = DriverInfo(lib_version=redis.__version__)


def _block_seconds(seconds: float) -> float:
    """A BZ*POP* timeout that Redis will not round down to 0 (0 would block forever)."""
    return max(0.01, math.ceil(seconds * 1000) / 1000)


class HostConnections:
    """The connections one event loop keeps for one Redis host, borrowed from its pool once.

    They count against ``max_connections``, and closing the pool (loop close, ``close_pools``)
    closes them too. One the server closed while it was idle (Redis restarted) is reconnected
    when taken; one that failed mid-command was disconnected by redis-py, its caller got the
    error, and it reconnects on its next use.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.closed = False
        #: Whether the server has BZMPOP; None until asked, and again after any reconnect.
        self.bzmpop: bool | None = None
        self._idle: list[AbstractConnection] = []
        # Why the host was last unreachable (None once a connection works again), and when to
        # try again; `_trying` while one caller does.
        self._unreachable: BaseException | None = None
        self._retry_at = 0.0
        self._trying = False

    @contextlib.asynccontextmanager
    async def borrowed(self) -> AsyncIterator[AbstractConnection]:
        """A kept connection for the block; a connection error in it marks the host unreachable."""
        conn = await self.take()
        try:
            yield conn
        except UNREACHABLE_ERRORS as exc:
            self._lost(exc)
            raise
        finally:
            await self.give(conn)

    async def take(self) -> AbstractConnection:
        """A connected connection, or at once the error that the host is unreachable (see
        RETRY_UNREACHABLE_AFTER)."""
        trying = self._may_try()
        try:
            conn = await self._connected()
        except UNREACHABLE_ERRORS as exc:
            self._lost(exc)
            raise
        finally:
            if trying:
                self._trying = False
        self._unreachable = None
        return conn

    def _may_try(self) -> bool:
        """Whether this caller may try the host (True: it is the one retrying it); raises when
        the host was unreachable a moment ago and another caller is already trying."""
        if self._unreachable is None:
            return False
        if self._trying or time.monotonic() < self._retry_at:
            raise redis.exceptions.ConnectionError(
                f"Redis could not be reached a moment ago ({self._unreachable}); not trying again "
                f"for {RETRY_UNREACHABLE_AFTER} s."
            )
        self._trying = True
        return True

    def _lost(self, exc: BaseException) -> None:
        if _silent(exc):
            self._unreachable = exc
            self._retry_at = time.monotonic() + RETRY_UNREACHABLE_AFTER

    async def _connected(self) -> AbstractConnection:
        if not self._idle:
            conn: AbstractConnection = await self.pool.get_connection()
            conn.register_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
            return conn
        conn = self._idle.pop()
        try:
            if conn.is_connected and await closed_by_server(conn):
                # The pool's own check is off while redis-py's maintenance notifications are on
                # ("auto"), so the kept connection is checked here.
                await conn.disconnect()
            if not conn.is_connected:
                # connect(), not the implicit reconnect of send_packed_command: only connect()
                # makes a Sentinel-managed connection ask Sentinel for the current primary.
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py: untyped
        except BaseException:
            await self.give(conn)
            raise
        return conn

    async def give(self, conn: AbstractConnection) -> None:
        if self.closed:
            # Borrowed from a pool that close_pools() has since closed and replaced.
            await conn.disconnect()
        elif len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.deregister_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
            await self.pool.release(conn)

    def _reconnected(self, conn: AbstractConnection) -> None:
        # Another server may answer now (a restart, a Sentinel failover): ask it again.
        self.bzmpop = None


def _silent(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the server did not answer in time."""
    while exc is not None:
        if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def closed_by_server(conn: AbstractConnection) -> bool:
    """Whether an idle connection has bytes nobody asked for, or end of stream: the server
    closed it (a restart).

    redis-py up to 8.1 answers ``can_read()`` with True at end of stream; 8.2 raises
    ``ConnectionError("Connection closed by server.")``. Both mean "closed: reconnect".
    """
    try:
        return bool(await conn.can_read())
    except (redis.exceptions.ConnectionError, OSError):
        return True


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


async def command(conn: AbstractConnection, *args: bytes | str | float) -> Any:
    """One command straight on ``conn``: raw RESP reply, errors raised."""
    chunks: list[bytes] = []
    _pack(args, chunks)
    await conn.send_packed_command(chunks)
    return await conn.read_response()


async def commands(conn: AbstractConnection, batch: Sequence[Sequence[bytes | str | float]]) -> list[Any]:
    """Several commands in one write; each reply in order, a command's error as its reply."""
    chunks: list[bytes] = []
    for args in batch:
        _pack(args, chunks)
    await conn.send_packed_command(chunks)
    replies: list[Any] = []
    for _ in batch:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def has_bzmpop(conn: AbstractConnection) -> bool:
    """Whether the server is Redis >= 7.0; older ones answer BZMPOP with an error."""
    info = await command(conn, "INFO", "server")
    text = info if isinstance(info, str) else bytes(info).decode()
    found = re.search(r"^redis_version:(\d+)\.(\d+)", text, re.MULTILINE)
    return found is not None and (int(found[1]), int(found[2])) >= BZMPOP_SINCE


async def pop_min(conn: AbstractConnection, key: str, count: int, block: float, *, bzmpop: bool) -> list[Any]:
    """Up to ``count`` (member, score) pairs off sorted set ``key``, blocking up to ``block`` s
    for the first: one BZMPOP on Redis >= 7.0, else BZPOPMIN and ZPOPMIN pipelined."""
    pop = _mpop if bzmpop else _zpopmin
    return await pop(conn, key, count, block)


async def _mpop(conn: AbstractConnection, key: str, count: int, block: float) -> list[Any]:
    """(member, score) pairs by one ZMPOP, or BZMPOP when blocking (Redis >= 7.0)."""
    if block <= 0:
        reply = await command(conn, "ZMPOP", 1, key, "MIN", "COUNT", count)
    else:
        reply = await command(conn, "BZMPOP", _block_seconds(block), 1, key, "MIN", "COUNT", count)
    return [] if reply is None else list(reply[1])


async def _zpopmin(conn: AbstractConnection, key: str, count: int, block: float) -> list[Any]:
    """As ``_mpop`` for older servers: BZPOPMIN pipelined with ZPOPMIN for the rest."""
    if block <= 0:
        return _pairs(await command(conn, "ZPOPMIN", key, count))
    batch: list[tuple[Any, ...]] = [("BZPOPMIN", key, _block_seconds(block))]
    if count > 1:
        batch.append(("ZPOPMIN", key, count - 1))
    first, *rest = await commands(conn, batch)
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


async def read_group(
    conn: AbstractConnection, key: str, consumer: str, count: int, block: float
) -> list[tuple[str, dict[bytes, bytes]]]:
    """New entries of stream ``key`` for ``consumer`` of group "workers", up to ``count``,
    blocking up to ``block`` s for the first: (entry id, fields) pairs. The group is made if it
    is missing (a stream nobody sent to yet)."""
    args: list[bytes | str | float] = ["XREADGROUP", "GROUP", "workers", consumer, "COUNT", count]
    if block > 0:
        args += ["BLOCK", max(1, math.ceil(block * 1000))]
    args += ["STREAMS", key, ">"]
    try:
        reply = await command(conn, *args)
    except ResponseError as exc:
        if not str(exc).startswith("NOGROUP"):
            raise
        try:
            await command(conn, "XGROUP", "CREATE", key, "workers", "0", "MKSTREAM")
        except ResponseError as exists:
            if not str(exists).startswith("BUSYGROUP"):
                raise
        reply = await command(conn, *args)
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [stream[1] for stream in reply]
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for entry_id, flat in streams[0]:
        if flat is None:
            continue  # deleted after it was added to the pending list
        entries.append((_text(entry_id), dict(zip(flat[::2], flat[1::2], strict=True))))
    return entries


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()
