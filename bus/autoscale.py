"""Workers that follow the load: `manage.py up --workers orders=1:4`.

A scaler per domain looks at the domain every second: messages waiting for a worker (calls and
durable commands and events not taken yet) and how busy its live workers are (in-flight messages
over their slots, from their heartbeats). It adds a worker when a backlog waits and the workers
are busy for several looks in a row, and retires one when nothing waits and they are nearly idle
for many looks in a row; after any change it waits a cooldown before the next. The thresholds
are apart and the looks counted, so a load near one threshold does not make it flap. A retired
worker is stopped with SIGTERM: it finishes what it holds and hands back the rest.

On a cluster the same rule fits an autoscaler reading Prometheus: `bus_queue_depth{channel}` (what
waits) and `bus_worker_in_flight{channel}` (what runs), from every worker's /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .heartbeat import waiting
from .supervisor import Child, Supervisor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    """How many workers a domain may have: `least` always, `most` under load."""

    least: int
    most: int

    @classmethod
    def parse(cls, text: str) -> Bounds:
        """`3` (fixed) or `1:4` (between 1 and 4); ValueError saying what is wrong otherwise."""
        least, colon, most = text.partition(":")
        if not least.isdigit() or (colon and not most.isdigit()):
            raise ValueError(f"a count is COUNT or MIN:MAX with whole numbers, not {text!r}")
        bounds = cls(int(least), int(most or least))
        if bounds.least < 1 or bounds.most < bounds.least:
            raise ValueError(f"need 1 <= MIN <= MAX, not {text!r}")
        return bounds


@dataclass(frozen=True)
class Load:
    """A domain at one look: what waits for a worker, what its workers run, and their slots."""

    waiting: int
    in_flight: int
    slots: int

    @property
    def busy(self) -> float:
        return self.in_flight / self.slots if self.slots else 0.0


@dataclass
class Policy:
    """When to add or retire a worker, with hysteresis (see the module docstring)."""

    bounds: Bounds
    up_after: int = 3  # looks in a row with a backlog and busy workers
    down_after: int = 10  # looks in a row with nothing waiting and idle workers
    busy_up: float = 0.75
    busy_down: float = 0.25
    cooldown: float = 5.0  # seconds after a change before the next
    _pressed: int = 0
    _idle: int = 0
    _changed_at: float = float("-inf")

    def decide(self, load: Load, running: int, now: float) -> int:
        """+1 to add a worker, -1 to retire one, 0 to keep `running` as it is."""
        self._pressed = self._pressed + 1 if load.waiting > 0 and load.busy >= self.busy_up else 0
        self._idle = self._idle + 1 if load.waiting == 0 and load.busy <= self.busy_down else 0
        if now - self._changed_at < self.cooldown:
            return 0
        if running < self.bounds.least or (self._pressed >= self.up_after and running < self.bounds.most):
            return self._change(+1, now)
        if running > self.bounds.most or (self._idle >= self.down_after and running > self.bounds.least):
            return self._change(-1, now)
        return 0

    def _change(self, step: int, now: float) -> int:
        self._pressed = self._idle = 0
        self._changed_at = now
        return step


async def read_load(layer: Any, domain: str) -> Load:
    """The domain's load, from the channel layer: queues and the live workers' heartbeats."""
    workers = (await layer.presence(domain)).values()
    in_flight = sum(int(info.get("in_flight", 0)) for info in workers)
    slots = sum(int(info.get("concurrency", 0)) for info in workers)
    return Load(await waiting(layer, domain), in_flight, slots)


class Scaler:
    """Keeps one domain's worker processes within their bounds, following its load."""

    def __init__(
        self,
        supervisor: Supervisor,
        domain: str,
        policy: Policy,
        layer: Any,
        make_child: Callable[[int], Child],
        *,
        every: float = 1.0,
    ) -> None:
        self.supervisor = supervisor
        self.domain = domain
        self.policy = policy
        self.layer = layer
        self.make_child = make_child
        self.every = every
        self.children: list[Child] = []
        self._made = 0

    def start(self) -> None:
        """The least number of workers, at once."""
        while len(self.children) < self.policy.bounds.least:
            self._add()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every)
            try:
                load = await read_load(self.layer, self.domain)
            except Exception as exc:  # Redis away: keep the workers as they are
                logger.warning("Cannot read the load of %s (%s: %s).", self.domain, type(exc).__name__, exc)
                continue
            step = self.policy.decide(load, len(self.children), loop.time())
            if step:
                why = f"{load.waiting} waiting, {load.in_flight} of {load.slots} slots busy"
                if step > 0:
                    self._add()
                else:
                    self.supervisor.retire(self.children.pop())
                self.supervisor.say(
                    "up", "", f"scaling {self.domain} to {len(self.children)} worker(s): {why}"
                )

    def _add(self) -> None:
        self._made += 1
        child = self.make_child(self._made)
        self.children.append(child)
        self.supervisor.add(child)
