"""Where sync code runs: one bounded thread pool per process, with Django's connection hygiene.

Django keeps database connections per thread. Code the bus runs in its pool (sync handlers, the
read-only lookup, outbox queries) closes stale connections before and after, as Django does
around each HTTP request, so a pool thread never hands a dead or expired connection to the next
message, and a test database is never held open.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
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
