from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import bus
from bus import Service, subscribe

from .contract import Echo, Happened, Item, Refused


def _append(kind: str, line: str) -> None:
    """Record a line in $BUS_TEST_RECORD_DIR/<kind>-<pid>.txt, so tests can count executions."""
    directory = os.environ.get("BUS_TEST_RECORD_DIR")
    if directory:
        with open(Path(directory) / f"{kind}-{os.getpid()}.txt", "a") as file:
            file.write(line + "\n")


class EchoService(Service, contract=Echo):
    def echo(self, *, text: str) -> str:
        return text

    async def add(self, *, a: int, b: int = 1) -> int:
        return a + b

    def count(self, *, items: list[Item]) -> int:
        return sum(item.quantity for item in items)

    def fail(self, *, message: str) -> None:
        raise RuntimeError(message)

    def refuse(self, *, reason: str) -> None:
        raise Refused(f"Refused: {reason}", reason=reason)

    async def sleep(self, *, seconds: float) -> float:
        await asyncio.sleep(seconds)
        _append("slept", str(seconds))
        return seconds

    def sleep_sync(self, *, seconds: float, tag: str = "") -> float:
        time.sleep(seconds)
        _append("slept", tag or str(seconds))
        return seconds

    def record(self, *, n: int) -> None:
        _append("record", str(n))

    def blob(self, *, size: int) -> str:
        return "x" * size

    def whoami(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "correlation_id": self.context.correlation_id,
            "message_id": self.context.message_id,
        }

    def relay(self, *, text: str) -> dict[str, Any]:
        # A sync handler calling another domain: the call inherits this message's correlation id.
        inner = bus.call("echo.whoami")
        return {
            "text": bus.call("echo.echo", text=text),
            "inner": inner,
            "outer": self.context.correlation_id,
        }

    def bad_result(self) -> int:
        return "not a number"  # type: ignore[return-value]

    @subscribe("echo.happened")
    def on_happened(self, event: Happened) -> None:
        _append("event", event.text)
