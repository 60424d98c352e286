"""A test domain whose methods exercise each path of the bus."""

from __future__ import annotations

from typing import Any

from bus import Contract, ContractError, Event, Schema, rpc


class Refused(ContractError):
    """The echo service refused, as asked."""


class Happened(Schema):
    text: str


class Item(Schema):
    sku: str
    quantity: int


class Echo(Contract, name="echo"):
    """Test-only service."""

    happened = Event(Happened)

    @rpc(read=True)
    async def echo(self, *, text: str) -> str: ...

    @rpc(read=True)
    async def add(self, *, a: int, b: int = 1) -> int: ...

    @rpc(read=True)
    async def count(self, *, items: list[Item]) -> int: ...

    @rpc()
    async def fail(self, *, message: str) -> None: ...

    @rpc(errors=[Refused])
    async def refuse(self, *, reason: str) -> None: ...

    @rpc()
    async def sleep(self, *, seconds: float) -> float: ...

    @rpc()
    async def sleep_sync(self, *, seconds: float, tag: str = "") -> float: ...

    @rpc()
    async def record(self, *, n: int) -> None: ...

    @rpc()
    async def blob(self, *, size: int) -> str: ...

    @rpc()
    async def whoami(self) -> dict[str, Any]: ...

    @rpc()
    async def relay(self, *, text: str) -> dict[str, Any]: ...

    @rpc()
    async def bad_result(self) -> int: ...

    @rpc(retries=2)
    async def flaky(self, *, key: str, failures: int) -> int: ...

    # Flaky with more retries, so that a test can catch a worker in a long retry wait.
    @rpc(retries=6)
    async def stubborn(self, *, key: str, failures: int) -> int: ...
