from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from django.db import transaction

import bus
from bus import Service, every, subscribe
from bus.databases import alias_for
from bus.inbox import first_delivery
from workers.orders.contract import OrderUpdated

from .contract import Echo, Happened, Item, Refused
from .models import Processed


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
        _append("sleeping", str(seconds))  # tests wait for this to know the handler has started
        await asyncio.sleep(seconds)
        _append("slept", str(seconds))
        return seconds

    def sleep_sync(self, *, seconds: float, tag: str = "") -> float:
        _append("sleeping", tag or str(seconds))
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

    def flaky(self, *, key: str, failures: int) -> int:
        """Fail the first `failures` tries (a file named flaky-<key>.failures overrides it)."""
        directory = Path(os.environ["BUS_TEST_RECORD_DIR"])
        _append(f"flaky-{key}", self.context.message_id)
        tries = len((directory / f"flaky-{key}-{os.getpid()}.txt").read_text().split())
        override = directory / f"flaky-{key}.failures"
        if tries <= (int(override.read_text()) if override.exists() else failures):
            raise RuntimeError(f"flaky {key} fails try {tries}")
        return tries

    def stubborn(self, *, key: str, failures: int) -> int:
        return self.flaky(key=key, failures=failures)

    @subscribe("echo.happened", retries=1)
    def on_happened(self, event: Happened) -> None:
        if event.text == "explode":
            raise ValueError("this event always fails")
        _append("event", event.text)

    @subscribe("orders.updated")
    def on_order(self, event: OrderUpdated) -> None:
        # Deliveries repeat until acknowledged: record each event once, in one transaction.
        with transaction.atomic(using=alias_for("echo", write=True)):
            if first_delivery(Processed, self.context.message_id):
                _append("order", f"{event.order.order_id}:{event.order.state}")

    @every(3600, woken_by="echo.poked")
    def on_poke(self) -> None:
        # Hourly: a test sees it run only because wake("echo.poked") ran it early.
        _append("poked", self.context.message_id)
