"""RedisBusLayer behind Redis Sentinel: calls, process-local channels and groups, then a failover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus.layers import RedisBusLayer
from tests.conftest import RedisServer
from tests.polling import apoll, poll

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(60)]

MASTER = "bus"


class SentinelServer(RedisServer):
    """redis-server in Sentinel mode, watching one primary (a quorum of one, fast failover)."""

    def __init__(self, directory: Path, primary: RedisServer) -> None:
        super().__init__(directory)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 500\n"
            f"sentinel failover-timeout {MASTER} 2000\n"
        )

    def command(self, executable: str) -> list[str]:
        return [executable, str(self.config), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1"]

    def primary_port(self) -> int:
        host_and_port = redis.Redis(port=self.port).sentinel_get_master_addr_by_name(MASTER)
        assert isinstance(host_and_port, tuple), f"Sentinel does not know {MASTER!r}: {host_and_port!r}"
        return int(host_and_port[1])


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    primary = RedisServer(tmp_path / "primary")
    primary.directory.mkdir()
    primary.start()
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    replica.directory.mkdir()
    replica.start()
    watcher = SentinelServer(tmp_path, primary)
    watcher.start()
    try:
        yield primary, replica, watcher
    finally:
        for server in (watcher, replica, primary):
            server.stop()


async def round_trips(layer: RedisBusLayer, n: int) -> None:
    """A normal channel, a process-local one and a group, each carrying message `n`."""
    await layer.send("work", {"type": "job", "n": n})
    assert await layer.receive_batch("work", 5, 5.0) == [{"type": "job", "n": n}]
    local = await layer.new_channel()
    await layer.group_add("room", local)
    await layer.group_send("room", {"type": "news", "n": n})
    assert await asyncio.wait_for(layer.receive(local), 5) == {"type": "news", "n": n}
    await layer.group_discard("room", local)


async def test_the_layer_follows_sentinel_to_the_new_primary_after_a_failover(
    sentinel: tuple[RedisServer, RedisServer, SentinelServer], prefix: str
) -> None:
    primary, replica, watcher = sentinel
    poll(
        lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"],
        lambda status: status == "up",
        what="the replica to sync",
    )
    layer = RedisBusLayer(
        hosts=[{"sentinels": [("127.0.0.1", watcher.port)], "master_name": MASTER}], prefix=prefix
    )
    await round_trips(layer, 1)

    primary.stop()
    await asyncio.to_thread(
        poll, watcher.primary_port, lambda port: port == replica.port, what="Sentinel to promote the replica"
    )
    # The first use after the failover may meet a connection to the old primary; then the layer
    # asks Sentinel again and goes on against the new one.
    await apoll(
        lambda: round_trips(layer, 2),
        lambda _: True,
        what="round trips through the new primary",
        ignoring=(redis.exceptions.ConnectionError, redis.exceptions.ReadOnlyError, OSError),
    )
    await round_trips(layer, 3)
    await layer.close_pools()
