"""Fixtures for the layer tests: unique key prefixes on the session's private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from bus.layers import RedisBusLayer
from tests.conftest import RedisServer


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's private Redis; tests keep apart by prefix, so it is not flushed."""
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    # Fixed length and a closing ":" so that flush()'s KEYS pattern matches only this test.
    return f"bt{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def make_layer(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., RedisBusLayer]]:
    """Factory for RedisBusLayers on this test's prefix; all are flushed afterwards."""
    made: list[RedisBusLayer] = []

    def make(**kwargs: Any) -> RedisBusLayer:
        kwargs.setdefault("hosts", [redis_url])
        kwargs.setdefault("prefix", prefix)
        layer = RedisBusLayer(**kwargs)
        made.append(layer)
        return layer

    yield make
    if made:
        await made[0].flush()
    for layer in made:
        await layer.close_pools()
