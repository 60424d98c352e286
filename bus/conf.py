"""The bus's settings: `settings.BUS`, read lazily so tests can override them.

BUS = {
    "TIMEOUT": 5.0,                 # seconds a call waits for its reply, unless it says otherwise
    "MAX_MESSAGE_BYTES": 1048576,   # encoded size limit, checked before anything is sent
    "WORKER_CONCURRENCY": 64,       # messages one worker process handles at once
    "SHUTDOWN_GRACE": 10.0,         # seconds a stopping worker gives its in-flight messages
    "HEARTBEAT_INTERVAL": 2.0,      # seconds between a worker's presence beats
    "MAX_DELIVERIES": 5,            # a durable message whose workers died this often: dead letter
    "SUBSCRIPTION_SECONDS": 604800, # how long events queue for a subscriber domain with no worker
    "CONTRACTS_SNAPSHOT": "contracts.json",  # what `bus contracts check` compares the code with
    "CHANNEL_LAYER": "default",     # alias in CHANNEL_LAYERS the bus talks through
    "READ_YOUR_WRITES_SECONDS": 5.0,  # how long a writer keeps reading its primary
    "MODE_CACHE_SECONDS": 1.0,      # how stale a worker's view of read-only mode may be
    "CACHE": "default",             # alias in CACHES for acall_cached
    "STALE_FOR_SECONDS": 86400,     # how long acall_cached keeps a value to serve when stale
    "RETENTION_SECONDS": 604800,    # what `bus cleanup` keeps: delivered outbox, dedup, finished sagas
    "UP_COMMANDS": ["migrate_all"], # management commands `manage.py up` runs before it starts
    "METRICS_ALLOWED_NETWORKS": ["127.0.0.1/32", "::1/128"],  # who may read /metrics
    "METRICS_TOKEN": None,          # or anyone with `Authorization: Bearer <token>`
    "RETRY_BACKOFF": {"base": 0.5, "cap": 60.0, "jitter": 1.0},     # a failed command or event
    "RECONNECT_BACKOFF": {"base": 0.1, "cap": 2.0, "jitter": 1.0},  # while Redis does not answer
    "RESTART_BACKOFF": {"base": 0.5, "cap": 30.0, "jitter": 1.0},   # `up` restarting a process
    "IDENTITY": None,               # the service this process speaks for ("orders"): signs what it sends
    "SIGNING_KEY": None,            # path of that service's Ed25519 private key (PEM), with IDENTITY
    "TRUSTED_KEYS": None,           # dir of <service>.pub files, or {service: [PEM, ...]}: workers
                                    # then refuse messages not signed by one of those keys
    "SIGNATURE_MAX_AGE": 604800,    # seconds after sending a signed command or event is accepted
}

The three backoffs (bus/backoff.py) say how long the bus waits before trying again: retry number
n waits up to min(cap, base * 2 ** (n - 1)) seconds, anywhere below that with jitter 1 ("full
jitter", so processes that failed together do not retry together), exactly that with jitter 0.
Give only the keys you change: {"cap": 300} keeps base and jitter.
- RETRY_BACKOFF: a command or event whose handler failed (`@rpc(retries=)`, `@subscribe(retries=)`)
  before its next try, and an outbox row a subscriber has not acknowledged. Raise the cap to ride
  out longer outages of what handlers depend on before messages become dead letters.
- RECONNECT_BACKOFF: workers, reply listeners and the layer's process-local reader while the
  channel layer's server does not answer. The cap is how long a recovery may go unnoticed.
- RESTART_BACKOFF: `manage.py up` restarting a child that died; a child that ran 30 s starts again
  from base.

Signatures (bus/identity.py, bus/verification.py) are off until configured, so one process and
the tests need nothing. A process with IDENTITY and SIGNING_KEY signs every request, command and
event it sends; workers with TRUSTED_KEYS accept only messages signed by a trusted key, refuse
the rest before anything runs, and enforce who may call what (`@rpc(callers=...)`). No separate
switch: signing with nobody checking changes nothing, so a fleet turns it on by giving every
process its identity first and its workers TRUSTED_KEYS second. SIGNATURE_MAX_AGE bounds how long
a captured message can be replayed; 7 days, as long as events queue for a subscriber with no
worker (SUBSCRIPTION_SECONDS) and inboxes keep message ids (RETENTION_SECONDS), so a queued
message is not refused after an outage and any replay within it is a duplicate an inbox catches.
A request is also refused past its deadline.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from . import sentinel
from .backoff import Backoff

DEFAULTS: dict[str, Any] = {
    "TIMEOUT": 5.0,
    "MAX_MESSAGE_BYTES": 1024 * 1024,
    "WORKER_CONCURRENCY": 64,
    "SHUTDOWN_GRACE": 10.0,
    "HEARTBEAT_INTERVAL": 2.0,
    "MAX_DELIVERIES": 5,
    "SUBSCRIPTION_SECONDS": 7 * 86400,
    "CONTRACTS_SNAPSHOT": "contracts.json",
    "CHANNEL_LAYER": "default",
    "READ_YOUR_WRITES_SECONDS": 5.0,
    "MODE_CACHE_SECONDS": 1.0,
    "CACHE": "default",
    "STALE_FOR_SECONDS": 86400,
    "RETENTION_SECONDS": 7 * 86400,
    "UP_COMMANDS": ["migrate_all"],
    "METRICS_ALLOWED_NETWORKS": ["127.0.0.1/32", "::1/128"],
    "METRICS_TOKEN": None,
    "RETRY_BACKOFF": {"base": 0.5, "cap": 60.0, "jitter": 1.0},
    "RECONNECT_BACKOFF": {"base": 0.1, "cap": 2.0, "jitter": 1.0},
    "RESTART_BACKOFF": {"base": 0.5, "cap": 30.0, "jitter": 1.0},
    "IDENTITY": None,
    "SIGNING_KEY": None,
    "TRUSTED_KEYS": None,
    "SIGNATURE_MAX_AGE": 7 * 86400,
}

_POSITIVE_NUMBERS = (
    "TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "WORKER_CONCURRENCY",
    "HEARTBEAT_INTERVAL",
    "MAX_DELIVERIES",
    "SUBSCRIPTION_SECONDS",
    "READ_YOUR_WRITES_SECONDS",
)
_BACKOFFS = ("RETRY_BACKOFF", "RECONNECT_BACKOFF", "RESTART_BACKOFF")

# Replies of a whole process share one channel; give it room for many calls in flight.
REPLY_CHANNEL_CAPACITY = 10_000


# Checked values, read on every message; cleared when a test overrides BUS.
_checked: dict[str, Any] = {}


def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "BUS":
        _checked.clear()


setting_changed.connect(_forget)


def bus_setting(name: str) -> Any:
    """One value of settings.BUS, falling back to its default; errors name the fix."""
    try:
        return _checked[name]
    except KeyError:
        value = _checked[name] = _check(name)
        return value


def _check(name: str) -> Any:
    configured = getattr(settings, "BUS", {})
    unknown = set(configured) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.BUS has unknown keys {sorted(unknown)}; the known ones are {sorted(DEFAULTS)}."
        )
    value = configured.get(name, DEFAULTS[name])
    if name in _POSITIVE_NUMBERS and (not isinstance(value, (int, float)) or value <= 0):
        raise ImproperlyConfigured(
            f"settings.BUS[{name!r}] must be a positive number, not {value!r} (default {DEFAULTS[name]!r})."
        )
    if name in _BACKOFFS:
        return _backoff(name, value)
    return value


def backoff_setting(name: str) -> Backoff:
    """One of the BUS[...BACKOFF] settings, as the Backoff it configures."""
    if name not in _BACKOFFS:
        raise ValueError(f"{name!r} is not a backoff setting; those are {', '.join(_BACKOFFS)}.")
    backoff: Backoff = bus_setting(name)
    return backoff


def _backoff(name: str, value: Any) -> Backoff:
    default = DEFAULTS[name]
    unknown = set(value) - set(default) if isinstance(value, dict) else set()
    if not isinstance(value, dict) or unknown:
        raise ImproperlyConfigured(
            f"settings.BUS[{name!r}] must be a dict with some of the keys {sorted(default)}, not "
            f"{value!r} (default {default!r})."
        )
    try:
        return Backoff(**{**default, **value})
    except ValueError as exc:
        problem = str(exc).rstrip(".")
        raise ImproperlyConfigured(
            f"settings.BUS[{name!r}]: {problem}; the default is {default!r}."
        ) from None


def channel_layers(
    redis_url: str | None,
    *,
    encryption_keys: list[str] | None = None,
    prefix: str = "bus:",
    capacity: int = 1000,
    expiry: int = 60,
) -> dict[str, Any]:
    """A CHANNEL_LAYERS value: Redis when a URL is given, the in-memory layer otherwise.

    The URL may be redis:// or rediss:// (TLS) with a user and password, or name Sentinels
    (redis+sentinel://, rediss+sentinel://, see bus.sentinel); `encryption_keys`
    turns on channels-redis's symmetric message encryption (needs `cryptography`).
    """
    capacities = {"bus.reply.*": REPLY_CHANNEL_CAPACITY}
    if not redis_url:
        return {
            "default": {
                "BACKEND": "bus.layers.InMemoryBusLayer",
                "CONFIG": {"capacity": capacity, "expiry": expiry, "channel_capacity": capacities},
            }
        }
    scheme = urlsplit(redis_url).scheme
    if scheme not in ("redis", "rediss", "unix", *sentinel.SCHEMES):
        raise ImproperlyConfigured(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
            f"rediss+sentinel://, not {urlsplit(redis_url).scheme!r}."
        )
    host = sentinel.layer_host(redis_url) if scheme in sentinel.SCHEMES else {"address": redis_url}
    config: dict[str, Any] = {
        "hosts": [host],
        "prefix": prefix,
        "capacity": capacity,
        "expiry": expiry,
        "channel_capacity": capacities,
    }
    if encryption_keys:
        config["symmetric_encryption_keys"] = encryption_keys
    return {"default": {"BACKEND": "bus.layers.RedisBusLayer", "CONFIG": config}}
