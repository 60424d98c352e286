"""pytest plugin for running channels-redis's own test_core.py against RedisBusLayer.

Loaded with ``-p bus_upstream_plugin`` before the suite is collected, it rebinds
``channels_redis.core.RedisChannelLayer`` so that the suite's
``from channels_redis.core import RedisChannelLayer`` gets our layer. Every
``redis://localhost:6379[/db]`` host the suite names (and the default host) is pointed at the
private server in ``BUS_UPSTREAM_REDIS_URL``, so the suite's flushes touch nothing else.
``BUS_UPSTREAM_LAYER=stock`` runs the unmodified layer on the same server, for comparison.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import types
from typing import Any

import channels_redis.core
import pytest

from bus.layers import RedisBusLayer

_TARGET = os.environ["BUS_UPSTREAM_REDIS_URL"].rstrip("/")
_STOCK = os.environ.get("BUS_UPSTREAM_LAYER", "bus") == "stock"
_SUITE_DEFAULT = "redis://localhost:6379"


def _redirect(hosts: Any) -> Any:
    if not hosts:
        hosts = [_SUITE_DEFAULT]
    return [
        _TARGET + host[len(_SUITE_DEFAULT) :]
        if isinstance(host, str) and host.startswith(_SUITE_DEFAULT)
        else host
        for host in hosts
    ]


_Base: Any = channels_redis.core.RedisChannelLayer if _STOCK else RedisBusLayer


class UpstreamSuiteLayer(_Base):  # type: ignore[misc]
    """The layer under test, with the suite's hosts redirected to the private server."""

    def __init__(self, hosts: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(_redirect(hosts), *args, **kwargs)


channels_redis.core.RedisChannelLayer = UpstreamSuiteLayer

# The suite uses the async-timeout package, which is not installed here; asyncio.timeout
# (Python 3.11) is its standard-library successor with the same interface.
if importlib.util.find_spec("async_timeout") is None:
    _shim = types.ModuleType("async_timeout")
    _shim.timeout = asyncio.timeout  # type: ignore[attr-defined]
    sys.modules["async_timeout"] = _shim


def pytest_report_header() -> str:
    return f"layer under test: {_Base.__module__}.{_Base.__qualname__} on {_TARGET}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run if the suite somehow imported the stock class (a silent false pass)."""
    for item in items:
        module = getattr(item, "module", None)
        layer = getattr(module, "RedisChannelLayer", None)
        if layer is not None and layer is not UpstreamSuiteLayer:
            raise pytest.UsageError(f"{item.nodeid} sees {layer!r}, not the layer under test")
