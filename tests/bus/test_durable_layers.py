"""Durable channels of both layers (bus.layers.durable): RedisBusLayer on a real Redis, and the
in-memory layer, through the same tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from bus.layers import InMemoryBusLayer, RedisBusLayer

Layer = RedisBusLayer | InMemoryBusLayer


@pytest.fixture(params=["redis", "memory"])
def layer(request: pytest.FixtureRequest) -> Layer:
    if request.param == "memory":
        return InMemoryBusLayer()
    request.applymarker(pytest.mark.redis)
    make: Callable[..., RedisBusLayer] = request.getfixturevalue("make_layer")
    return make()


async def beat(layer: Layer, channel: str, *workers: str, ttl: float = 30) -> None:
    for worker in workers:
        await layer.presence_beat(channel, worker, {}, ttl)


def texts(deliveries: list[Any]) -> list[str]:
    return [delivery.message["text"] for delivery in deliveries]


async def test_a_message_sent_with_no_worker_waits_for_one(layer: Layer) -> None:
    await layer.durable_send("mail", {"type": "m", "text": "receipt"})
    assert (await layer.durable_depth("mail")).waiting == 1
    await beat(layer, "mail", "w1")
    [delivery] = await layer.durable_receive("mail", "w1", 10, timeout=1)
    assert (delivery.message, delivery.number, delivery.history) == ({"type": "m", "text": "receipt"}, 1, ())
    depth = await layer.durable_depth("mail")
    assert (depth.waiting, depth.held, depth.delayed) == (0, 1, 0)
    assert await layer.durable_ack("mail", "w1", [delivery.id]) == 1
    depth = await layer.durable_depth("mail")
    assert (depth.waiting, depth.held, depth.delayed) == (0, 0, 0)
    assert await layer.durable_receive("mail", "w1", 10, timeout=0.05) == []


async def test_each_message_goes_to_one_worker_and_a_batch_takes_at_most_what_was_asked(layer: Layer) -> None:
    for n in range(5):
        await layer.durable_send("mail", {"type": "m", "text": str(n)})
    await beat(layer, "mail", "w1", "w2")
    first = await layer.durable_receive("mail", "w1", 3, timeout=1)
    second = await layer.durable_receive("mail", "w2", 3, timeout=1)
    assert (len(first), len(second)) == (3, 2)
    assert sorted(texts(first) + texts(second)) == ["0", "1", "2", "3", "4"]


async def test_a_live_workers_messages_stay_with_it_and_a_dead_ones_go_back_with_their_history(
    layer: Layer,
) -> None:
    await layer.durable_send("mail", {"type": "m", "text": "a"})
    await layer.durable_send("mail", {"type": "m", "text": "b"})
    await beat(layer, "mail", "alive")
    await beat(layer, "mail", "doomed", ttl=0.2)
    [kept] = await layer.durable_receive("mail", "alive", 1, timeout=1)
    [lost] = await layer.durable_receive("mail", "doomed", 1, timeout=1)
    assert await layer.durable_reclaim("mail") == 0, "both holders are alive"
    await asyncio.sleep(0.3)  # the doomed worker's presence runs out: it died
    assert await layer.durable_reclaim("mail") == 1
    [again] = await layer.durable_receive("mail", "alive", 5, timeout=1)
    assert (again.message, again.number, again.history) == (lost.message, 2, ("doomed",))
    assert await layer.durable_ack("mail", "doomed", [lost.id]) == 0, "the dead worker no longer holds it"
    assert await layer.durable_ack("mail", "alive", [kept.id, again.id]) == 2


async def test_a_worker_frozen_past_its_presence_acknowledges_nothing_once_resumed(layer: Layer) -> None:
    await layer.durable_send("mail", {"type": "m", "text": "a"})
    await beat(layer, "mail", "frozen", ttl=0.1)
    [held] = await layer.durable_receive("mail", "frozen", 1, timeout=1)
    await asyncio.sleep(0.2)
    await beat(layer, "mail", "other")
    assert await layer.durable_reclaim("mail") == 1
    [taken] = await layer.durable_receive("mail", "other", 1, timeout=1)
    await beat(layer, "mail", "frozen")  # resumed: beats again, and tries to finish
    assert await layer.durable_ack("mail", "frozen", [held.id]) == 0
    assert not await layer.durable_requeue("mail", "frozen", held.id)
    assert await layer.durable_ack("mail", "other", [taken.id]) == 1


async def test_a_requeued_message_comes_back_now_or_when_due_replaced_if_asked(layer: Layer) -> None:
    await layer.durable_send("mail", {"type": "m", "text": "a"})
    await beat(layer, "mail", "w1")
    [first] = await layer.durable_receive("mail", "w1", 1, timeout=1)
    assert await layer.durable_requeue("mail", "w1", first.id)
    [back] = await layer.durable_receive("mail", "w1", 1, timeout=1)
    assert (back.message, back.number) == (first.message, 1), "a hand-back is not a new delivery"
    due = time.time() + 0.4
    assert await layer.durable_requeue("mail", "w1", back.id, message={"type": "m", "text": "a2"}, due=due)
    assert (await layer.durable_depth("mail")).delayed == 1
    assert await layer.durable_receive("mail", "w1", 1, timeout=0.1) == []
    [later] = await layer.durable_receive("mail", "w1", 1, timeout=3)
    assert later.message["text"] == "a2"
    assert time.time() >= due - 0.01


async def test_a_full_durable_channel_refuses_with_channel_full(layer: Layer) -> None:
    layer.durable_capacity = 2
    await layer.durable_send("mail", {"type": "m", "text": "1"})
    await layer.durable_send("mail", {"type": "m", "text": "2"}, due=time.time() + 60)
    with pytest.raises(ChannelFull):
        await layer.durable_send("mail", {"type": "m", "text": "3"})


async def test_a_waiting_receive_wakes_when_a_message_arrives(layer: Layer) -> None:
    await beat(layer, "mail", "w1")
    receive = asyncio.ensure_future(layer.durable_receive("mail", "w1", 5, timeout=5))
    await asyncio.sleep(0.2)
    await layer.durable_send("mail", {"type": "m", "text": "late"})
    assert texts(await receive) == ["late"]


async def test_bad_arguments_are_refused(layer: Layer) -> None:
    with pytest.raises(ValueError, match="process-local"):
        await layer.durable_send("mail!x", {"type": "m"})
    with pytest.raises(TypeError, match="not a dict"):
        await layer.durable_send("mail", ["type"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consumer"):
        await layer.durable_receive("mail", "", 1, timeout=0)
    with pytest.raises(ValueError, match="max_messages"):
        await layer.durable_receive("mail", "w1", 0, timeout=0)


async def test_what_a_live_worker_took_but_never_got_goes_back_and_what_it_has_stays(layer: Layer) -> None:
    await layer.durable_send("mail", {"type": "m", "text": "kept"})
    await layer.durable_send("mail", {"type": "m", "text": "lost"})
    await beat(layer, "mail", "w1")
    kept, lost = await layer.durable_receive("mail", "w1", 2, timeout=1)
    await asyncio.sleep(0.1)
    # The reply of a receive can be lost with its connection: the worker holds `lost` in Redis only.
    released = await layer.durable_release("mail", "w1", [kept.id], idle=0.05)
    if isinstance(layer, InMemoryBusLayer):
        assert released == 0, "in one process a receive cannot lose its reply"
        return
    assert released == 1
    assert await layer.durable_release("mail", "w1", [kept.id], idle=60) == 0, "only what sat that long"
    [again] = await layer.durable_receive("mail", "w2", 1, timeout=1)
    assert (again.message, again.number) == (lost.message, 1)
    assert await layer.durable_ack("mail", "w1", [kept.id]) == 1, "what it has in hand stays its own"
