"""Deliberate staleness: read methods through a cache that serves the last value when a domain fails.

    stock = await acall_cached("inventory.stock", ttl=2.0, sku="A-1")
    stock.value, stock.stale, stock.age

Within `ttl` seconds a value is served from the cache without asking the domain. After that the
domain is asked; if it is down, slow or overloaded (Unavailable, DeadlineExceeded), the last
value is served with `stale=True` instead of an error, for up to BUS["STALE_FOR_SECONDS"]. The
cache is Django's (settings.CACHES, alias BUS["CACHE"]): per process with the default LocMemCache,
which keeps working when Redis itself is down.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches

from .client import Bus, default_bus
from .conf import bus_setting
from .exceptions import BusError, DeadlineExceeded, Unavailable
from .targets import lookup_method
from .threads import run_sync


@dataclass(frozen=True)
class Cached:
    """A read result and how fresh it is."""

    value: Any
    stale: bool
    age: float


def _key(target: str, arguments: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:32]
    return f"bus.cache:{target}:{digest}"


async def acall_cached(
    target: str, /, *, ttl: float, timeout: float | None = None, bus: Bus | None = None, **arguments: Any
) -> Cached:
    """Call a read method through the cache; fall back to the last value when the domain fails."""
    method = lookup_method(target)
    if not method.read:
        raise BusError(
            f"{target} is not a read method (@rpc(read=True)); only reads may be served from a cache."
        )
    cache = caches[bus_setting("CACHE")]
    key = _key(target, method.dump_arguments(arguments))
    entry = await cache.aget(key)
    now = time.time()
    if entry is not None and now - entry["at"] < ttl:
        return Cached(entry["value"], stale=False, age=now - entry["at"])
    try:
        value = await (bus or default_bus).acall(target, timeout=timeout, **arguments)
    except (Unavailable, DeadlineExceeded):
        if entry is None:
            raise
        return Cached(entry["value"], stale=True, age=now - entry["at"])
    await cache.aset(key, {"value": value, "at": now}, timeout=bus_setting("STALE_FOR_SECONDS"))
    return Cached(value, stale=False, age=0.0)


def call_cached(target: str, /, *, ttl: float, timeout: float | None = None, **arguments: Any) -> Cached:
    """The sync twin of `acall_cached`."""
    result: Cached = run_sync(acall_cached, target, ttl=ttl, timeout=timeout, **arguments)
    return result
