"""At-least-once delivery and exactly-once effects, with real worker processes on a real Redis.

The `tally` test domain adds one to a counter in its database per command, through its inbox
(`Service(inbox=...)`), so the counter says exactly how many commands took effect: fewer is a
lost message, more is one applied twice. Workers beat every 0.5 s (tests/settings.py), so a dead
worker's messages go back within about two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from channels.layers import get_channel_layer

import bus
from bus.client import default_bus
from bus.conf import channel_layers as layers_for
from tests.conftest import RedisServer, WorkerProcess, migrated, read_records, run_bus
from tests.polling import apoll, poll
from tests.tally.contract import Tally

pytestmark = [pytest.mark.redis, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]


# A call to a worker that is killed before it answers fails (calls are at-most-once): ask again.
CALL_LOST = (bus.DeadlineExceeded, bus.NoWorker)


async def total(counter: str) -> int:
    return await Tally.client().total(counter=counter)


async def settled(counter: str, expected: int, timeout: float = 120) -> None:
    """Until nothing of tally's waits, is held or delayed, and the counter reads `expected`
    (a lower value is still being applied; the test asserts afterwards that it stays there)."""
    layer = get_channel_layer()

    async def state() -> tuple[int, int, int, int]:
        depth = await layer.durable_depth("tally")
        return depth.waiting, depth.held, depth.delayed, await total(counter)

    await apoll(
        state,
        lambda now: now[:3] == (0, 0, 0) and now[3] >= expected,
        what="tally to settle",
        timeout=timeout,
    )


def taken_back(workers: list[WorkerProcess]) -> int:
    """Messages the workers took back from dead ones, as their logs say."""
    found = re.compile(r"Took back (\d+) message\(s\) on 'tally'")
    return sum(int(n) for worker in workers for n in found.findall(worker.output()))


def skipped(workers: list[WorkerProcess]) -> int:
    """Redeliveries the inbox recognised as applied already, as the workers' logs say."""
    return sum(worker.output().count("was processed before") for worker in workers)


@contextlib.contextmanager
def killing_at_random(
    start: Callable[[], WorkerProcess], workers: list[WorkerProcess]
) -> Iterator[list[int]]:
    """kill -9 a random worker every ~0.5 s and start another in its place, until the block ends."""
    stop = threading.Event()
    kills: list[int] = []

    def kill() -> None:
        rng = random.Random()
        while not stop.wait(rng.uniform(0.3, 0.7)):
            victim = rng.choice([worker for worker in workers if worker.process.poll() is None])
            victim.kill()
            kills.append(victim.pid)
            workers.append(start())

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        yield kills
    finally:
        stop.set()
        killer.join(30)


@pytest.mark.timeout(420)
async def test_workers_killed_at_random_lose_no_command_and_apply_each_once(
    redis_layer: str, start_worker: StartWorker
) -> None:
    counter, commands = f"kill-{uuid.uuid4().hex[:8]}", 5000
    workers = [start_worker(redis_layer, "tally", concurrency=8) for _ in range(3)]
    began = time.monotonic()
    with killing_at_random(
        lambda: start_worker(redis_layer, "tally", concurrency=8, wait=False), workers
    ) as kills:
        for _ in range(commands):
            await Tally.add.asend(counter=counter)
        await apoll(
            lambda: total(counter),
            lambda n: n >= commands * 0.9,
            what="most commands applied",
            timeout=240,
            ignoring=CALL_LOST,
        )
    await settled(counter, commands)
    assert await total(counter) == commands, "each command applied exactly once"
    seconds = time.monotonic() - began
    print(
        f"\n{commands} commands, {len(kills)} workers killed with kill -9 in {seconds:.0f} s: "
        f"{taken_back(workers)} message(s) taken back from dead workers, {skipped(workers)} "
        f"redelivery(ies) found applied already by the inbox; counter = {await total(counter)}"
    )
    assert len(kills) >= 3 and taken_back(workers) > 0, "the test killed workers that held messages"
    await default_bus.aclose()


@pytest.mark.timeout(180)
async def test_sigterm_hands_back_the_backlog_and_the_next_worker_applies_each_once(
    redis_layer: str, start_worker: StartWorker
) -> None:
    counter = f"term-{uuid.uuid4().hex[:8]}"
    first = start_worker(redis_layer, "tally", concurrency=4)
    for _ in range(40):
        await Tally.add_slowly.asend(counter=counter, seconds=0.2)
    await apoll(lambda: total(counter), lambda n: n >= 4, what="the first worker to apply some")
    assert await asyncio.to_thread(first.terminate) == 0
    layer = get_channel_layer()
    depth = await layer.durable_depth("tally")
    assert depth.held == 0, "a stopped worker holds nothing"
    assert depth.waiting > 0, "the backlog stayed queued"
    second = start_worker(redis_layer, "tally", concurrency=4)
    await settled(counter, 40)
    assert await total(counter) == 40
    assert skipped([first, second]) == 0, "nothing ran twice"
    await default_bus.aclose()


@pytest.mark.timeout(180)
async def test_a_worker_frozen_past_its_heartbeat_does_not_apply_again_what_another_took_over(
    redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    counter = f"stop-{uuid.uuid4().hex[:8]}"
    frozen = start_worker(redis_layer, "tally")
    await Tally.add_slowly.asend(counter=counter, seconds=3.0)
    await asyncio.to_thread(poll, lambda: read_records(record_dir, "adding"), what="the handler to start")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        other = start_worker(redis_layer, "tally")
        await asyncio.to_thread(other.wait_for_output, "Took back 1 message(s) on 'tally'")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    await asyncio.to_thread(frozen.wait_for_output, "was handed to another worker while this one held it")
    await settled(counter, 1)
    assert await total(counter) == 1, "applied once, by whichever worker committed first"
    await default_bus.aclose()


@pytest.mark.timeout(180)
async def test_commands_queued_in_a_persisted_redis_survive_its_restart(
    tmp_path: Path, start_worker: StartWorker, settings: object
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        settings.CHANNEL_LAYERS = layers_for(server.url)  # type: ignore[attr-defined]
        counter, commands = f"aof-{uuid.uuid4().hex[:8]}", 2000
        for _ in range(commands):
            await Tally.add.asend(counter=counter)
        await default_bus.aclose()
        await get_channel_layer().close_pools()
        server.stop()
        server.start()
        start_worker(server.url, "tally", concurrency=16)
        await settled(counter, commands)
        assert await total(counter) == commands
    finally:
        await default_bus.aclose()
        server.stop()


@pytest.mark.timeout(240)
async def test_a_message_that_kills_every_worker_is_dead_lettered_while_others_flow(
    redis_layer: str, start_worker: StartWorker, record_dir: Path, tmp_path: Path
) -> None:
    data_dir = migrated(tmp_path / "data")
    options = {
        "concurrency": 1,
        "data_dir": data_dir,
        "extra_env": {"BUS_TEST_SETTINGS": '{"MAX_DELIVERIES": 3}'},
    }
    workers = [start_worker(redis_layer, "tally", **options) for _ in range(2)]
    counter, note = f"poison-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    await Tally.crash.asend(note=note)
    for _ in range(100):
        await Tally.add.asend(counter=counter)

    def buried() -> bool:
        for worker in [w for w in workers if w.process.poll() is not None]:
            workers.remove(worker)
            workers.append(start_worker(redis_layer, "tally", wait=False, **options))  # as `up` would
        return "tally.crash" in run_bus(data_dir, redis_layer, "deadletters").stdout

    await asyncio.to_thread(poll, buried, what="the crashing command among the dead letters", timeout=120)
    await settled(counter, 100)
    assert await total(counter) == 100, "the other commands went on"
    crashes = [line for line in read_records(record_dir, "crash") if note in line]
    assert len(crashes) == 3, crashes
    listing = run_bus(data_dir, redis_layer, "deadletters").stdout
    assert "x3  3 worker(s) died while handling it" in listing, listing
    await default_bus.aclose()
