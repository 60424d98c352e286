"""Dead letters: commands and events that kept failing, kept durably instead of lost.

A `send` or a published event whose handler fails with an undeclared error is tried again with
exponential backoff (`@rpc(retries=...)`, `@subscribe(..., retries=...)`, the waits set by
settings.BUS["RETRY_BACKOFF"]); after the last try it is stored here with its envelope, error
and traceback. `manage.py bus deadletters` lists, shows, replays and purges them. Calls are not
retried by the worker: they fail at once with RemoteError and the caller decides. Declared errors
(a business refusal) are not retried either.

A retry waits in the worker's memory (`Retries`). A clean stop hands every waiting retry on: back
to its channel with its try count and the time it is due (the `not_before` header), so the next
worker tries it then; with the in-memory layer, which ends with the process, it becomes a dead
letter. Nothing a worker accepted vanishes on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from channels.exceptions import ChannelFull as LayerChannelFull
from django.utils import timezone

from . import messages, metrics
from .client import default_bus, translate_broker_errors
from .conf import backoff_setting
from .databases import alias_for
from .exceptions import ChannelFull
from .threads import in_pool

if TYPE_CHECKING:
    from .models import DeadLetter

logger = logging.getLogger(__name__)


def retry_delay(attempt: int) -> float:
    """Seconds to wait before try number `attempt + 1` (BUS["RETRY_BACKOFF"])."""
    return backoff_setting("RETRY_BACKOFF").delay(attempt)


def longest_wait() -> float:
    """The longest a worker holds a message for its retry: the longest backoff. A `not_before`
    further ahead (a skewed clock, a made-up header) is not honoured beyond it."""
    return backoff_setting("RETRY_BACKOFF").cap


def not_before(headers: dict[str, Any]) -> float | None:
    """When a handed-on retry is due (its `not_before` header), or None if it is due now."""
    due = headers.get("not_before")
    if not isinstance(due, int | float) or isinstance(due, bool) or due <= time.time():
        return None
    return float(due)


@dataclass(eq=False)
class _Waiting:
    layer: Any
    channel: str
    message: dict[str, Any]
    due: float  # time.time() of the next try
    timer: asyncio.TimerHandle | None = None


class Retries:
    """Commands and events waiting in this worker for their next try, each on a timer."""

    def __init__(self) -> None:
        self._waiting: set[_Waiting] = set()
        self._sending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def later(self, layer: Any, channel: str, message: dict[str, Any], due: float) -> None:
        """Send `message` to `channel` again at `due` (a time.time())."""
        delay = min(max(due - time.time(), 0.0), longest_wait())
        waiting = _Waiting(layer, channel, message, due)
        waiting.timer = asyncio.get_running_loop().call_later(delay, self._due, waiting)
        self._waiting.add(waiting)

    def _due(self, waiting: _Waiting) -> None:
        self._waiting.discard(waiting)
        task = asyncio.ensure_future(self._send(waiting, waiting.message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def hand_on(self, channels: Collection[str], *, durable: bool) -> int:
        """On a clean stop: every retry waiting for `channels` goes back to its channel now, due when
        it was (or, if the layer is not `durable`, becomes a dead letter); retries being sent finish."""
        handed = [waiting for waiting in self._waiting if waiting.channel in channels]
        for waiting in handed:
            assert waiting.timer is not None
            waiting.timer.cancel()
            self._waiting.discard(waiting)
        for waiting in handed:
            if durable:
                headers = {**waiting.message.get("headers", {}), "not_before": waiting.due}
                await self._send(waiting, {**waiting.message, "headers": headers})
            else:
                await self._keep(waiting, "the worker stopped while it waited, and its layer ends with it")
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        return len(handed)

    async def _send(self, waiting: _Waiting, message: dict[str, Any]) -> None:
        try:
            await waiting.layer.send(waiting.channel, message)
        except Exception as exc:
            await self._keep(waiting, f"it could not be sent again ({type(exc).__name__}: {exc})")

    async def _keep(self, waiting: _Waiting, why: str) -> None:
        """Keep a retry that cannot go back to its channel as a dead letter, to replay by hand."""
        message = waiting.message
        target = messages.clip(str(message.get("target")))
        tries = int(message.get("headers", {}).get("attempt", 2)) - 1
        ids = {"message_id": message.get("id"), "correlation_id": message.get("correlation_id")}
        error = f"Waiting for try {tries + 1}, {why}; replay it with `manage.py bus deadletters replay`."
        try:
            await in_pool(bury, waiting.channel, message, error, "", tries)
        except Exception:
            logger.exception("Lost the retry of %s: %s, and it could not be kept.", target, why, extra=ids)
            return
        metrics.dead_letters.labels(target).inc()
        logger.error("The retry of %s is kept as a dead letter: %s.", target, why, extra=ids)


def bury(channel: str, envelope: dict[str, Any], error: str, traceback: str, attempts: int) -> DeadLetter:
    """Keep a message that will not be tried again."""
    # Imported here, not at the top: settings import `bus` (services -> consumer -> this module)
    # before Django's apps are loaded, and a model cannot be imported then. bus.modes does the same.
    from .models import DeadLetter

    letter: DeadLetter = DeadLetter.objects.using(alias_for("bus", write=True)).create(
        message_id=envelope.get("id", ""),
        channel=channel,
        target=envelope.get("target", ""),
        envelope=envelope,
        error=error,
        traceback=traceback,
        attempts=attempts,
    )
    return letter


def waiting() -> list[DeadLetter]:
    """Dead letters not replayed yet, oldest first."""
    from .models import DeadLetter

    return list(
        DeadLetter.objects.using(alias_for("bus", write=False)).filter(replayed_at=None).order_by("id")
    )


def take_for_replay(letter_id: int) -> DeadLetter | None:
    """Mark a dead letter replayed and return it (None if unknown or already replayed)."""
    from .models import DeadLetter

    alias = alias_for("bus", write=True)
    taken = (
        DeadLetter.objects.using(alias)
        .filter(id=letter_id, replayed_at=None)
        .update(replayed_at=timezone.now())
    )
    letter: DeadLetter | None = DeadLetter.objects.using(alias).get(id=letter_id) if taken else None
    return letter


def fresh_attempt(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope to send again: same message id (receivers deduplicate), attempts from one."""
    return {**envelope, "headers": {**envelope.get("headers", {}), "attempt": 1}}


async def send_again(channel: str, envelope: dict[str, Any]) -> None:
    """Put a replayed letter back on its channel: durably when the layer can and nobody waits
    for a reply (a command, an event), else as it first came."""
    layer: Any = default_bus.layer
    try:
        with translate_broker_errors():
            if default_bus.durable and not envelope.get("reply_to"):
                await layer.durable_send(channel, envelope)
            else:
                await layer.send(channel, envelope)
    except LayerChannelFull:
        full = f"The {channel!r} queue is full: its workers are behind. Replay it later."
        raise ChannelFull(full, channel=channel) from None
