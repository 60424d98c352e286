"""Serve domains inside a test's own event loop, in one line.

    async with serving("inventory"):
        assert await bus.acall("inventory.stock", sku="A-1")

With the in-memory layer this is the whole system in one process; with Redis it is a worker like
any other, which callers in other processes reach too.
"""

from .worker import serving

__all__ = ["serving"]
