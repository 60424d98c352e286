"""Concurrent script calls of one event loop to one Redis host (sends, durable sends and
acknowledgements), turned into pipelines."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bus.layers.scripts import Lua

__all__ = ["PendingSend", "SendCoalescer"]

#: Upper bounds for one coalesced send pipeline (count and payload bytes), so a burst of
#: large messages does not become one giant write.
_MAX_PIPELINE_SENDS: Final = 512
_MAX_PIPELINE_BYTES: Final = 8 * 1024 * 1024


@dataclass(slots=True)
class PendingSend:
    """One script call waiting for its pipeline: the script, its keys and arguments (the first
    one the payload, if any), and the caller's future."""

    script: Lua
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None = None

    @property
    def size(self) -> int:
        first = self.args[0] if self.args else b""
        return len(first) if isinstance(first, bytes | str) else 0


class SendCoalescer:
    """Turns concurrent script calls of one event loop to one Redis host into pipelines.

    The first call while idle goes out alone (no added latency). Calls that arrive while it is
    on the wire queue up and leave together as the next pipeline, and so on until the queue is
    empty. Each caller still gets its own outcome: the script's reply, or the Redis error. A
    caller cancelled before its call left the queue is dropped from the pipeline; after that, a
    cancelled call may or may not have run.
    """

    def __init__(self, run: Callable[[Sequence[PendingSend]], Awaitable[list[Any]]]) -> None:
        self._run = run
        self._queue: collections.deque[PendingSend] = collections.deque()
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None

    async def send(self, item: PendingSend) -> Any:
        """Run the call (in a pipeline with others); its reply."""
        if not self._busy:
            self._busy = True
            try:
                (outcome,) = await self._run([item])
            finally:
                self._hand_over()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        item.future = asyncio.get_running_loop().create_future()
        self._queue.append(item)
        return await item.future

    def _hand_over(self) -> None:
        if self._queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    def _take_batch(self) -> list[PendingSend]:
        batch: list[PendingSend] = []
        size = 0
        while self._queue and len(batch) < _MAX_PIPELINE_SENDS:
            if batch and size + self._queue[0].size > _MAX_PIPELINE_BYTES:
                break
            item = self._queue.popleft()
            assert item.future is not None
            if item.future.done():  # caller cancelled before it went out: skip it
                continue
            batch.append(item)
            size += item.size
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    outcomes = await self._run(batch)
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


def _settle(item: PendingSend, outcome: Any) -> None:
    future = item.future
    if future is None or future.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
