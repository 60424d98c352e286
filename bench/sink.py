"""A benchmark-only domain for bench/delivery.py: commands whose handlers only note the time.

`sink.take` is at-least-once (the bus's default for commands), `sink.take_once` the same handler
declared at-most-once (the old path: a sorted-set channel, popped, never acknowledged). The
handlers are coroutines that call `bench.probe.record`, so no thread hop, no database and no I/O
of their own: what is measured is the transport. bench/settings.py and bench/routing.py serve the
domain next to the test domains, without touching tests/.
"""

from __future__ import annotations

from bench import probe
from bus import Contract, Delivery, Service, rpc


class Sink(Contract, name="sink"):
    """Benchmark-only service: commands that do nothing but say when they were handled."""

    @rpc()
    async def take(self, *, sent: float) -> None:
        """Note that a command sent at `sent` (time.time()) was handled; at-least-once."""

    @rpc(delivery=Delivery.AT_MOST_ONCE)
    async def take_once(self, *, sent: float) -> None:
        """The same, at-most-once."""


class SinkService(Service, contract=Sink):
    async def take(self, *, sent: float) -> None:
        probe.record(sent)

    async def take_once(self, *, sent: float) -> None:
        probe.record(sent)
