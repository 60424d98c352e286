"""A worker's heartbeat: what it tells the bus, and what it tidies, every BUS["HEARTBEAT_INTERVAL"].

Each beat records the worker's presence on every channel it serves, with its load and the
contract version it serves (`bus status`, callers' "no worker" check, the scaler); subscribes its
channels to the events its services handle (durably, or in the Channels group for at-most-once
events); sets the queue-depth metric; and, on durable channels, takes back what workers whose
presence ran out held, and what this worker's own receives left held without ever reaching it
(a reply lost with its connection), so that nothing waits for a worker that will never finish it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from . import metrics
from .conf import bus_setting
from .services import implementation
from .targets import Delivery, lookup_event

logger = logging.getLogger(__name__)


async def waiting(layer: Any, channel: str) -> int:
    """Messages waiting for `channel`'s workers: calls, and durable messages not taken yet."""
    depth = int(await layer.queue_depth(channel))
    if hasattr(layer, "durable_depth"):
        depth += (await layer.durable_depth(channel)).waiting
    return depth


class Heartbeat:
    """The beat of one worker (`worker_id`) on `channels`; `report()` is what it says of itself,
    `holding(channel)` the durable messages it has in hand."""

    def __init__(
        self,
        layer: Any,
        worker_id: str,
        channels: list[str],
        report: Callable[[], dict[str, Any]],
        holding: Callable[[str], Collection[str]],
    ) -> None:
        self.layer = layer
        self.worker_id = worker_id
        self.channels = channels
        self.report = report
        self.holding = holding
        self.durable = hasattr(layer, "durable_receive")
        #: Set once a beat has landed: durable receives wait for it, so that no other worker
        #: takes this one for dead while it already holds messages.
        self.seen = asyncio.Event()

    async def run(self) -> None:
        interval = bus_setting("HEARTBEAT_INTERVAL")
        groups = self._subscriptions()
        failing = False
        while True:
            try:
                await self._beat(interval, groups)
            except Exception as exc:
                failing = True
                logger.warning("Heartbeat failed (%s: %s); retrying.", type(exc).__name__, exc)
            else:
                if failing:
                    logger.info("Heartbeat works again: %s is seen as live.", ", ".join(self.channels))
                failing = False
            await asyncio.sleep(interval)

    async def leave(self) -> None:
        """Withdraw this worker's presence at once (a clean stop)."""
        for channel in self.channels:
            try:
                await self.layer.presence_leave(channel, self.worker_id)
            except Exception as exc:
                logger.warning("Could not withdraw presence on %r: %s", channel, exc)

    async def _beat(self, interval: float, groups: list[tuple[str, str, bool]]) -> None:
        info = self.report()
        for channel in self.channels:
            await self.layer.presence_beat(channel, self.worker_id, info, interval * 3)
        self.seen.set()
        for channel in self.channels:
            metrics.queue_depth.labels(channel).set(await waiting(self.layer, channel))
            if self.durable:
                await self._take_back(channel, interval)
        for group, channel, durable in groups:
            if durable:
                await self.layer.durable_subscribe(group, channel, bus_setting("SUBSCRIPTION_SECONDS"))
            else:
                await self.layer.group_add(group, channel)

    async def _take_back(self, channel: str, interval: float) -> None:
        dead = await self.layer.durable_reclaim(channel)
        if dead:
            metrics.redelivered.labels(channel).inc(dead)
            logger.warning(
                "Took back %d message(s) on %r from worker(s) whose heartbeat stopped; they run again.",
                dead,
                channel,
            )
        lost = await self.layer.durable_release(channel, self.worker_id, self.holding(channel), interval * 3)
        if lost:
            metrics.redelivered.labels(channel).inc(lost)
            logger.warning(
                "Put back %d message(s) on %r that this worker took but never received.", lost, channel
            )

    def _subscriptions(self) -> list[tuple[str, str, bool]]:
        """(event group, channel, durable) for the events the served services subscribe to."""
        found = []
        for channel in self.channels:
            service = implementation(channel)
            for target in service.subscriptions if service else ():
                event = lookup_event(target)
                durable = self.durable and event.delivery is Delivery.AT_LEAST_ONCE
                found.append((event.group, channel, durable))
        return found
