"""Tests for bus.layers: RedisBusLayer against a real Redis, InMemoryBusLayer in process."""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.exceptions import ChannelFull
from redis import asyncio as aioredis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from bus.layers import DEFAULT_MAX_CONNECTIONS, InMemoryBusLayer, RedisBusLayer, wire
from tests.polling import apoll

REPO = Path(__file__).resolve().parents[2]

MakeLayer = Callable[..., RedisBusLayer]


def blocked_clients(url: str) -> int:
    """Clients of the server at `url` waiting in a blocking command (BZMPOP, BZPOPMIN)."""
    return int(redis.Redis.from_url(url).info("clients")["blocked_clients"])


async def until_blocked(url: str, more_than: int = 0) -> None:
    """Until more than `more_than` clients wait in Redis: a receive started is now waiting there."""
    await apoll(
        lambda: asyncio.to_thread(blocked_clients, url),
        lambda blocked: blocked > more_than,
        what=f"more than {more_than} client(s) blocked in Redis",
    )


async def until_waiting(layer: InMemoryBusLayer, channel: str, receivers: int) -> None:
    """Until `receivers` receives wait on `channel` of an in-memory layer."""

    async def waiting() -> int:
        return layer._held.get(channel, (None, 0))[1]

    await apoll(
        waiting, lambda count: count == receivers, what=f"{receivers} receive(s) waiting on {channel}"
    )


# --------------------------------------------------------------------------------------------
# Configuration (no network)
# --------------------------------------------------------------------------------------------


def test_url_hosts_get_blocking_pool_without_socket_timeout() -> None:
    layer = RedisBusLayer(hosts=["rediss://user:secret@redis.example:6380/0"])
    pool = layer.create_pool(0)
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == DEFAULT_MAX_CONNECTIONS
    assert pool.timeout is None
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["socket_timeout"] is None
    assert (kwargs["username"], kwargs["password"], kwargs["port"]) == ("user", "secret", 6380)


def test_user_settings_win() -> None:
    layer = RedisBusLayer(
        hosts=[
            {"address": "redis://h1:6379", "socket_timeout": 30, "max_connections": 20},
            "redis://h2:6379/3?socket_timeout=40",
            {"host": "h3", "port": 6379, "pool_timeout": 2.5},
            ("h4", 6379),
        ]
    )
    first, second, third, fourth = (layer.create_pool(i) for i in range(4))
    assert first.connection_kwargs["socket_timeout"] == 30
    assert first.max_connections == 20
    assert second.connection_kwargs["socket_timeout"] == 40
    assert second.connection_kwargs["db"] == 3
    assert isinstance(third, BlockingConnectionPool) and third.timeout == 2.5
    assert third.connection_kwargs["socket_timeout"] is None
    assert fourth.connection_kwargs["host"] == "h4"


def test_sentinel_hosts_use_parent_pool_with_bus_defaults() -> None:
    layer = RedisBusLayer(hosts=[{"sentinels": [("127.0.0.1", 26379)], "master_name": "mymaster", "db": 1}])
    pool = layer.create_pool(0)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.max_connections == DEFAULT_MAX_CONNECTIONS
    assert pool.connection_kwargs["socket_timeout"] is None


# --------------------------------------------------------------------------------------------
# RedisBusLayer against the shared Redis
# --------------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_send_receive_normal_and_process_local(make_layer: MakeLayer) -> None:
    layer = make_layer()
    await layer.send("work", {"type": "job", "n": 1})
    assert await layer.receive("work") == {"type": "job", "n": 1}
    reply = await layer.new_channel("reply")
    await layer.send(reply, {"type": "reply", "n": 2})
    assert await layer.receive(reply) == {"type": "reply", "n": 2}


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_send_is_one_round_trip_and_keeps_order(make_layer: MakeLayer) -> None:
    layer = make_layer()
    for n in range(5):
        await layer.send("ordered", {"type": "job", "n": n})
    got = [(await layer.receive("ordered"))["n"] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_capacity_raises_channel_full(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=3, channel_capacity={"tiny": 1})
    for _ in range(3):
        await layer.send("work", {"type": "job"})
    with pytest.raises(ChannelFull):
        await layer.send("work", {"type": "job"})
    await layer.send("tiny", {"type": "job"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny", {"type": "job"})
    assert await layer.queue_depth("work") == 3
    assert await layer.queue_depth("tiny") == 1


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(15)
async def test_expired_messages_are_skipped_not_delivered(make_layer: MakeLayer) -> None:
    sender = make_layer(expiry=60)
    receiver = make_layer(expiry=1)  # same keys, shorter view of what is still alive
    await sender.send("work", {"type": "job", "n": "old"})
    await sender.send("work", {"type": "job", "n": "old2"})
    await apoll(lambda: receiver.queue_depth("work"), lambda depth: depth == 0, what="both jobs expired")
    assert await sender.queue_depth("work") == 2
    await sender.send("work", {"type": "job", "n": "fresh"})
    assert await receiver.receive_batch("work", 10, 1.0) == [{"type": "job", "n": "fresh"}]
    await sender.send("work", {"type": "job", "n": "fresh2"})
    assert await sender.queue_depth("work") == 1  # the expired ones were consumed and dropped


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_receive_batch_never_takes_more_than_asked(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=100)
    for n in range(25):
        await layer.send("work", {"type": "job", "n": n})
    first = await layer.receive_batch("work", 10, 1.0)
    assert [m["n"] for m in first] == list(range(10))
    assert await layer.queue_depth("work") == 15
    assert len(await layer.receive_batch("work", 1, 1.0)) == 1
    assert await layer.queue_depth("work") == 14
    rest = await layer.receive_batch("work", 100, 1.0)
    assert [m["n"] for m in rest] == list(range(11, 25))
    started = time.monotonic()
    assert await layer.receive_batch("work", 10, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2
    assert await layer.receive_batch("work", 10, 0) == []
    with pytest.raises(ValueError):
        await layer.receive_batch("work", 0, 1.0)
    with pytest.raises(ValueError):
        await layer.receive_batch(await layer.new_channel(), 1, 1.0)


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_receive_batch_wakes_on_first_message(make_layer: MakeLayer, redis_url: str) -> None:
    layer = make_layer()
    blocked = await asyncio.to_thread(blocked_clients, redis_url)
    waiter = asyncio.ensure_future(layer.receive_batch("work", 5, 5.0))
    await until_blocked(redis_url, blocked)
    started = time.monotonic()
    await layer.send("work", {"type": "job"})
    assert await waiter == [{"type": "job"}]
    assert time.monotonic() - started < 1


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_cancelled_receive_leaves_the_layer_usable(make_layer: MakeLayer, redis_url: str) -> None:
    layer = make_layer()
    for call in (layer.receive("work"), layer.receive_batch("work", 5, 3.0)):
        blocked = await asyncio.to_thread(blocked_clients, redis_url)
        waiting = asyncio.ensure_future(call)
        await until_blocked(redis_url, blocked)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await layer.send("work", {"type": "job"})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job"}]


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_concurrent_sends_are_pipelined_and_each_caller_gets_its_outcome(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(capacity=1000, channel_capacity={"small": 50})
    trips: list[int] = []
    original = RedisBusLayer._run_sends

    async def counting(self: RedisBusLayer, conns: wire.HostConnections, items: Any) -> list[Any]:
        trips.append(len(items))
        return await original(self, conns, items)

    monkeypatch.setattr(RedisBusLayer, "_run_sends", counting)
    sends = [layer.send("big", {"type": "job", "n": n}) for n in range(200)]
    sends += [layer.send("small", {"type": "job", "n": n}) for n in range(100)]
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert outcomes[:200] == [None] * 200
    assert outcomes[200:250] == [None] * 50
    assert all(isinstance(o, ChannelFull) and o.args == ("small",) for o in outcomes[250:])
    assert sum(trips) == 300 and len(trips) <= 5, trips

    got: collections.Counter[int] = collections.Counter()
    while batch := await layer.receive_batch("big", 64, 0.2):
        got.update(m["n"] for m in batch)
    assert got == collections.Counter(range(200))  # every message exactly once
    assert len(await layer.receive_batch("small", 100, 0.2)) == 50


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_one_mib_messages(make_layer: MakeLayer) -> None:
    layer = make_layer()
    blob = os.urandom(1024 * 1024)
    await asyncio.gather(*(layer.send("big", {"type": "blob", "n": n, "data": blob}) for n in range(12)))
    got = []
    while batch := await layer.receive_batch("big", 5, 0.2):
        got += batch
    assert sorted(m["n"] for m in got) == list(range(12))
    assert all(m["data"] == blob for m in got)


RECEIVER = """
import asyncio, json, sys
from bus.layers import RedisBusLayer

async def main(url, prefix):
    layer = RedisBusLayer(hosts=[url], prefix=prefix, capacity=10000)
    got = []
    print("ready", flush=True)
    while batch := await layer.receive_batch("shared", 10, 2.0 if got else 30.0):
        got.extend(m["n"] for m in batch)
    print(json.dumps(got), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_three_processes_share_a_channel_without_duplicates(
    make_layer: MakeLayer, redis_url: str, prefix: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", RECEIVER, redis_url, prefix, stdout=asyncio.subprocess.PIPE, env=env
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await proc.stdout.readline()).strip() == b"ready"
        layer = make_layer(capacity=10000)
        for start in range(0, 3000, 100):
            await asyncio.gather(
                *(layer.send("shared", {"type": "job", "n": n}) for n in range(start, start + 100))
            )
        outputs = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    per_process = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    counts = collections.Counter(n for got in per_process for n in got)
    duplicates = sum(c - 1 for c in counts.values())
    lost = 3000 - len(counts)
    shares = [len(got) for got in per_process]
    assert (duplicates, lost) == (0, 0), shares
    assert sum(1 for share in shares if share) >= 2, shares  # they really competed
    assert all(proc.returncode == 0 for proc in procs)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_idle_receive_longer_than_redis_py_socket_timeout(make_layer: MakeLayer) -> None:
    """redis-py 8's default socket_timeout is 5 s; an idle receive must outlive it."""
    layer = make_layer()
    receive = asyncio.ensure_future(layer.receive("idle"))
    batch = asyncio.ensure_future(layer.receive_batch("idle-batch", 3, 7.0))
    await asyncio.sleep(6.0)  # not a wait for something: the idle time is what this test is about
    assert not receive.done() and not batch.done()
    await layer.send("idle", {"type": "late"})
    await layer.send("idle-batch", {"type": "late"})
    assert await asyncio.wait_for(receive, 2) == {"type": "late"}
    assert await asyncio.wait_for(batch, 2) == [{"type": "late"}]


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_same_layer_works_after_redis_restart(private_redis: Any, prefix: str) -> None:
    layer = RedisBusLayer(hosts=[private_redis.url], prefix=prefix)
    reply = await layer.new_channel()
    await layer.send("work", {"type": "job", "n": 1})
    await layer.send(reply, {"type": "reply", "n": 1})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job", "n": 1}]
    assert await layer.receive(reply) == {"type": "reply", "n": 1}

    private_redis.stop()
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        await layer.send("work", {"type": "job", "n": 2})
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        await layer.receive_batch("work", 5, 0.5)
    # Pipelined sends: every caller gets the error, none hangs.
    outcomes = await asyncio.gather(
        *(layer.send("work", {"type": "job"}) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(o, redis.exceptions.ConnectionError) for o in outcomes), outcomes
    private_redis.start()  # same port, empty, script cache gone

    await layer.send("work", {"type": "job", "n": 3})
    await asyncio.gather(*(layer.send("work", {"type": "job", "n": n}) for n in range(4, 10)))
    await layer.send(reply, {"type": "reply", "n": 3})
    got = await layer.receive_batch("work", 10, 1.0)
    assert [m["n"] for m in got] == list(range(3, 10))
    # The process-local channel's receiver may have missed messages while Redis was away: its
    # next receive says so once, then the channel goes on.
    with pytest.raises(redis.exceptions.ConnectionError):
        await layer.receive(reply)
    assert await layer.receive(reply) == {"type": "reply", "n": 3}
    await layer.close_pools()


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_message_read_while_a_receiver_is_told_of_a_loss_is_kept(
    private_redis: Any, prefix: str
) -> None:
    """The receiver of a process-local channel hears once that Redis was lost; a message the
    reader took off Redis after it came back, before that receive, still reaches it."""
    layer = RedisBusLayer(hosts=[private_redis.url], prefix=prefix)
    reply = await layer.new_channel()
    await layer.send(reply, {"type": "reply", "n": 1})
    assert await layer.receive(reply) == {"type": "reply", "n": 1}
    box = layer._local_inbox(reply)._mailboxes[reply]
    await asyncio.to_thread(private_redis.stop)
    await apoll(lambda: asyncio.sleep(0, box.lost), lambda lost: lost is not None, what="the reader to fail")
    await asyncio.to_thread(private_redis.start)
    await layer.send(reply, {"type": "reply", "n": 2})
    await apoll(lambda: asyncio.sleep(0, len(box.messages)), bool, what="the reader to take the reply")
    with pytest.raises(redis.exceptions.ConnectionError):
        await layer.receive(reply)
    assert await asyncio.wait_for(layer.receive(reply), 5) == {"type": "reply", "n": 2}
    await layer.close_pools()


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_groups_still_work(make_layer: MakeLayer) -> None:
    layer = make_layer()
    one = await layer.new_channel("one")
    two = await layer.new_channel("two")
    await layer.group_add("room", one)
    await layer.group_add("room", two)
    await layer.group_add("room", "plain")
    await layer.group_discard("room", two)
    await layer.group_send("room", {"type": "hello"})
    assert await asyncio.wait_for(layer.receive(one), 2) == {"type": "hello"}
    assert await layer.receive_batch("plain", 5, 1.0) == [{"type": "hello"}]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(two), 0.5)


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_group_member_that_is_not_utf8_is_dropped_and_the_rest_still_get_events(
    make_layer: MakeLayer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One bad member (written by anything with Redis access) must not silence the group."""
    layer = make_layer()
    one = await layer.new_channel("one")
    await layer.group_add("stock", one)
    await layer.group_add("stock", "plain")
    admin = aioredis.Redis.from_url(redis_url)
    await admin.zadd(layer._group_key("stock"), {b"\xff\xfe-not-a-channel": time.time()})

    await layer.group_send("stock", {"type": "stock.changed", "n": 1})
    assert await asyncio.wait_for(layer.receive(one), 2) == {"type": "stock.changed", "n": 1}
    assert await layer.receive_batch("plain", 5, 1.0) == [{"type": "stock.changed", "n": 1}]
    assert "not a channel name" in caplog.text and "stock" in caplog.text
    # Removed, so the next event costs nothing extra and logs nothing.
    assert sorted(await admin.zrange(layer._group_key("stock"), 0, -1)) == sorted([one.encode(), b"plain"])
    await admin.aclose()


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_presence_beat_list_expire_leave(make_layer: MakeLayer) -> None:
    layer = make_layer()
    other = make_layer()  # another process's view
    assert await layer.presence("work") == {}
    await layer.presence_beat("work", "w1", {"pid": 1, "slots": 8}, ttl=0.5)
    await layer.presence_beat("work", "w2", {"pid": 2}, ttl=10)
    await layer.presence_beat("other", "w3", {"pid": 3}, ttl=10)
    assert await other.presence("work") == {"w1": {"pid": 1, "slots": 8}, "w2": {"pid": 2}}
    await apoll(lambda: other.presence("work"), lambda live: "w1" not in live, what="w1's record to expire")
    assert await other.presence("work") == {"w2": {"pid": 2}}
    assert await layer.presence("work") == {"w2": {"pid": 2}}
    await layer.presence_beat("work", "w1", {"pid": 1, "slots": 4}, ttl=10)  # came back
    assert (await other.presence("work"))["w1"] == {"pid": 1, "slots": 4}
    await layer.presence_leave("work", "w2")
    assert await other.presence("work") == {"w1": {"pid": 1, "slots": 4}}
    assert await other.presence("other") == {"w3": {"pid": 3}}
    with pytest.raises(TypeError):
        await layer.presence_beat("work", "w9", {"bad": object()}, ttl=1)


# --------------------------------------------------------------------------------------------
# RedisBusLayer hot paths: BZMPOP or its fallback, the connections each loop keeps
# --------------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
@pytest.mark.parametrize("bzmpop", [True, False], ids=["bzmpop", "bzpopmin-fallback"])
async def test_receive_paths_with_and_without_bzmpop(
    make_layer: MakeLayer, redis_url: str, monkeypatch: pytest.MonkeyPatch, bzmpop: bool, protocol: int
) -> None:
    if not bzmpop:
        # Make this Redis 7 look older than BZMPOP, so that the pipelined fallback runs.
        monkeypatch.setattr(wire, "BZMPOP_SINCE", (99, 0))
    sent: list[str] = []
    original_pack = wire._pack

    def recording_pack(args: Any, chunks: list[bytes]) -> None:
        sent.append(str(args[0]))
        original_pack(args, chunks)

    monkeypatch.setattr(wire, "_pack", recording_pack)
    layer = make_layer(hosts=[{"address": redis_url, "protocol": protocol}], capacity=100)

    assert await layer.receive_batch("work", 5, 0) == []
    for n in range(7):
        await layer.send("work", {"type": "job", "n": n})
    assert [m["n"] for m in await layer.receive_batch("work", 1, 1.0)] == [0]
    assert [m["n"] for m in await layer.receive_batch("work", 3, 1.0)] == [1, 2, 3]
    assert [m["n"] for m in await layer.receive_batch("work", 10, 0)] == [4, 5, 6]
    blocked = await asyncio.to_thread(blocked_clients, redis_url)
    waiter = asyncio.ensure_future(layer.receive_batch("work", 5, 5.0))
    await until_blocked(redis_url, blocked)
    await layer.send("work", {"type": "job", "n": 7})
    assert await waiter == [{"type": "job", "n": 7}]
    assert await layer.receive_batch("work", 5, 0.2) == []
    await layer.send("work", {"type": "job", "n": 8})
    assert await layer.receive("work") == {"type": "job", "n": 8}

    assert layer._host(0).conns.bzmpop is bzmpop
    pops = {name for name in sent if "POP" in name}
    assert pops == ({"BZMPOP", "ZMPOP"} if bzmpop else {"BZPOPMIN", "ZPOPMIN"})


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_server_version_is_asked_once_and_again_after_a_reconnect(
    make_layer: MakeLayer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = 0
    original = wire.has_bzmpop

    async def counting(conn: Any) -> bool:
        nonlocal asked
        asked += 1
        return await original(conn)

    monkeypatch.setattr(wire, "has_bzmpop", counting)
    layer = make_layer()
    for _ in range(3):
        await layer.send("work", {"type": "job"})
        assert len(await layer.receive_batch("work", 5, 1.0)) == 1
    assert asked == 1

    # The server drops the connection (as on a restart): it is reconnected when next taken,
    # and whatever server answers then is asked again.
    conns = layer._host(0).conns
    conn = await conns.take()
    client_id = await wire.command(conn, "CLIENT", "ID")
    admin = aioredis.Redis.from_url(redis_url)
    await admin.client_kill_filter(_id=client_id)
    await admin.aclose()
    # The close reaches our socket a moment after CLIENT KILL answers.
    await apoll(lambda: wire.closed_by_server(conn), what="the server's close to reach the kept connection")
    await conns.give(conn)
    await layer.send("work", {"type": "job"})
    assert len(await layer.receive_batch("work", 5, 1.0)) == 1
    assert asked == 2


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_connection_the_server_closed_is_seen_as_closed(
    make_layer: MakeLayer, redis_url: str
) -> None:
    """Pins the redis-py behaviour wire.py relies on: ``can_read()`` on a connection the server
    closed returns True (redis-py <= 8.1) or raises ConnectionError (8.2); both read as closed."""
    layer = make_layer()
    conns = layer._host(0).conns
    conn = await conns.take()
    assert not await wire.closed_by_server(conn)
    client_id = await wire.command(conn, "CLIENT", "ID")
    admin = aioredis.Redis.from_url(redis_url)
    await admin.client_kill_filter(_id=client_id)
    await admin.aclose()
    # The close reaches our socket a moment after CLIENT KILL answers.
    await apoll(lambda: wire.closed_by_server(conn), what="the server's close to reach the connection")
    await conns.give(conn)
    # Taken again, it is reconnected and works.
    conn = await conns.take()
    assert await wire.command(conn, "PING") in (b"PONG", "PONG", True)
    await conns.give(conn)


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_kept_connections_are_replaced_after_a_redis_restart(private_redis: Any, prefix: str) -> None:
    layer = RedisBusLayer(hosts=[private_redis.url], prefix=prefix)
    await layer.send("work", {"type": "job", "n": 1})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job", "n": 1}]

    # Restarted while the layer sat idle: its kept connection is dead, and the next calls
    # get a fresh one instead of an error. (The loop keeps running while Redis restarts.)
    await asyncio.to_thread(private_redis.stop)
    await asyncio.to_thread(private_redis.start)
    await asyncio.sleep(0.1)
    await layer.send("work", {"type": "job", "n": 2})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job", "n": 2}]

    # Restarted under a receive waiting in BZMPOP: that caller gets the error and retries.
    waiting = asyncio.ensure_future(layer.receive_batch("work", 5, 10.0))
    await until_blocked(private_redis.url)
    await asyncio.to_thread(private_redis.stop)
    with pytest.raises(redis.exceptions.ConnectionError):
        await waiting
    await asyncio.to_thread(private_redis.start)
    await layer.send("work", {"type": "job", "n": 3})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job", "n": 3}]
    await layer.close_pools()


def test_each_event_loop_keeps_its_own_connections_and_closes_them(redis_url: str, prefix: str) -> None:
    layer = RedisBusLayer(hosts=[redis_url], prefix=prefix)

    async def round_trip(n: int) -> list[dict[str, Any]]:
        await layer.send("work", {"type": "job", "n": n})
        return await layer.receive_batch("work", 5, 1.0)

    kept = []
    for n in range(3):
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(round_trip(n)) == [{"type": "job", "n": n}]
        conns = layer._hosts[loop][0].conns
        assert conns._idle and all(conn.is_connected for conn in conns._idle)
        kept.append(conns)
        # channels-redis closes the loop's pool when the loop closes, and ours with it.
        loop.close()
        assert not any(conn.is_connected for conn in conns._idle)
    assert len({id(conns) for conns in kept}) == 3
    asyncio.run(layer.flush())


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_close_pools_closes_kept_connections_and_layer_goes_on(make_layer: MakeLayer) -> None:
    layer = make_layer()
    await layer.send("work", {"type": "job", "n": 1})
    assert len(await layer.receive_batch("work", 5, 1.0)) == 1
    before = layer._host(0).conns
    idle = list(before._idle)
    await layer.close_pools()
    assert idle and not any(conn.is_connected for conn in idle)
    assert layer._host(0).conns is not before
    await layer.send("work", {"type": "job", "n": 2})
    assert await layer.receive_batch("work", 5, 1.0) == [{"type": "job", "n": 2}]


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_burst_of_receives_gives_extra_connections_back_to_the_pool(make_layer: MakeLayer) -> None:
    layer = make_layer()
    burst = wire.MAX_IDLE_CONNECTIONS + 4
    await asyncio.gather(*(layer.receive_batch(f"idle{n}", 1, 0.2) for n in range(burst)))
    conns = layer._host(0).conns
    assert len(conns._idle) == wire.MAX_IDLE_CONNECTIONS
    assert len(conns.pool._available_connections) == 4


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(15)
async def test_expired_messages_do_not_count_against_capacity(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=2, expiry=1)
    local = await layer.new_channel()
    for channel in (local, "work"):
        await layer.send(channel, {"type": "old"})
        await layer.send(channel, {"type": "old"})
    # The local channel's messages went first: once "work"'s have expired, so have they.
    await apoll(
        lambda: layer.queue_depth("work"), lambda depth: depth == 0, what="the old messages to expire"
    )
    # Full of expired messages: the send trims them, then stores.
    await layer.send("work", {"type": "new"})
    await layer.send(local, {"type": "new"})
    assert await layer.receive_batch("work", 5, 0) == [{"type": "new"}]
    assert await layer.receive(local) == {"type": "new"}


def test_hosts_carry_driver_info_so_new_connections_skip_the_metadata_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = RedisBusLayer(hosts=["redis://h1:6379", {"host": "h2", "lib_name": "mine", "lib_version": "1"}])
    pool = layer.create_pool(0)

    def no_lookup(name: str) -> str:
        raise AssertionError(f"importlib.metadata.version({name!r}) called")

    monkeypatch.setattr(importlib.metadata, "version", no_lookup)
    info = pool.make_connection().driver_info  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    assert info is not None and (info.name, info.lib_version) == ("redis-py", redis.__version__)
    assert "driver_info" not in layer.create_pool(1).connection_kwargs  # the host's own choice wins


# --------------------------------------------------------------------------------------------
# InMemoryBusLayer
# --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_in_memory_extension_api() -> None:
    layer = InMemoryBusLayer(capacity=50)
    for n in range(25):
        await layer.send("work", {"type": "job", "n": n})
    assert await layer.queue_depth("work") == 25
    assert [m["n"] for m in await layer.receive_batch("work", 10, 1.0)] == list(range(10))
    assert await layer.queue_depth("work") == 15
    assert len(await layer.receive_batch("work", 100, 1.0)) == 15
    started = time.monotonic()
    assert await layer.receive_batch("work", 10, 0.2) == []
    assert time.monotonic() - started >= 0.15
    assert await layer.queue_depth("work") == 0
    with pytest.raises(ValueError):
        await layer.receive_batch("work!x", 1, 1.0)

    await layer.presence_beat("work", "w1", {"pid": 1}, ttl=0.2)
    await layer.presence_beat("work", "w2", {"pid": 2}, ttl=10)
    assert await layer.presence("work") == {"w1": {"pid": 1}, "w2": {"pid": 2}}
    await apoll(lambda: layer.presence("work"), lambda live: "w1" not in live, what="w1's record to expire")
    assert await layer.presence("work") == {"w2": {"pid": 2}}
    await layer.presence_leave("work", "w2")
    assert await layer.presence("work") == {}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_in_memory_skips_expired() -> None:
    layer = InMemoryBusLayer(expiry=0.2)
    await layer.send("work", {"type": "old"})
    await apoll(lambda: layer.queue_depth("work"), lambda depth: depth == 0, what="the old message to expire")
    await layer.send("work", {"type": "new"})
    assert await layer.queue_depth("work") == 1
    assert await layer.receive_batch("work", 5, 0.5) == [{"type": "new"}]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_in_memory_send_while_receivers_wait_loses_nothing() -> None:
    layer = InMemoryBusLayer()
    # Two plain receivers: the stock layer drops the queue after the first one is served,
    # so the second waits on an orphaned queue forever.
    first = asyncio.ensure_future(layer.receive("work"))
    second = asyncio.ensure_future(layer.receive("work"))
    await until_waiting(layer, "work", 2)
    await layer.send("work", {"type": "a"})
    await until_waiting(layer, "work", 1)  # one receiver served, the other still waiting
    await layer.send("work", {"type": "b"})
    got = await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert sorted(m["type"] for m in got) == ["a", "b"]

    # receive_batch waiting, then a send arrives; and a timed-out batch loses nothing.
    batch = asyncio.ensure_future(layer.receive_batch("work", 5, 2.0))
    await until_waiting(layer, "work", 1)
    await layer.send("work", {"type": "c"})
    assert await batch == [{"type": "c"}]
    assert await layer.receive_batch("work", 5, 0.05) == []
    await layer.send("work", {"type": "d"})
    assert await layer.receive_batch("work", 5, 0.05) == [{"type": "d"}]

    # A cancelled receive_batch does not take the message that wakes it.
    batch = asyncio.ensure_future(layer.receive_batch("work", 5, 2.0))
    await until_waiting(layer, "work", 1)
    await layer.send("work", {"type": "e"})
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert await layer.receive("work") == {"type": "e"}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_in_memory_groups_and_flush() -> None:
    layer = InMemoryBusLayer()
    reply = await layer.new_channel()
    await layer.group_add("room", reply)
    await layer.group_send("room", {"type": "hello"})
    assert await layer.receive(reply) == {"type": "hello"}
    waiting = asyncio.ensure_future(layer.receive("work"))
    await until_waiting(layer, "work", 1)
    await layer.flush()
    await layer.send("work", {"type": "after-flush"})
    assert await asyncio.wait_for(waiting, 1) == {"type": "after-flush"}


# --------------------------------------------------------------------------------------------
# Process-local channels: one reader per shared key (bus.layers.local)
# --------------------------------------------------------------------------------------------


def _commands_processed(url: str) -> int:
    return int(redis.Redis.from_url(url).info("stats")["total_commands_processed"])


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_a_group_message_reaches_every_local_receiver_in_a_few_round_trips(
    make_layer: MakeLayer, redis_url: str
) -> None:
    layer = make_layer()
    channels = [await layer.new_channel() for _ in range(300)]
    for channel in channels:
        await layer.group_add("room", channel)
    blocked = await asyncio.to_thread(blocked_clients, redis_url)
    receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
    await until_blocked(redis_url, blocked)  # every receiver waits, the reader blocks on the shared key
    before = _commands_processed(redis_url)
    await layer.group_send("room", {"type": "news", "n": 1})
    got = await asyncio.wait_for(asyncio.gather(*receivers), 5)
    used = _commands_processed(redis_url) - before
    assert got == [{"type": "news", "n": 1}] * 300
    assert len({id(message) for message in got}) == 300  # each consumer may change its own copy
    # group_send's few commands plus one pop; channels-redis's receive took 3 per receiver.
    assert used < 20, used


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_messages_wait_for_a_local_receiver_that_comes_later(make_layer: MakeLayer) -> None:
    layer = make_layer()
    early, late = await layer.new_channel(), await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(early))
    await layer.send(late, {"type": "first"})
    await layer.send(late, {"type": "second"})
    await layer.send(early, {"type": "hello"})
    assert await asyncio.wait_for(waiting, 2) == {"type": "hello"}  # the reader also took late's
    assert await layer.receive(late) == {"type": "first"}
    assert await layer.receive(late) == {"type": "second"}


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_local_message_delivered_as_its_receive_is_cancelled_is_kept(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    for n in range(50):
        receive = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"type": "m", "n": n})
        await asyncio.sleep(0.0005 * (n % 5))  # not a wait: cancels land at varied moments, on purpose
        receive.cancel()
        try:
            message = await receive
        except asyncio.CancelledError:
            message = await asyncio.wait_for(layer.receive(channel), 2)
        assert message == {"type": "m", "n": n}


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_an_undecodable_message_on_the_shared_key_is_skipped(
    make_layer: MakeLayer, prefix: str
) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    shared = prefix + layer.non_local_name(channel)
    await layer.connection(0).zadd(shared, {b"\xc1 not msgpack": time.time()})
    await layer.send(channel, {"type": "fine"})
    assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "fine"}


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_only_this_process_receives_its_local_channels(make_layer: MakeLayer) -> None:
    mine, other = make_layer(), make_layer()
    theirs = await other.new_channel()
    with pytest.raises(ValueError, match="another process's channel"):
        await mine.receive(theirs)


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_local_sends_go_to_the_host_their_receiver_reads(redis_url: str, prefix: str) -> None:
    # Two "hosts" (two databases of one server): the sender picks the host by the shared key,
    # as the receiver and group_send do, not by the full channel name.
    base = redis_url.rsplit("/", 1)[0]
    layer = RedisBusLayer(hosts=[f"{base}/1", f"{base}/2"], prefix=prefix)
    channels = [await layer.new_channel() for _ in range(20)]
    for n, channel in enumerate(channels):
        await layer.send(channel, {"type": "m", "n": n})
    got = [await asyncio.wait_for(layer.receive(channel), 2) for channel in channels]
    assert [m["n"] for m in got] == list(range(20))
    await layer.flush()
    await layer.close_pools()


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_waiting_local_receives_fail_when_redis_goes_and_work_when_it_is_back(
    private_redis: Any, prefix: str
) -> None:
    layer = RedisBusLayer(hosts=[private_redis.url], prefix=prefix)
    channel, busy = await layer.new_channel(), await layer.new_channel()
    await layer.send(busy, {"type": "before"})
    waiting = asyncio.ensure_future(layer.receive(channel))
    # The reader takes "before" off the shared key for busy's mailbox, then blocks for more.
    await until_blocked(private_redis.url)
    private_redis.stop()
    # A consumer that may have missed messages hears so rather than waiting forever: at once if
    # it is waiting, at its next receive if it was busy.
    with pytest.raises((redis.exceptions.ConnectionError, OSError)):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises((redis.exceptions.ConnectionError, OSError)):
        await asyncio.wait_for(layer.receive(busy), 5)
    private_redis.start()
    again = asyncio.ensure_future(layer.receive(channel))
    await apoll(  # the reader retries with backoff until Redis answers
        lambda: layer.send(channel, {"type": "back"}),
        lambda _: True,
        what="a send once Redis is back",
        ignoring=(redis.exceptions.ConnectionError,),
    )
    assert await asyncio.wait_for(again, 5) == {"type": "back"}
    await layer.close_pools()


async def test_a_silent_server_fails_callers_at_once_until_one_of_them_tries_again(prefix: str) -> None:
    """A host that went silent (lost, partitioned) costs its first caller a timeout; the callers
    after it fail at once, naming why, instead of each waiting a timeout of its own."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, writer: accepted.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    layer = RedisBusLayer(
        hosts=[{"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": 0.5}], prefix=prefix
    )
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await layer.send("work", {"type": "job"})
        outcomes = await asyncio.gather(
            *(layer.send("work", {"type": "job"}) for _ in range(20)), return_exceptions=True
        )
        assert all("could not be reached a moment ago" in str(o) for o in outcomes), outcomes
        # A moment later one caller tries the host again (and waits out its timeout again).
        retried = await apoll(
            lambda: _outcome(layer.send("work", {"type": "job"})),
            lambda outcome: isinstance(outcome, redis.exceptions.TimeoutError),
            what="a send that tries the silent host again",
        )
        assert "Timeout" in str(retried)
    finally:
        await layer.close_pools()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except redis.exceptions.RedisError as exc:
        return exc
