"""Serving domain channels: the loop behind `manage.py runworker inventory payments`.

What it promises, unlike Channels' stock `Worker`:
- it takes messages off a channel only when it has free slots (settings.BUS['WORKER_CONCURRENCY']
  for the whole process), so a crash loses at most what it was handling, never a backlog;
- each domain has two channels: calls (and at-most-once commands) on the normal one, commands
  and events at-least-once on the durable one (bus/layers/durable.py), where what a worker takes
  stays until it has finished with it (bus/receipts.py); what a dead worker held is taken back
  by the others with their heartbeat, and a message whose workers died BUS["MAX_DELIVERIES"]
  times is kept as a dead letter instead of being delivered again;
- it handles them concurrently, each message in its own consumer instance;
- a malformed message or a failing handler is answered or logged, and the worker goes on;
- when Redis goes away it retries with backoff (BUS["RECONNECT_BACKOFF"]) and resumes when
  Redis is back;
- on SIGTERM or SIGINT it stops taking messages, lets those in flight finish within
  settings.BUS['SHUTDOWN_GRACE'] seconds, hands back the durable ones that did not, and returns;
- it beats a heartbeat per channel, which `bus status` and callers' "no worker" check read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from channels.exceptions import StopConsumer
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from channels.routing import get_default_application

from . import databases, deadletters, identity, messages, metrics, wakeups
from .client import default_bus
from .conf import backoff_setting, bus_setting
from .consumer import reject
from .context import MessageContext, handling
from .exceptions import BadMessage
from .heartbeat import Heartbeat
from .receipts import Receipt
from .replies import receive_batch
from .services import Periodic, Service, implementation
from .targets import contract_version
from .threads import in_pool

logger = logging.getLogger(__name__)

# How long a receiver holding a worker's last free slots waits on Redis before giving them back
# for another channel (or the other side of its own) to try.
_SCARCE_WAIT = 0.05


def served_channels(application: Any) -> list[str]:
    """The channel names of the routing table's `channel` entry: the domains a worker can serve."""
    mapping = getattr(application, "application_mapping", {})
    router = mapping.get("channel")
    return sorted(getattr(router, "application_mapping", {}))


class Worker:
    """Serves the named channels of `application` (the `channel` entry of routing.py)."""

    def __init__(
        self,
        application: Any,
        channels: list[str],
        layer: BaseChannelLayer,
        *,
        concurrency: int | None = None,
        grace: float | None = None,
        receive_wait: float = 1.0,
    ) -> None:
        for channel in channels:
            messages.check_name(channel)
        identity.check()
        self.application = application
        self.channels = channels
        self.layer = layer
        self.concurrency = concurrency or bus_setting("WORKER_CONCURRENCY")
        self.grace = grace if grace is not None else bus_setting("SHUTDOWN_GRACE")
        # How long one receive blocks: the longest a stop waits to be noticed. Receives are not
        # cancelled, because a cancelled Redis pop can lose the message it was handed.
        self.receive_wait = receive_wait
        self.worker_id = f"{socket.gethostname()}.{os.getpid()}.{messages.new_id()[:8]}"
        self.started = time.time()
        self.handled = 0
        self._free = self.concurrency
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.durable = hasattr(layer, "durable_receive")
        self._receipts: set[Receipt] = set()  # durable messages in hand
        self.heartbeat = Heartbeat(layer, self.worker_id, channels, self._report, self._holding)
        self._receivers = len(channels) * (2 if self.durable else 1)
        # Receivers whose last receive found messages: the free slots are shared among them.
        self._busy_receivers = self._receivers
        self.retries = deadletters.Retries()

    def stop(self) -> None:
        """Stop taking messages; `run` returns once in-flight messages finish or the grace ends."""
        if not self._stopping.is_set():
            logger.info(
                "Worker %s stopping: finishing %d message(s) in flight.", self.worker_id, len(self._tasks)
            )
            self._stopping.set()
            self._slot_freed.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        logger.info(
            "Worker %s serving %s with %d slots.", self.worker_id, ", ".join(self.channels), self.concurrency
        )
        background = [asyncio.create_task(self._receive(channel, durable=False)) for channel in self.channels]
        if self.durable:
            background += [
                asyncio.create_task(self._receive(channel, durable=True)) for channel in self.channels
            ]
        background += [asyncio.create_task(self._repeat(*task)) for task in self._periodic()]
        background.append(asyncio.create_task(self.heartbeat.run()))
        try:
            await self._stopping.wait()
        finally:
            # Receivers notice the stop within one receive wait and keep what they received.
            await asyncio.gather(*background[:-1], return_exceptions=True)
            if self._tasks:
                _, pending = await asyncio.wait(self._tasks, timeout=self.grace)
                for task in pending:
                    task.cancel()
                if pending:
                    logger.warning(
                        "Cancelled %d message(s) still running after the %.1f s grace.",
                        len(pending),
                        self.grace,
                    )
            await self._hand_on_retries()
            background[-1].cancel()
            await asyncio.gather(background[-1], return_exceptions=True)
            await self.heartbeat.leave()
            if install_signal_handlers:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
        logger.info("Worker %s stopped after handling %d message(s).", self.worker_id, self.handled)

    async def _hand_on_retries(self) -> None:
        """Retries waiting in this worker go back to their channel for the next worker (see
        bus.deadletters); the in-memory layer ends with this process, so there they are kept."""
        durable = not isinstance(self.layer, InMemoryChannelLayer)
        handed = await self.retries.hand_on(self.channels, durable=durable)
        if handed:
            logger.info(
                "Handed on %d retry(ies) waiting in this worker: %s.",
                handed,
                "back on their channels, each due when it was" if durable else "kept as dead letters",
            )

    async def _receive(self, channel: str, *, durable: bool) -> None:
        failures = 0
        lost = 0.0  # since when receiving fails
        if durable:
            await self._wait(self.heartbeat.seen)
        idle = False
        while not self._stopping.is_set():
            slots = await self._take_slots(idle=idle)
            if slots == 0:
                continue
            wait = self._receive_wait(idle)
            try:
                batch = await self._take(channel, slots, wait, durable=durable)
            except Exception as exc:
                self._give_back(slots)
                failures += 1
                lost = lost or time.monotonic()
                wait = backoff_setting("RECONNECT_BACKOFF").delay(failures)
                logger.warning(
                    "Receiving on %r failed (%s: %s); retrying in %.1f s.",
                    channel,
                    type(exc).__name__,
                    exc,
                    wait,
                )
                await self._sleep(wait)
                continue
            if failures:
                logger.info(
                    "Receiving on %r works again, after %.1f s without the channel layer.",
                    channel,
                    time.monotonic() - lost,
                )
                failures, lost = 0, 0.0
            self._give_back(slots - len(batch))
            if idle != (not batch):
                idle = not batch
                self._busy_receivers += -1 if idle else 1
            for message, receipt in batch:
                task = asyncio.create_task(self._handle(channel, message, receipt))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            # Let the new handlers start (quick ones reply) and other receivers take the slots
            # given back, before this one blocks on Redis again.
            await asyncio.sleep(0)

    def _receive_wait(self, idle: bool) -> float:
        """How long a receive may block on Redis. Holding the last free slots, a receiver that has
        messages to take waits briefly, so that the others get their turn; an idle one holds a
        single slot, and waits the full time unless the worker has hardly more slots than
        receivers (then that slot is what another side needs)."""
        if self._free or self._receivers == 1:
            return self.receive_wait
        if idle and self.concurrency > 2 * self._receivers:
            return self.receive_wait
        return _SCARCE_WAIT

    async def _take(
        self, channel: str, slots: int, wait: float, *, durable: bool
    ) -> list[tuple[Any, Receipt | None]]:
        """Up to `slots` messages from `channel`'s normal or durable side, each with its receipt."""
        if not durable:
            received = await receive_batch(self.layer, channel, slots, timeout=wait)
            return [(message, None) for message in received]
        held = await self.layer.durable_receive(channel, self.worker_id, slots, timeout=wait)
        receipts = [Receipt(self.layer, channel, self.worker_id, one) for one in held]
        self._receipts.update(receipts)
        return [(receipt.held.message, receipt) for receipt in receipts]

    async def _take_slots(self, *, idle: bool) -> int:
        """Wait for a free slot (or a stop), then take this receiver's share of the free slots.

        A share, not all: a receiver blocked on an idle channel must not hold the slots that
        another channel's messages (or the other side of its own) are waiting for. One that found
        nothing last time waits with a single slot, and takes its share once messages come.
        """
        while self._free == 0 and not self._stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()
        if self._stopping.is_set():
            return 0
        slots = 1 if idle else max(1, -(-self._free // max(1, self._busy_receivers)))
        self._free -= slots
        return slots

    def _give_back(self, slots: int) -> None:
        if slots:
            self._free += slots
            self._slot_freed.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.handled += 1
        self._give_back(1)

    async def _handle(self, channel: str, message: Any, receipt: Receipt | None = None) -> None:
        """Run the application for one message; a durable one is then acknowledged, unless the
        consumer requeued it, or handed back if the worker stopped before it finished."""
        if receipt is None:
            await self._dispatch(channel, message, None)  # a call: nothing to settle
            return
        try:
            await self._settled(channel, message, receipt)
        finally:
            self._receipts.discard(receipt)

    async def _settled(self, channel: str, message: Any, receipt: Receipt) -> None:
        try:
            await self._dispatch(channel, message, receipt)
        except asyncio.CancelledError:
            if receipt is not None and not receipt.settled:
                await receipt.hand_back()
            raise
        except Exception:
            # The worker's own step failed (storing a dead letter, say), not the handler: try later.
            logger.exception(
                "Handling a message on %r failed in the worker; it is tried again later.", channel
            )
            if receipt is not None and not receipt.settled:
                due = time.time() + backoff_setting("RETRY_BACKOFF").delay(receipt.number)
                await self._settle(lambda: receipt.retry(message, due))
            return
        if receipt is not None and not receipt.settled:
            await self._settle(receipt.ack)

    async def _settle(self, step: Callable[[], Awaitable[None]]) -> None:
        """Settle a durable message, trying again while Redis does not answer: a message left
        held by a live worker would wait for that worker to die."""
        failures = 0
        while True:
            try:
                await step()
                return
            except Exception as exc:
                failures += 1
                if self._stopping.is_set():
                    logger.warning(
                        "Could not settle a message before stopping (%s); it goes back later.", exc
                    )
                    return
                wait = backoff_setting("RECONNECT_BACKOFF").delay(failures)
                logger.warning(
                    "Settling a message failed (%s: %s); trying again in %.1f s.",
                    type(exc).__name__,
                    exc,
                    wait,
                )
                await self._sleep(wait)

    async def _dispatch(self, channel: str, message: Any, receipt: Receipt | None) -> None:
        if not isinstance(message, dict) or not message.get("type"):
            # No application can dispatch it; its sender, if it named a reply channel, is told
            # everything that is wrong with it.
            try:
                messages.parse_envelope(message)
            except BadMessage as problem:
                await reject(self.layer, message, problem)
            return
        if receipt is not None and receipt.number > bus_setting("MAX_DELIVERIES"):
            await receipt.bury_as_poison()
            return
        delivered = False

        async def receive() -> Any:
            nonlocal delivered
            if delivered:
                # One message per application instance: the next receive ends a Channels consumer.
                raise StopConsumer()
            delivered = True
            return message

        async def send(_: Any) -> None:
            raise NotImplementedError("A worker's application replies through the channel layer, not send().")

        try:
            scope = {"type": "channel", "channel": channel, "retries": self.retries, "receipt": receipt}
            await self.application(scope, receive, send)
        except Exception:
            logger.exception(
                "The application for %r failed on a %s message.", channel, messages.quote(message.get("type"))
            )

    def _periodic(self) -> list[tuple[type[Service], str, Periodic]]:
        """(service, method name, schedule) of every `@every` method of the served services."""
        services = [service for service in map(implementation, self.channels) if service is not None]
        return [
            (service, name, periodic) for service in services for name, periodic in service.periodic.items()
        ]

    async def _repeat(self, service: type[Service], name: str, periodic: Periodic) -> None:
        """Run one periodic method until the worker stops; a failure is logged, never fatal."""
        target = f"{service.contract.name}.{name}"
        signal = periodic.woken_by
        with wakeups.listening(signal) if signal else contextlib.nullcontext() as woken:
            while not self._stopping.is_set():
                await self._sleep(periodic.seconds, woken)
                if self._stopping.is_set():
                    return
                message_id = messages.new_id()
                context = MessageContext(message_id=message_id, correlation_id=message_id, target=target)
                with handling(context), databases.consistency_scope():
                    try:
                        await in_pool(getattr(service(context), name))
                    except Exception:
                        logger.exception(
                            "Periodic %s failed; it runs again in %.1f s.", target, periodic.seconds
                        )

    def _report(self) -> dict[str, Any]:
        """What the heartbeat says of this worker: its load, and which contract version it serves
        on each channel (`bus status` shows a domain running two)."""
        metrics.in_flight.labels(",".join(self.channels)).set(len(self._tasks))
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "concurrency": self.concurrency,
            "in_flight": len(self._tasks),
            "handled": self.handled,
            "contracts": {channel: contract_version(channel) for channel in self.channels},
        }

    def _holding(self, channel: str) -> set[str]:
        return {receipt.held.id for receipt in self._receipts if receipt.channel == channel}

    async def _wait(self, event: asyncio.Event) -> None:
        """Until `event` is set or the worker stops."""
        await self._sleep(math.inf, event, clear=False)

    async def _sleep(self, seconds: float, woken: asyncio.Event | None = None, *, clear: bool = True) -> None:
        """Wait `seconds`, less if the worker stops or `woken` is set (which is then cleared)."""
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if woken is not None:
            waits.append(asyncio.ensure_future(woken.wait()))
        try:
            timeout = None if math.isinf(seconds) else seconds
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if woken is not None and clear:
            woken.clear()


@asynccontextmanager
async def serving(
    *channels: str, application: Any = None, concurrency: int | None = None
) -> AsyncIterator[Worker]:
    """Run a Worker for `channels` in this event loop until the block ends, then drain it.

    For one-process setups, commands that need a domain (seed), and tests.
    """
    layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
    worker = Worker(
        application or get_default_application(),
        list(channels),
        layer,
        concurrency=concurrency,
        receive_wait=0.1,
    )
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        # Callers check presence before sending: wait for the first heartbeat.
        for channel in channels:
            while worker.worker_id not in await layer.presence(channel):
                if task.done():
                    await task
                await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.stop()
        await task
        await default_bus.aclose()
