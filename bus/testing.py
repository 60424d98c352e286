"""Serve domains inside a test's own event loop, in one line.

    async with serving("inventory"):
        assert await bus.acall("inventory.stock", sku="A-1")

With the in-memory layer this is the whole system in one process; with Redis it is a worker like
any other, which callers in other processes reach too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import get_default_application

from .client import default_bus
from .conf import bus_setting
from .worker import Worker


@asynccontextmanager
async def serving(
    *channels: str, application: Any = None, concurrency: int | None = None
) -> AsyncIterator[Worker]:
    """Run a Worker for `channels` in this event loop until the block ends, then drain it."""
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
