"""Waiting in tests: ask until the answer is the awaited one, then go on at once.

Tests never sleep to let something happen; they poll for it with these two, which fail naming
what was awaited and the last answer seen (or the last error, for probes that may raise while
the thing comes up):

    worker = poll(lambda: presence(url, "echo"), bool, what="a live echo worker")
    order = await apoll(lambda: orders.get(order_id=oid), lambda o: o.state == "confirmed",
                        what=f"order {oid} confirmed")

The timeout only bounds a failure; pytest-timeout still bounds the whole test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["apoll", "poll"]

T = TypeVar("T")

#: Seconds between two looks; short, since every wait ends as soon as its condition holds.
INTERVAL = 0.05


def _failure(what: str, timeout: float, last: object) -> AssertionError:
    seen = repr(last)
    if len(seen) > 2_000:
        # Text (a log, an output) grows at its end: show the end; anything else, its start.
        cut = f"({len(seen):,} characters)"
        seen = f"{cut} …{seen[-2_000:]}" if isinstance(last, str) else f"{seen[:2_000]}… {cut}"
    return AssertionError(f"Waited {timeout} s for {what}; the last answer was {seen}")


def poll(
    probe: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    what: str,
    timeout: float = 30,
    every: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """`probe()` once `done` holds for it; an AssertionError naming `what` after `timeout` seconds.

    Exceptions of the `ignoring` types count as "not yet" (a server still starting, say). `every`
    spaces the looks out, for probes that cost the system under test something.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = probe()
        except ignoring as error:
            last: object = error
        else:
            if done(answer):
                return answer
            last = answer
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        time.sleep(every)


async def apoll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], object] = bool,
    *,
    what: str,
    timeout: float = 30,
    every: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The async twin of `poll`: `await probe()` until `done` holds for its answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = await probe()
        except ignoring as error:
            last: object = error
        else:
            if done(answer):
                return answer
            last = answer
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        await asyncio.sleep(every)
