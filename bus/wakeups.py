"""Wake periodic tasks early: "there is work now" from any thread, instead of waiting a period.

A transactional outbox is relayed by an `@every` method; polling alone makes every event wait
up to a period after its commit. `emit` registers `wake(OUTBOX)` to run on commit, and relays
declared with `@every(seconds, woken_by=OUTBOX)` run at once in this process. Polling stays
as the safety net (retries that fall due, rows committed by other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["OUTBOX", "listening", "wake"]

#: Rows were committed to a transactional outbox in this process.
OUTBOX = "outbox"

_lock = threading.Lock()
_listeners: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}


@contextmanager
def listening(signal: str) -> Iterator[asyncio.Event]:
    """An event of the running loop, set whenever `wake(signal)` is called while the block runs."""
    entry = (asyncio.get_running_loop(), asyncio.Event())
    with _lock:
        _listeners.setdefault(signal, set()).add(entry)
    try:
        yield entry[1]
    finally:
        with _lock:
            _listeners[signal].discard(entry)


def wake(signal: str) -> None:
    """Set every listener's event for `signal`; safe from any thread, a no-op without listeners."""
    with _lock:
        entries = list(_listeners.get(signal, ()))
    for loop, event in entries:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to wake
            loop.call_soon_threadsafe(event.set)
