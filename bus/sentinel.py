"""Redis behind Sentinel from one URL, so the channel layer and Django's cache follow a failover.

    rediss+sentinel://orders:secret@10.0.0.11:26379,10.0.0.12:26379/bus/0?ssl_ca_certs=/etc/ca.pem

The hosts are the Sentinels; the path is the primary's name as the Sentinels know it, then the
database number (0 when left out). The user, password and TLS options (`rediss+sentinel`, the
`ssl_*` query arguments) serve both the Sentinels and the primary: a process has one identity on
Redis, whichever server it reaches. With the URL of a plain server (redis://, rediss://) nothing
here is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEMES = ("redis+sentinel", "rediss+sentinel")
# Query arguments passed on to every connection (redis-py's own names).
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_EXAMPLE = "rediss+sentinel://user:password@host:26379,host:26379/master-name/0?ssl_ca_certs=/path/ca.pem"


@dataclass(frozen=True)
class SentinelURL:
    """What a Sentinel URL says: where the Sentinels are, which primary, and how to connect."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int
    options: dict[str, Any]  # username, password, ssl and ssl_* for every connection


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def parse(url: str) -> SentinelURL:
    """Read a Sentinel URL; anything it cannot use is refused with the form it expects."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ImproperlyConfigured(f"{url!r} is not a Sentinel URL; the form is {_EXAMPLE}.")
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_host_and_port(host, url) for host in hosts.split(",") if host]
    path = [segment for segment in parts.path.split("/") if segment]
    if not sentinels or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ImproperlyConfigured(
            f"REDIS_URL {_redacted(url)!r} does not name Sentinels and a primary: {_EXAMPLE}."
        )
    options: dict[str, Any] = {}
    if credentials:
        username, _, password = credentials.partition(":")
        options.update({"username": unquote(username) or None, "password": unquote(password) or None})
    if parts.scheme == "rediss+sentinel":
        options["ssl"] = True
    for name, value in parse_qsl(parts.query):
        if name not in _TLS_OPTIONS:
            raise ImproperlyConfigured(
                f"REDIS_URL has the unknown query argument {name!r}; the known ones are "
                f"{', '.join(_TLS_OPTIONS)}."
            )
        options[name] = value == "true" if name == "ssl_check_hostname" else value
    return SentinelURL(sentinels, path[0], int(path[1]) if len(path) == 2 else 0, options)


def _host_and_port(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(
            f"REDIS_URL {_redacted(url)!r}: {text!r} is not host:port (Sentinel's port is usually 26379)."
        )
    return host.strip("[]"), int(port)


def _redacted(url: str) -> str:
    credentials, at, rest = url.partition("@")
    return f"{credentials.split(':')[0]}:***@{rest}" if at else url


def layer_host(url: str) -> dict[str, Any]:
    """The channel layer's `hosts` entry for a Sentinel URL (channels-redis's Sentinel form)."""
    parsed = parse(url)
    return {
        "sentinels": parsed.sentinels,
        "master_name": parsed.master,
        "sentinel_kwargs": dict(parsed.options),
        "db": parsed.db,
        **parsed.options,
    }


class CachePool(SentinelConnectionPool):
    """Django's RedisCache through Sentinel (see `cache_settings`).

    Django splits LOCATION at commas into several servers, so the Sentinel URL travels whole in
    OPTIONS["sentinel_url"] and LOCATION only names the primary.
    """

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CachePool:
        parsed = parse(kwargs.pop("sentinel_url"))
        sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=dict(parsed.options), **parsed.options)
        return cls(parsed.master, sentinel, db=parsed.db, **parsed.options, **kwargs)


def cache_settings(url: str) -> dict[str, Any]:
    """A CACHES entry on the Redis of `url`, plain or behind Sentinel."""
    if is_sentinel_url(url):
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": parse(url).master,
            "OPTIONS": {"pool_class": f"{__name__}.{CachePool.__qualname__}", "sentinel_url": url},
        }
    return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
