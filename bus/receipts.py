"""A durable message in a worker's hands, until the worker settles it.

The worker takes a command or event off its domain's durable channel (bus/layers/durable.py)
and holds it while a consumer handles it. It is settled exactly once: acknowledged when its
handling finished (a success, a declared error, or a dead letter stored), requeued with its next
try when its handler failed and will be tried again, or handed back untouched when the worker
stops before it could finish. A worker that dies settles nothing: a live one takes the message
back from it (`durable_reclaim`) within a few heartbeats, and counts the delivery. Settling acts
only if this worker still holds the message, so one that was frozen past its heartbeat changes
nothing when it wakes.
"""

from __future__ import annotations

import logging
from typing import Any

from . import deadletters, messages, metrics
from .conf import bus_setting
from .layers.durable import DurableMessage
from .threads import in_pool

logger = logging.getLogger(__name__)


class Receipt:
    """One durable message held by one worker (`consumer`) on `channel`."""

    __slots__ = ("channel", "consumer", "held", "layer", "settled")

    def __init__(self, layer: Any, channel: str, consumer: str, held: DurableMessage) -> None:
        self.layer = layer
        self.channel = channel
        self.consumer = consumer
        self.held = held
        self.settled = False

    @property
    def number(self) -> int:
        """Its delivery number: 1, plus one per worker that died holding it."""
        return self.held.number

    @property
    def history(self) -> tuple[str, ...]:
        """The workers that died holding it, oldest first."""
        return self.held.history

    async def ack(self) -> None:
        """Its handling finished: it leaves the bus."""
        self._require_unsettled("acknowledged")
        acked = await self.layer.durable_ack(self.channel, self.consumer, [self.held.id])
        self.settled = True
        if not acked:
            self._taken_meanwhile("its end")

    async def retry(self, message: dict[str, Any], due: float) -> None:
        """Its handler failed: `message` (the next try) waits in the channel until `due`."""
        self._require_unsettled("requeued")
        requeued = await self.layer.durable_requeue(
            self.channel, self.consumer, self.held.id, message=message, due=due
        )
        self.settled = True
        if not requeued:
            self._taken_meanwhile("its retry")

    async def hand_back(self) -> None:
        """This worker stops before finishing it: the next worker takes it, as it was."""
        self._require_unsettled("handed back")
        await self.layer.durable_requeue(self.channel, self.consumer, self.held.id)
        self.settled = True

    async def bury_as_poison(self) -> None:
        """Its workers kept dying (a crash in its handler, out of memory): it is kept as a dead
        letter naming the workers it took down, instead of taking down the next one."""
        died = len(self.history)
        message = self.held.message
        error = (
            f"{died} worker(s) died while handling it ({', '.join(self.history)}); after "
            f"BUS['MAX_DELIVERIES'] = {bus_setting('MAX_DELIVERIES')} deliveries it is not delivered "
            "again. Find why in those workers' logs, then replay it with `manage.py bus deadletters replay`."
        )
        await in_pool(deadletters.bury, self.channel, message, error, "", died)
        await self.ack()
        target = messages.clip(str(message.get("target")))
        metrics.dead_letters.labels(target).inc()
        logger.error(
            "%s took down %d worker(s); kept as a dead letter.",
            target,
            died,
            extra={"message_id": message.get("id"), "correlation_id": message.get("correlation_id")},
        )

    def _require_unsettled(self, how: str) -> None:
        """Settled once: a step that failed (Redis away) may be tried again, a done one may not."""
        if self.settled:
            raise RuntimeError(f"a durable message was settled twice (now {how})")

    def _taken_meanwhile(self, what: str) -> None:
        message = self.held.message
        logger.warning(
            "%s %s was handed to another worker while this one held it (frozen or cut off past its "
            "heartbeat); %s was not recorded here.",
            messages.quote(str(message.get("type"))),
            messages.clip(str(message.get("target"))),
            what,
            extra={"message_id": message.get("id"), "correlation_id": message.get("correlation_id")},
        )
