"""Settings: the layer follows REDIS_URL, mistakes name the setting and the fix."""

from __future__ import annotations

from typing import cast

import pytest
import redis
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from bus.conf import bus_setting, channel_layers
from bus.layers import InMemoryBusLayer, RedisBusLayer
from bus.sentinel import cache_settings
from tests.conftest import RedisServer


def test_no_redis_url_means_the_in_memory_layer(settings: object) -> None:
    settings.CHANNEL_LAYERS = channel_layers(None)  # type: ignore[attr-defined]
    assert isinstance(get_channel_layer(), InMemoryBusLayer)


def test_a_tls_url_with_a_password_is_passed_through(settings: object) -> None:
    settings.CHANNEL_LAYERS = channel_layers("rediss://app:s3cret@redis.example:6380/2")  # type: ignore[attr-defined]
    layer = get_channel_layer()
    assert isinstance(layer, RedisBusLayer)
    assert layer.hosts[0]["address"] == "rediss://app:s3cret@redis.example:6380/2"
    assert layer.hosts[0]["socket_timeout"] is None


def test_a_url_of_another_kind_is_refused() -> None:
    with pytest.raises(
        ImproperlyConfigured, match="REDIS_URL must start with redis://, rediss://, unix://, redis"
    ):
        channel_layers("http://localhost:6379")


def test_a_sentinel_url_names_the_sentinels_the_primary_and_one_identity_for_both(settings: object) -> None:
    url = "rediss+sentinel://orders:p%40ss@10.0.0.11:26379,10.0.0.12:26379/bus/3?ssl_ca_certs=/etc/ca.pem"
    settings.CHANNEL_LAYERS = channel_layers(url)  # type: ignore[attr-defined]
    layer = get_channel_layer()
    assert isinstance(layer, RedisBusLayer)
    identity = {"username": "orders", "password": "p@ss", "ssl": True, "ssl_ca_certs": "/etc/ca.pem"}
    assert layer.hosts[0]["sentinels"] == [("10.0.0.11", 26379), ("10.0.0.12", 26379)]
    assert layer.hosts[0]["master_name"] == "bus"
    assert layer.hosts[0]["db"] == 3
    # Sentinels answer at once or are gone: one that is gone must not hold up asking the others.
    assert layer.hosts[0]["sentinel_kwargs"] == {
        **identity,
        "socket_connect_timeout": 1.0,
        "socket_timeout": 1.0,
    }
    assert {name: layer.hosts[0][name] for name in identity} == identity
    cache = cache_settings(url)
    assert cache["OPTIONS"]["pool_class"] == "bus.sentinel.CachePool"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://10.0.0.11:26379", "does not name Sentinels and a primary"),
        ("redis+sentinel:///bus", "does not name Sentinels and a primary"),
        ("redis+sentinel://u:secret@10.0.0.11/bus", r"'10.0.0.11' is not host:port"),
        ("redis+sentinel://10.0.0.11:26379/bus/0?timeout=3", "unknown query argument 'timeout'"),
    ],
)
def test_a_sentinel_url_that_cannot_work_is_refused_saying_the_form(url: str, complaint: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=complaint) as refused:
        channel_layers(url)
    assert "secret" not in str(refused.value)


def test_bus_settings_are_checked(settings: object) -> None:
    settings.BUS = {"TIMEOUT": -1}  # type: ignore[attr-defined]
    with pytest.raises(
        ImproperlyConfigured, match=r"settings.BUS\['TIMEOUT'\] must be a positive number, not -1"
    ):
        bus_setting("TIMEOUT")
    settings.BUS = {"TIMOUT": 1}  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match=r"unknown keys \['TIMOUT'\]"):
        bus_setting("TIMEOUT")


@pytest.mark.redis
async def test_encryption_keys_keep_messages_unreadable_on_redis(
    redis_server: RedisServer, settings: object
) -> None:
    redis_server.flush()
    settings.CHANNEL_LAYERS = channel_layers(redis_server.url, encryption_keys=["k1"])  # type: ignore[attr-defined]
    layer = get_channel_layer()
    await layer.send("secret", {"type": "x", "text": "plain words"})
    raw = redis.Redis.from_url(redis_server.url)
    keys = cast(list[bytes], raw.keys("*secret*"))
    stored = b"".join(member for key in keys for member in cast(list[bytes], raw.zrange(key, 0, -1)))
    assert stored and b"plain words" not in stored
    assert (await layer.receive("secret"))["text"] == "plain words"
    await layer.close_pools()
