"""A test domain for durable delivery: each command adds one to a counter in its database."""

from __future__ import annotations

from bus import Contract, rpc


class Tally(Contract, name="tally"):
    """Test-only service: counters that commands add to, exactly once each."""

    @rpc()
    async def add(self, *, counter: str) -> None:
        """Add one to `counter`."""

    @rpc()
    async def add_slowly(self, *, counter: str, seconds: float) -> None:
        """Add one to `counter`, then take `seconds` before the transaction commits."""

    @rpc()
    async def crash(self, *, note: str) -> None:
        """End the worker process at once (os._exit), as a segfault or the OOM killer would."""

    @rpc(read=True)
    async def total(self, *, counter: str) -> int:
        """The counter's value."""
