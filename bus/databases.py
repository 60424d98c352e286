"""Which database a query goes to: one domain per database, replicas with read-your-writes, shards.

Every alias is chosen by `alias_for(app_label, key=..., write=...)`, the one function the router
and sharded domains share, so that moving a domain, adding a replica or sharding a table is a
change of settings, not of code:

    DATABASES = {"default": ..., "inventory": ..., "inventory_replica": ..., "payments_0": ..., ...}
    DATABASE_REPLICAS = {"inventory": ["inventory_replica"]}      # reads may go there
    DATABASE_SHARDS = {"payments": ["payments_0", "payments_1"]}  # rows spread by a stable key hash

Read-your-writes: a write pins its alias to the primary for the rest of the request or bus
message, and for BUS["READ_YOUR_WRITES_SECONDS"] after it; the pins travel in bus message headers
and replies, so the caller that wrote reads its own writes too. The pins live in a context
variable, so they follow asyncio tasks and sync_to_async threads, never leaking across requests.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model

from .conf import bus_setting

# Pins of the current request or message: alias -> time until which it reads from the primary.
_scope: ContextVar[dict[str, float] | None] = ContextVar("bus_database_pins", default=None)
# Outside any request or message (a shell, a command), the process itself is the caller.
_process_pins: dict[str, float] = {}


def shards(app_label: str) -> list[str]:
    """The shard aliases of a sharded app, in order; empty when the app is not sharded."""
    configured: Mapping[str, list[str]] = getattr(settings, "DATABASE_SHARDS", {})
    return list(configured.get(app_label, []))


def primary_for(app_label: str, key: str | None = None) -> str:
    """The primary alias that holds `app_label`'s rows (for a sharded app, the rows of `key`)."""
    aliases = shards(app_label)
    if aliases:
        if key is None:
            raise ImproperlyConfigured(
                f"The {app_label!r} tables are sharded over {aliases}: access them with "
                f".using(alias_for({app_label!r}, key=..., write=...)), never through the default manager."
            )
        digest = hashlib.sha256(str(key).encode()).digest()
        return aliases[int.from_bytes(digest[:8], "big") % len(aliases)]
    return app_label if app_label in settings.DATABASES else "default"


def alias_for(app_label: str, *, key: str | None = None, write: bool) -> str:
    """The alias to use now: the primary for writes and pinned reads, else one of its replicas."""
    primary = primary_for(app_label, key)
    if write:
        pin(primary)
        return primary
    replicas: Mapping[str, list[str]] = getattr(settings, "DATABASE_REPLICAS", {})
    candidates = replicas.get(primary)
    if not candidates or is_pinned(primary):
        return primary
    return random.choice(candidates)


def primary_of(alias: str) -> str:
    """The primary behind an alias (itself, unless it is a replica)."""
    replicas: Mapping[str, list[str]] = getattr(settings, "DATABASE_REPLICAS", {})
    return next((primary for primary, names in replicas.items() if alias in names), alias)


# -- read-your-writes -------------------------------------------------------


def _pins() -> dict[str, float]:
    scope = _scope.get()
    return _process_pins if scope is None else scope


def pin(alias: str) -> None:
    """Make reads of `alias` go to its primary for the pin window."""
    _pins()[alias] = time.time() + bus_setting("READ_YOUR_WRITES_SECONDS")


def is_pinned(alias: str) -> bool:
    return _pins().get(alias, 0.0) > time.time()


def current_pins() -> dict[str, float]:
    """The unexpired pins, as they travel in bus headers and cookies."""
    now = time.time()
    return {alias: until for alias, until in _pins().items() if until > now}


def absorb(pins: Any) -> None:
    """Take on pins handed back by a callee (a reply's headers), ignoring anything malformed."""
    if not isinstance(pins, dict):
        return
    scope = _pins()
    now = time.time()
    for alias, until in pins.items():
        if isinstance(alias, str) and isinstance(until, (int, float)) and until > now:
            scope[alias] = max(scope.get(alias, 0.0), float(until))


class consistency_scope:  # noqa: N801 - used like contextlib's lower-case context managers
    """One request or message: its own pins, seeded from the caller's (a class: it runs per message)."""

    __slots__ = ("_pins", "_token")

    def __init__(self, pins: Any = None) -> None:
        self._pins = pins

    def __enter__(self) -> dict[str, float]:
        scope: dict[str, float] = {}
        self._token = _scope.set(scope)
        if self._pins:
            absorb(self._pins)
        return scope

    def __exit__(self, *exc_info: object) -> None:
        _scope.reset(self._token)


# -- the router ---------------------------------------------------------------


class DomainRouter:
    """Routes every model through `alias_for`; relations stay within one database."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return str(instance._state.db)
        return alias_for(model._meta.app_label, write=False)

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            # An object read from a replica (or a shard) is saved to that replica's primary.
            alias = primary_of(str(instance._state.db))
            pin(alias)
            return alias
        return alias_for(model._meta.app_label, write=True)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool:
        return primary_of(str(obj1._state.db)) == primary_of(str(obj2._state.db))

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        if db in {alias for names in getattr(settings, "DATABASE_REPLICAS", {}).values() for alias in names}:
            # A replica gets its tables from its primary (streaming replication); tests migrate it
            # on purpose, as a separate database whose lag never ends.
            return bool(getattr(settings, "MIGRATE_REPLICAS", False)) and db_holds(db, app_label)
        return db_holds(db, app_label)


def db_holds(alias: str, app_label: str) -> bool:
    """Whether `alias` (a primary or shard, or a replica of one) holds `app_label`'s tables."""
    primary = primary_of(alias)
    sharded = shards(app_label)
    if sharded:
        return primary in sharded
    return primary == (app_label if app_label in settings.DATABASES else "default")
