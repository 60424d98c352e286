"""Crossing between sync and async code: sync code from the bus's loops, bus coroutines from sync code.

`in_pool` runs sync code in one bounded thread pool per process, with Django's connection
hygiene. Django keeps database connections per thread. Code the bus runs in its pool (sync
handlers, the read-only lookup, outbox queries) closes stale connections before and after, as
Django does around each HTTP request, so a pool thread never hands a dead or expired connection
to the next message, and a test database is never held open.

`run_sync` runs a bus coroutine for sync code (`bus.call`, `relay`): on the caller's ASGI event
loop when there is one (a sync view under daphne, a sync handler in a worker), so it shares that
loop's reply listener and reaches its in-memory workers; otherwise on one background loop that
every thread of the process shares.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import close_old_connections

from .conf import bus_setting

_executor: ThreadPoolExecutor | None = None


def handler_executor() -> ThreadPoolExecutor:
    """The pool that runs sync handlers: as many threads as messages a worker handles at once."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=bus_setting("WORKER_CONCURRENCY"), thread_name_prefix="bus-handler"
        )
    return _executor


def _with_fresh_connections(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()


async def in_pool(function: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Await a coroutine function, or run a plain one in the pool (context variables follow)."""
    if asyncio.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    run = sync_to_async(_with_fresh_connections, thread_sensitive=False, executor=handler_executor())
    return await run(function, args, kwargs)


class _Portal:
    """Runs a coroutine to completion for sync code, on the right event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SynchronousOnlyOperation(
                "bus.call(), send() and publish() cannot run inside an event loop; "
                "use await bus.acall(), asend() or apublish()."
            )
        # Inside sync_to_async (a sync view, a sync handler) asgiref knows the caller's loop:
        # running there keeps one reply listener and, with the in-memory layer, reaches its workers.
        if getattr(SyncToAsync.threadlocal, "main_event_loop", None) is not None:
            return async_to_sync(function)(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(function(*args, **kwargs), self._background_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # A forked child has the parent's loop object but not the thread that runs it.
            if self._loop is None or self._loop.is_closed() or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="bus-sync-calls", daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_portal = _Portal()


def run_sync(function: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run an async bus function from sync code, on the caller's ASGI loop or the shared background one."""
    return _portal.run(function, *args, **kwargs)
