"""runworker as real OS processes on a real Redis: duplicates, bad input, drain, restarts, load."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from channels.layers import get_channel_layer

import bus
from bus import messages
from bus.client import default_bus
from tests.conftest import (
    ROOT,
    RedisServer,
    WorkerProcess,
    presence,
    process_env,
    read_records,
    run_bus,
    wait_for_worker,
)
from tests.polling import apoll, poll

pytestmark = [pytest.mark.redis]

StartWorker = Callable[..., WorkerProcess]


async def test_call_from_this_process_to_a_worker_process(
    redis_layer: str, start_worker: StartWorker
) -> None:
    worker = start_worker(redis_layer, "echo")
    who = await bus.acall("echo.whoami")
    assert who["pid"] == worker.pid
    assert who["thread"].startswith("bus-handler")
    await default_bus.aclose()


async def test_three_workers_share_one_channel_without_duplicates_or_losses(
    redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    workers = [start_worker(redis_layer, "echo") for _ in range(3)]
    total = 3000

    async def send(n: int) -> None:
        # A full channel pushes back (capacity 1,000); a producer waits and sends again.
        while True:
            try:
                await bus.asend("echo.record", n=n)
                return
            except bus.ChannelFull:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(send(n) for n in range(total)))
    layer = get_channel_layer()

    async def idle() -> bool:
        """Every message handled, none queued or in flight: a duplicate would have run by now."""
        beats = await asyncio.to_thread(presence, redis_layer, "echo")
        return (
            await layer.queue_depth("echo") == 0
            and sum(int(info["handled"]) for info in beats.values()) >= total
            and not any(info["in_flight"] for info in beats.values())
        )

    await apoll(idle, what=f"the workers to handle {total} messages and go idle", timeout=60)
    records = read_records(record_dir, "record")
    counts = Counter(records)
    duplicates = {n: c for n, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} messages ran more than once"
    assert len(counts) == total, f"{total - len(counts)} messages lost"
    assert sum((record_dir / f"record-{w.pid}.txt").exists() for w in workers) >= 2, "workers share the load"


async def test_bad_input_gets_clear_answers_and_the_worker_keeps_serving(
    redis_layer: str, start_worker: StartWorker
) -> None:
    worker = start_worker(redis_layer, "echo")
    layer = get_channel_layer()
    await layer.send("echo", {"no": "type"})
    await layer.send("echo", {"type": "bus.request", "id": "x1", "reply_to": "bus.reply.raw", "body": []})
    assert (await layer.receive("bus.reply.raw"))["error"]["kind"] == "bad_message"
    await layer.send("echo", {"type": "bus.command", "id": "x2"})
    with pytest.raises(bus.UnknownTarget):
        await bus.acall("echo.nope")
    with pytest.raises(bus.ValidationError, match="a: Input should be a valid integer"):
        await bus.acall("echo.add", a="1")
    with pytest.raises(bus.RemoteError, match="RuntimeError: kaboom"):
        await bus.acall("echo.fail", message="kaboom")
    assert await bus.acall("echo.echo", text="still here") == "still here"
    assert worker.process.poll() is None
    assert "Traceback" in worker.output() and "kaboom" in worker.output()
    assert "Rejected a malformed message: Malformed bus message: 'type' must be one of" in worker.output()
    await default_bus.aclose()


async def test_log_lines_about_malformed_messages_quote_a_bounded_prefix(
    redis_layer: str, start_worker: StartWorker
) -> None:
    # One slot: the worker handles these in order, so once the last call is answered, every line
    # about the ones before it is written.
    worker = start_worker(redis_layer, "echo", concurrency=1)
    layer = get_channel_layer()
    huge = "t" * 200_000
    for _ in range(4):
        await layer.send("echo", {"type": huge})
    command = messages.envelope(messages.COMMAND, "echo." + huge, {})
    await layer.send("echo", dict(command))
    request = messages.envelope(messages.REQUEST, "echo.echo", {"text": "hi"}, reply_to="r." + huge)
    await layer.send("echo", dict(request))
    assert await bus.acall("echo.echo", text="still here") == "still here"
    output = worker.output()
    assert output.count("Rejected a malformed message: Malformed bus message: 'type' must be one of") == 4
    assert f"(got '{'t' * 200}'… (200,000 bytes))" in output
    assert (
        "Command echo.tttt" in output and "Could not reply to echo.echo: its reply channel 'r.ttt" in output
    )
    longest = max(output.splitlines(), key=len)
    assert len(longest) < 2_000, longest[:300]
    await default_bus.aclose()


async def test_sigterm_finishes_in_flight_work_and_leaves_the_rest_queued(
    redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    worker = start_worker(redis_layer, "echo", concurrency=2)
    for n in range(6):
        await bus.asend("echo.sleep_sync", seconds=1.0, tag=f"job{n}")
    # The worker takes jobs as slots free up: stop it while it runs some (at most its 2 slots).
    await asyncio.to_thread(poll, lambda: read_records(record_dir, "sleeping"), what="a job to start")
    assert await asyncio.to_thread(worker.terminate) == 0
    slept, started = read_records(record_dir, "slept"), read_records(record_dir, "sleeping")
    assert sorted(slept) == sorted(started) and 1 <= len(slept) <= 2, "what it had started, it finished"
    depth = await get_channel_layer().durable_depth("echo")
    assert (depth.waiting, depth.held, depth.delayed) == (6 - len(slept), 0, 0), "the rest stays queued"
    assert f"stopped after handling {len(slept)} message(s)" in worker.output()
    assert presence(redis_layer, "echo") == {}, "a stopped worker withdraws its heartbeat"


async def test_worker_survives_a_redis_restart(
    tmp_path: Path, settings: object, start_worker: StartWorker
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        settings.CHANNEL_LAYERS = bus.conf.channel_layers(server.url)  # type: ignore[attr-defined]
        worker = start_worker(server.url, "echo")
        assert await bus.acall("echo.echo", text="before") == "before"
        server.stop()
        with pytest.raises(bus.BrokerUnreachable, match="Is Redis running at REDIS_URL"):
            await bus.acall("echo.echo", text="during", timeout=1)
        server.start()
        wait_for_worker(worker, server.url, ("echo",))  # it beats again without a restart
        assert await bus.acall("echo.echo", text="after") == "after"
        assert worker.process.poll() is None
        assert "retrying" in worker.output()
    finally:
        await default_bus.aclose()
        server.stop()


@pytest.mark.slow
async def test_idle_for_longer_than_redis_py_socket_timeout(
    redis_layer: str, start_worker: StartWorker
) -> None:
    start_worker(redis_layer, "echo")
    assert await bus.acall("echo.echo", text="first") == "first"
    # Not a wait for something: the idle time is what this test is about.
    await asyncio.sleep(6)  # redis-py 8's default socket_timeout is 5 s
    assert await bus.acall("echo.echo", text="second") == "second"
    await default_bus.aclose()


async def test_hundreds_of_concurrent_calls_from_one_process(
    redis_layer: str, start_worker: StartWorker
) -> None:
    start_worker(redis_layer, "echo")
    results = await asyncio.gather(*(bus.acall("echo.add", a=n, timeout=30) for n in range(500)))
    assert results == [n + 1 for n in range(500)]
    await default_bus.aclose()


def test_sync_calls_from_several_plain_threads_share_one_background_loop(
    redis_layer: str, start_worker: StartWorker
) -> None:
    start_worker(redis_layer, "echo")
    results: list[int] = []
    lock = threading.Lock()

    def caller(offset: int) -> None:
        for n in range(20):
            value = bus.call("echo.add", a=offset + n)
            with lock:
                results.append(value)

    threads = [threading.Thread(target=caller, args=(100 * t,)) for t in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == sorted(100 * t + n + 1 for t in range(5) for n in range(20))


def test_sync_call_inside_an_event_loop_is_refused_with_the_async_twin_named() -> None:
    async def inside() -> None:
        bus.call("echo.echo", text="x")

    with pytest.raises(Exception, match=r"use await bus.acall\(\)"):
        asyncio.run(inside())


def test_bus_command_line(redis_layer: str, start_worker: StartWorker, worker_data_dir: Path) -> None:
    worker = start_worker(redis_layer, "echo")
    ok = run_bus(worker_data_dir, redis_layer, "call", "echo.add", '{"a": 1, "b": 2}')
    assert (ok.returncode, ok.stdout.strip()) == (0, "3")
    invalid = run_bus(worker_data_dir, redis_layer, "call", "echo.add", '{"a": "x"}')
    assert invalid.returncode == 3 and "a: Input should be a valid integer" in invalid.stderr
    declared = run_bus(worker_data_dir, redis_layer, "call", "echo.refuse", '{"reason": "because"}')
    assert declared.returncode == 4 and "Refused: because" in declared.stderr
    remote = run_bus(worker_data_dir, redis_layer, "call", "echo.fail", '{"message": "oops"}')
    assert remote.returncode == 5 and "RuntimeError: oops" in remote.stderr
    late = run_bus(worker_data_dir, redis_layer, "call", "echo.sleep", '{"seconds": 2}', "--timeout", "0.2")
    assert late.returncode == 6 and "did not answer within 0.2 s" in late.stderr
    unknown = run_bus(worker_data_dir, redis_layer, "call", "echo.nope")
    assert unknown.returncode == 8 and "has no method 'nope'" in unknown.stderr
    not_json = run_bus(worker_data_dir, redis_layer, "call", "echo.add", "{a: 1}")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    sent = run_bus(worker_data_dir, redis_layer, "send", "echo.record", '{"n": 1}')
    assert sent.returncode == 0 and "message_id" in sent.stdout
    status = run_bus(worker_data_dir, redis_layer, "status", "--json")
    assert status.returncode == 0 and f".{worker.pid}." in status.stdout
    services = run_bus(worker_data_dir, redis_layer, "services")
    assert "echo.add(a: integer, b: integer = 1)  [read; send at-least-once]" in services.stdout
    worker.terminate()
    nobody = run_bus(worker_data_dir, redis_layer, "call", "echo.add", '{"a": 1}')
    assert nobody.returncode == 7 and "No live worker serves 'echo'" in nobody.stderr


def test_a_worker_says_when_it_loses_redis_and_when_redis_is_back(
    private_redis: RedisServer, start_worker: StartWorker
) -> None:
    worker = start_worker(private_redis.url, "echo")
    private_redis.stop()
    worker.wait_for_output("Receiving on 'echo' failed")
    worker.wait_for_output("Heartbeat failed")
    private_redis.start()
    worker.wait_for_output("Receiving on 'echo' works again, after")
    worker.wait_for_output("Heartbeat works again: echo is seen as live.")
    assert worker.process.poll() is None


def test_runworker_refuses_a_domain_that_routing_py_does_not_serve(worker_data_dir: Path) -> None:
    def runworker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "runworker", *args],
            cwd=ROOT,
            env=process_env(worker_data_dir),
            capture_output=True,
            text=True,
            timeout=30,
        )

    domains = "echo, inventory, orders, payments, presentation, tally"
    for name, hint in [("shipping", ""), ("Inventory", " Did you mean 'inventory'?")]:
        refused = runworker(name)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.strip() == (
            f"CommandError: routing.py serves no domain named {name!r}; the domains are: {domains}.{hint}"
        )
    shown = " ".join(runworker("--help").stdout.split())
    assert "DOMAIN [DOMAIN ...]" in shown and f"domains to serve, one or more of: {domains}" in shown
    assert "messages handled at once (default: 64, from the BUS setting)" in shown
