"""RPC round trip between two OS processes on a real Redis: the bus against its two baselines.

    .venv/bin/python bench/rpc.py [--requests N] [--quick] [--output PATH] [--profile]

Run from the repository root. It starts its own redis-server on a free loopback port and, in
one run, measures five request/reply stacks, each sequentially (1 in flight) and with 10 and
100 calls in flight, and prints a Markdown table:

1. bus: ``await bus.acall("echo.add", a=1, b=2)`` to one ``manage.py runworker echo`` process;
2. raw channels-redis: the stock ``RedisChannelLayer`` with one ``new_channel()`` reply channel
   per process and replies matched by id (the stock layer's best case), served by
   ``bench/rpc.py --serve-raw URL`` (receive, then send back);
3. hand-rolled redis-py: LPUSH a msgpack request, the server (``--serve-redis URL``) BRPOPs it
   and LPUSHes the reply onto the caller's list, which one BRPOP task reads: the floor;
4. Celery: ``add.delay(1, 2).get()`` (bench/celery_app.py) with Redis as broker and result
   backend, served by ``celery worker -P solo -c 1`` (one process, like the bus's worker).
   `AsyncResult.get` blocks, so with more than one call in flight each waits in a thread of a
   pool, as ``asyncio.to_thread`` would;
5. FastStream: ``await broker.request({"a": 1, "b": 2}, list=...)`` to a list subscriber
   (bench/faststream_app.py), which replies on the caller's own pub/sub channel.

The raw and hand-rolled baselines use redis-py's asyncio client on both sides, as the bus does,
so the comparison with them is about the protocol, not sync versus async. Rows 4 and 5 need the
``bench`` extra (celery, faststream); without it they are left out, and the report says so.
``--requests N`` sets the calls of a sequential row (default 2,000); an in-flight row makes 2.5
times as many (default 5,000).

``--profile`` runs only the bus sequential and 100-in-flight rows, under pyinstrument in this
(client) process and, when py-spy is installed, ``py-spy record`` on the worker process, and
prints where the time goes on each side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402  (the repository root must be on sys.path first)

RAW_CHANNEL = "bench.raw.requests"
HAND_PREFIX = "benchhand:"
HAND_QUEUE = f"{HAND_PREFIX}requests"
READY_KEY = "benchready:{}"
IN_FLIGHT = (1, 10, 100)
#: Each row is measured in this many slices, taking turns with the other systems.
SLICES = 5
CALL_TIMEOUT = 10.0  # seconds a baseline call waits for its reply before it counts as failed
MAX_ERRORS = 10  # failed calls after which a row is abandoned
READY_TIMEOUT = 60.0
CELERY, FASTSTREAM = "Celery", "FastStream"
CELERY_SERVER, FASTSTREAM_SERVER = "celery-rpc", "faststream-rpc"  # their server processes
GOAL_P50_RATIO = 1.25
GOAL_CALLS_PER_SECOND = 6000

Call = Callable[[], Awaitable[Any]]


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many calls each row makes."""

    sequential: int
    concurrent: int
    warmup: int

    def calls(self, in_flight: int) -> int:
        """Calls of the row with `in_flight` calls at once."""
        return self.sequential if in_flight == 1 else self.concurrent


@dataclass
class Row:
    """One measured row: a system at one number of calls in flight."""

    system: str
    in_flight: int
    seconds: float
    latencies: list[float] = field(repr=False)  # seconds, sorted
    errors: int = 0
    cpu: dict[str, float | None] = field(default_factory=dict)  # CPU seconds per process
    redis: common.RedisLoad | None = None  # what redis-server did during the row

    @property
    def calls(self) -> int:
        """Calls that got their reply."""
        return len(self.latencies)

    def redis_cells(self) -> list[str]:
        """Redis commands, CPU us, CPU us per command per call and calls/s per Redis core."""
        return ["-"] * 4 if self.redis is None else self.redis.cells(self.calls)

    def cpu_us(self) -> str:
        """CPU microseconds per call of the client, the server and redis-server."""
        values = [self.cpu.get(name) for name in ("client", "server", "redis")]
        if self.calls == 0 or any(value is None for value in values):
            return "-"
        return " / ".join(f"{value * 1e6 / self.calls:,.0f}" for value in values if value is not None)

    @property
    def rate(self) -> float:
        """Successful calls per second of wall time."""
        return self.calls / self.seconds if self.seconds > 0 else math.nan

    def ms(self, percent: float) -> float:
        """The latency percentile `percent`, in milliseconds."""
        return common.percentile(self.latencies, percent) * 1000

    def joined(self, other: Row) -> Row:
        """This row and another slice of the same system and level, as one row."""
        cpu = {name: _plus(value, other.cpu.get(name)) for name, value in self.cpu.items()}
        redis = None if self.redis is None or other.redis is None else self.redis + other.redis
        latencies = sorted(self.latencies + other.latencies)
        return Row(
            self.system, self.in_flight, self.seconds + other.seconds, latencies,
            self.errors + other.errors, cpu, redis,
        )  # fmt: skip


async def measure(
    system: str,
    call: Call,
    total: int,
    in_flight: int,
    pids: Mapping[str, int | None] | None = None,
    redis: Callable[[], common.RedisLoad] | None = None,
) -> Row:
    """Make `total` calls, `in_flight` at a time, timing each one and the CPU each process used.

    `pids` names the processes to account for besides this one ("server", "redis"); `redis`
    reads redis-server's counters, whose CPU then stands for "redis".
    """
    latencies: list[float] = []
    errors: list[BaseException] = []
    left = total

    async def runner() -> None:
        nonlocal left
        while left > 0 and len(errors) < MAX_ERRORS:
            left -= 1
            start = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors.append(exc)
                continue
            latencies.append(time.perf_counter() - start)

    processes = {"client": None, **(pids or {})}
    gc.collect()
    before = common.cpu_snapshot(processes)
    redis_before = redis() if redis else None
    start = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(in_flight)))
    seconds = time.perf_counter() - start
    after = common.cpu_snapshot(processes)
    load = redis() - redis_before if redis and redis_before else None
    if len(errors) >= MAX_ERRORS:
        raise common.BenchmarkError(f"{system}: {len(errors)} calls failed, the first with {errors[0]!r}")
    latencies.sort()
    cpu = common.cpu_used(before, after)
    if load is not None:
        cpu["redis"] = load.cpu
    return Row(system, in_flight, seconds, latencies, len(errors), cpu, load)


def _plus(one: float | None, other: float | None) -> float | None:
    return None if one is None or other is None else one + other


@dataclass(frozen=True)
class System:
    """One request/reply stack under test: how to call it, and its server processes."""

    name: str
    call: Call
    pids: Mapping[str, int | None]
    #: How to call it with more than one call in flight, when that differs (Celery: in threads).
    concurrent_call: Call | None = None

    def call_for(self, in_flight: int) -> Call:
        """The call to make with `in_flight` calls at once."""
        return self.call if in_flight == 1 or self.concurrent_call is None else self.concurrent_call


async def run_systems(
    systems: Sequence[System], plan: Plan, redis: Callable[[], common.RedisLoad]
) -> list[Row]:
    """Warm each up, then measure every level in SLICES slices, the systems taking turns.

    Taking turns spreads whatever else the machine does over all three alike: measured one
    after the other, the same stack's sequential p50 moved by 40% between runs.
    """
    for system in systems:
        await measure(system.name, system.call_for(1), plan.warmup, 1)
        busiest = max(IN_FLIGHT)
        await measure(system.name, system.call_for(busiest), plan.warmup, busiest)  # opens the pools too
    rows: dict[tuple[str, int], Row] = {}
    for in_flight in IN_FLIGHT:
        for _ in range(SLICES):
            for system in systems:
                calls = plan.calls(in_flight) // SLICES
                call = system.call_for(in_flight)
                part = await measure(system.name, call, calls, in_flight, system.pids, redis)
                key = (system.name, in_flight)
                rows[key] = rows[key].joined(part) if key in rows else part
        for system in systems:
            row = rows[(system.name, in_flight)]
            errors = f", {row.errors} errors" if row.errors else ""
            common.progress(
                f"{system.name:<20} {in_flight:>3} in flight: p50 {row.ms(50):.3f} ms, "
                f"{row.rate:,.0f} calls/s{errors}"
            )
    return [rows[(system.name, in_flight)] for system in systems for in_flight in IN_FLIGHT]


# --------------------------------------------------------------------------------------------
# The three clients and the two baseline servers
# --------------------------------------------------------------------------------------------


def hand_client(url: str) -> Any:
    """A redis-py asyncio client for the hand-rolled baseline."""
    from redis import asyncio as aioredis

    return aioredis.Redis.from_url(url, socket_timeout=None, max_connections=400)


class _Replies:
    """Calls waiting for their replies, by id, filled by one receiver task."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.task: asyncio.Task[None] | None = None

    def expect(self) -> tuple[int, asyncio.Future[Any]]:
        """A fresh id and the future its reply will complete."""
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        return self.next_id, future

    def deliver(self, call_id: int, reply: Any) -> None:
        """Complete the call `call_id` with `reply`, unless it gave up already."""
        future = self.pending.pop(call_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def wait(self, call_id: int, future: asyncio.Future[Any]) -> Any:
        """The reply to `call_id`, or TimeoutError after CALL_TIMEOUT."""
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            self.pending.pop(call_id, None)

    async def stop(self) -> None:
        """Cancel the receiver task."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class RawClient(_Replies):
    """Request/reply over the stock channels-redis layer: one reply channel for the process."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.layer = common.raw_layer(url)
        self.reply_channel = ""

    async def start(self) -> None:
        """Make the reply channel and start its receiver."""
        self.reply_channel = await self.layer.new_channel()
        self.task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        while True:
            reply = await self.layer.receive(self.reply_channel)
            self.deliver(reply["n"], reply)

    async def call(self) -> Any:
        """One round trip."""
        call_id, future = self.expect()
        await self.layer.send(RAW_CHANNEL, {"type": "x", "reply_to": self.reply_channel, "n": call_id})
        return await self.wait(call_id, future)

    async def close(self) -> None:
        """Stop receiving and close the layer's connections."""
        await self.stop()
        await self.layer.close_pools()


class HandClient(_Replies):
    """Request/reply over plain Redis lists: LPUSH a request, BRPOP replies from our own list."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.redis = hand_client(url)
        self.reply_key = f"{HAND_PREFIX}reply:{uuid.uuid4().hex}"

    async def start(self) -> None:
        """Start the reply reader."""
        self.task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        import msgpack

        while True:
            popped = await self.redis.brpop([self.reply_key], timeout=5)
            if popped is not None:
                reply = msgpack.unpackb(popped[1])
                self.deliver(reply["id"], reply)

    async def call(self) -> Any:
        """One round trip."""
        import msgpack

        call_id, future = self.expect()
        request = {"id": call_id, "reply_to": self.reply_key, "n": call_id}
        await self.redis.lpush(HAND_QUEUE, msgpack.packb(request))
        return await self.wait(call_id, future)

    async def close(self) -> None:
        """Stop reading and close the connections."""
        await self.stop()
        await self.redis.aclose()


class CeleryClient:
    """Request/reply through Celery: a task's result, read back from the Redis result backend."""

    def __init__(self) -> None:
        from bench import celery_app

        self.task = celery_app.add
        self.threads = ThreadPoolExecutor(max(IN_FLIGHT), thread_name_prefix="celery-call")

    def call_sync(self) -> Any:
        """One round trip, as sync code makes it: `AsyncResult.get` blocks until the reply."""
        result = self.task.delay(1, 2).get(timeout=CALL_TIMEOUT)
        if result != 3:
            raise ValueError(f"bench.add(1, 2) answered {result!r}, not 3")
        return result

    async def call(self) -> Any:
        """One round trip in this thread: with one call in flight nothing else waits meanwhile."""
        return self.call_sync()

    async def threaded(self) -> Any:
        """One round trip in a thread of the pool, so that others can be in flight meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, self.call_sync)

    async def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)


class FastStreamClient:
    """Request/reply through FastStream: `broker.request` to a list subscriber."""

    def __init__(self, url: str) -> None:
        from faststream.redis import RedisBroker

        from bench.faststream_app import quiet_logger

        # Each request in flight holds a pub/sub connection for its reply: room for 100 of them,
        # as the raw baseline has (redis-py 8's default pool stops at 100).
        self.broker = RedisBroker(url, logger=quiet_logger(), max_connections=400)

    async def start(self) -> None:
        await self.broker.connect()

    async def call(self) -> Any:
        """One round trip."""
        from bench.faststream_app import ADD_LIST

        reply = await self.broker.request({"a": 1, "b": 2}, list=ADD_LIST, timeout=CALL_TIMEOUT)
        return await reply.decode()

    async def close(self) -> None:
        await self.broker.stop()


def compared_installed() -> bool:
    """Whether Celery and FastStream (the `bench` extra) are installed."""
    return all(importlib.util.find_spec(name) for name in ("celery", "faststream"))


async def serve_raw(url: str) -> None:
    """The raw baseline's server: receive a request, send the reply back, forever."""
    import redis

    layer = common.raw_layer(url)
    redis.Redis.from_url(url).set(READY_KEY.format("raw"), os.getpid())
    while True:
        request = await layer.receive(RAW_CHANNEL)
        await layer.send(request["reply_to"], {"type": "y", "n": request["n"]})


async def serve_redis(url: str) -> None:
    """The hand-rolled baseline's server: BRPOP a request, LPUSH the reply, forever."""
    import msgpack

    client = hand_client(url)
    await client.set(READY_KEY.format("hand"), os.getpid())
    while True:
        popped = await client.brpop([HAND_QUEUE], timeout=5)
        if popped is None:
            continue
        request = msgpack.unpackb(popped[1])
        await client.lpush(request["reply_to"], msgpack.packb({"id": request["id"], "n": request["n"]}))


async def bus_call() -> Any:
    """One bus round trip."""
    import bus

    return await bus.acall("echo.add", a=1, b=2)


async def wait_for_bus(worker: subprocess.Popen[bytes], processes: common.Processes) -> None:
    """Call until the worker answers (it is up once NoWorker stops), within READY_TIMEOUT."""
    import bus

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if worker.poll() is not None:
            output = processes.output("worker")
            raise common.BenchmarkError(f"the bus worker exited with {worker.returncode}:\n{output}")
        try:
            result = await bus.acall("echo.add", a=1, b=2, timeout=2)
        except (bus.NoWorker, bus.DeadlineExceeded):
            if time.monotonic() > deadline:
                output = processes.output("worker")
                raise common.BenchmarkError(
                    f"the bus worker did not answer within {READY_TIMEOUT:.0f} s:\n{output}"
                ) from None
            await asyncio.sleep(0.1)
            continue
        if result != 3:
            raise common.BenchmarkError(f"echo.add(a=1, b=2) answered {result!r}, not 3")
        return


async def close_bus() -> None:
    """Stop the bus client's reply listener and close its layer's connections."""
    from channels.layers import get_channel_layer

    from bus.client import default_bus

    await default_bus.aclose()
    await get_channel_layer().close_pools()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def wait_for_server(
    url: str, name: str, process: subprocess.Popen[bytes], processes: common.Processes
) -> None:
    """Wait until a baseline server has set its ready key."""
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + READY_TIMEOUT
    while not client.exists(READY_KEY.format(name)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise common.BenchmarkError(f"the {name} server did not start:\n{processes.output(name)}")
        time.sleep(0.02)


def start_worker(url: str, processes: common.Processes) -> subprocess.Popen[bytes]:
    """Start `manage.py runworker echo` on the test settings and our Redis."""
    env = {**os.environ, "BUS_TEST_REDIS_URL": url, "DJANGO_SETTINGS_MODULE": common.SETTINGS}
    argv = [sys.executable, "manage.py", "runworker", "echo", "--settings", common.SETTINGS]
    return processes.start("worker", argv, env)


def start_compared(url: str, processes: common.Processes) -> dict[str, subprocess.Popen[bytes]]:
    """Start the Celery worker and the FastStream server (each sets its ready key when it serves)."""
    from bench import probe

    os.environ[probe.URL_VARIABLE] = url  # bench.celery_app, imported by this process too, reads it
    celery = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "solo", "-c", "1",
        "-Q", "bench.add", "-n", f"{CELERY_SERVER}@%h", "--loglevel", "WARNING",
    ]  # fmt: skip
    fast = [sys.executable, str(ROOT / "bench" / "faststream_app.py"), "add"]
    started = {}
    for name, argv in ((CELERY_SERVER, celery), (FASTSTREAM_SERVER, fast)):
        env = {**os.environ, probe.URL_VARIABLE: url, probe.NAME_VARIABLE: name}
        started[name] = processes.start(name, argv, env)
    return started


# --------------------------------------------------------------------------------------------
# The benchmark run and its report
# --------------------------------------------------------------------------------------------


async def run_benchmark(
    url: str, worker: subprocess.Popen[bytes], processes: common.Processes, plan: Plan, compared: bool
) -> list[Row]:
    """Measure the systems; rows in table order (bus, raw channels-redis, hand-rolled, and with
    `compared` Celery and FastStream)."""
    import redis

    counter = redis.Redis.from_url(url)

    def load() -> common.RedisLoad:
        return common.RedisLoad.read(counter)

    hand, raw = HandClient(url), RawClient(url)
    await hand.start()
    await raw.start()
    celery = fast = None
    try:
        await wait_for_bus(worker, processes)
        systems = [
            System("bus", bus_call, {"server": worker.pid}),
            System("raw channels-redis", raw.call, {"server": processes.pid("raw")}),
            System("hand-rolled redis-py", hand.call, {"server": processes.pid("hand")}),
        ]
        if compared:
            celery, fast = CeleryClient(), FastStreamClient(url)
            await fast.start()
            systems += [
                System(
                    CELERY, celery.call, {"server": processes.pid(CELERY_SERVER)},
                    concurrent_call=celery.threaded,
                ),
                System(FASTSTREAM, fast.call, {"server": processes.pid(FASTSTREAM_SERVER)}),
            ]  # fmt: skip
        return await run_systems(systems, plan, load)
    finally:
        await close_bus()
        await raw.close()
        await hand.close()
        if celery is not None:
            await celery.close()
        if fast is not None:
            await fast.close()


def header(url: str, plan: Plan, compared: bool | None = None) -> list[str]:
    """The report's title and setup lines; `compared`: whether Celery and FastStream were measured
    (None: not asked, as in a profile)."""
    title = "RPC round trip: bus vs raw channels-redis vs hand-rolled redis-py"
    if compared:
        title += " vs Celery vs FastStream"
    extra = ("celery", "kombu", "faststream") if compared else ()
    return [
        *common.report_header(title, common.versions(url, extra)),
        f"- client and server in two OS processes on a private redis-server ({url}); "
        f"{plan.sequential:,} calls per sequential row, {plan.concurrent:,} per in-flight row, "
        f"after {plan.warmup} warm-up calls sequentially and {plan.warmup} with 100 in flight",
        "- CPU us/call: CPU time (user + system) each process used during the row, divided by its "
        "calls; server is the runworker process or the baseline's server script; redis is "
        "redis-server's own count (`INFO cpu`: used_cpu_user + used_cpu_sys) read before and after "
        "each slice, as are its commands (`INFO stats`); both include what idle clients of the other "
        "stacks poll meanwhile. Calls/s per Redis core = 1e6 / Redis CPU us per call: what one "
        "redis-server could carry if its CPU were the only limit",
        *(
            [
                f"- {CELERY}: `add.delay(1, 2).get()`, Redis broker and result backend, one "
                "`celery worker -P solo` process; with 10 or 100 in flight each call waits in a thread "
                f"of a pool. {FASTSTREAM}: `broker.request(..., list=...)` to one FastStream process"
            ]
            if compared
            else ['- Celery and FastStream left out: install the bench extra (`pip install -e ".[bench]"`)']
            if compared is False
            else []
        ),
        "",
    ]


def table(rows: Sequence[Row]) -> list[str]:
    """The Markdown table, each row compared with the hand-rolled row of the same concurrency, and
    its Redis CPU per call with the raw channels-redis row's."""
    baseline = {row.in_flight: row for row in rows if row.system == "hand-rolled redis-py"}
    raw = {row.in_flight: row for row in rows if row.system == "raw channels-redis"}
    lines = [
        "| system | in flight | calls | errors | p50 ms | p90 ms | p99 ms | calls/s | vs hand-rolled "
        "| CPU us/call: client / server / redis | Redis commands/call | Redis CPU us/call "
        "| Redis CPU us/command | calls/s per Redis core | Redis CPU/call vs raw channels-redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = baseline.get(row.in_flight)
        if row.system == "hand-rolled redis-py":
            versus = "baseline"
        elif base is None:
            versus = "-"
        elif row.in_flight == 1:
            versus = f"{row.system} p50 / hand-rolled p50 = {row.ms(50) / base.ms(50):.2f}x"
        else:
            versus = f"{row.system} calls/s / hand-rolled calls/s = {row.rate / base.rate:.2f}x"
        lines.append(
            f"| {row.system} | {row.in_flight} | {row.calls:,} | {row.errors} | {row.ms(50):.3f} | "
            f"{row.ms(90):.3f} | {row.ms(99):.3f} | {row.rate:,.0f} | {versus} | {row.cpu_us()} "
            f"| {' | '.join(row.redis_cells())} | {redis_ratio(row, raw.get(row.in_flight))} |"
        )
    return lines


def redis_ratio(row: Row, raw: Row | None) -> str:
    """Redis CPU per call of `row` over the raw channels-redis row's at the same concurrency."""
    if raw is None or row.redis is None:
        return "-"
    return "baseline" if row is raw else row.redis.versus(row.calls, raw.redis, raw.calls)


def goals(rows: Sequence[Row]) -> list[str]:
    """The project's goals, each marked met or not met."""
    found = {(row.system, row.in_flight): row for row in rows}
    lines = ["", "## Goals", ""]
    bus, hand = found.get(("bus", 1)), found.get(("hand-rolled redis-py", 1))
    if bus and hand:
        ratio = bus.ms(50) / hand.ms(50)
        verdict = "met" if ratio <= GOAL_P50_RATIO else "not met"
        lines.append(
            f"- bus sequential p50 within {GOAL_P50_RATIO}x of hand-rolled: **{verdict}** "
            f"({bus.ms(50):.3f} ms vs {hand.ms(50):.3f} ms = {ratio:.2f}x)"
        )
    busy = found.get(("bus", 100))
    if busy:
        verdict = "met" if busy.rate >= GOAL_CALLS_PER_SECOND else "not met"
        lines.append(
            f"- bus >= {GOAL_CALLS_PER_SECOND:,} calls/s with 100 in flight on one worker process: "
            f"**{verdict}** ({busy.rate:,.0f} calls/s)"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------


def pyinstrument_stacks(session: Any) -> Iterable[common.Stack]:
    """The samples of a pyinstrument session as (frames, seconds)."""
    for records, seconds in session.frame_records:
        frames = []
        for record in records:
            parts = record.split("\x01")[0].split("\x00")
            if len(parts) >= 2 and parts[1] != "<thread>":
                frames.append((parts[0], common.short_path(parts[1])))
        yield frames, seconds


async def run_profile(
    url: str, worker: subprocess.Popen[bytes], processes: common.Processes, plan: Plan
) -> tuple[list[Row], Any, Path | None]:
    """The bus's sequential and 100-in-flight rows under pyinstrument (client) and py-spy (worker)."""
    from pyinstrument import Profiler

    await wait_for_bus(worker, processes)
    await measure("bus", bus_call, plan.warmup, 1)
    await measure("bus", bus_call, plan.warmup, 100)
    spy = None
    spy_output = processes.directory / "worker-py-spy.txt"
    executable = common.py_spy_executable()
    if executable:
        argv = ["record", "--pid", str(worker.pid), "--rate", "500", "--format", "raw", "--full-filenames"]
        spy = await asyncio.create_subprocess_exec(
            executable,
            *argv,
            "--nonblocking",
            "--output",
            str(spy_output),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        pids = {"server": worker.pid, "redis": processes.pid("redis-server")}
        rows = [await measure("bus", bus_call, plan.calls(n), n, pids) for n in (1, 100)]
    finally:
        session = profiler.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(spy.wait(), 30)
            except TimeoutError:
                spy.kill()
                await spy.wait()
        await close_bus()
    return rows, (profiler, session), spy_output if spy_output.exists() else None


def profile_report(rows: Sequence[Row], profiled: Any, worker_profile: Path | None) -> list[str]:
    """The profiled rows, both sides' summaries and the top of pyinstrument's call tree."""
    profiler, session = profiled
    lines = [
        "# Where a bus call's time goes",
        "",
        "Rows measured under the profilers, so slower than an unprofiled run:",
        "",
        *table(rows),
        "",
        "## Client (this process, pyinstrument, wall clock of the event loop thread)",
        "",
        *common.summarize("Client", pyinstrument_stacks(session), "s", common.area),
    ]
    if worker_profile is not None:
        lines += [
            "## Worker (`manage.py runworker echo`, py-spy, CPU samples of all threads, idle excluded)",
            "",
            *common.summarize("Worker", common.py_spy_stacks(worker_profile), "samples", common.area),
        ]
    else:
        lines += ["Worker not profiled: install py-spy (`.venv/bin/pip install py-spy`).", ""]
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    lines += ["## Client call tree (pyinstrument, top)", "", "```", *tree.splitlines()[:80], "```"]
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=None, help="calls per sequential row (default 2000)")
    parser.add_argument("--quick", action="store_true", help="a few hundred calls per row")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--profile", action="store_true", help="profile the bus rows (needs pyinstrument)")
    parser.add_argument("--serve-raw", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-redis", metavar="URL", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.requests is not None and arguments.requests < 1:
        parser.error("--requests must be at least 1")
    return arguments


def plan_for(arguments: argparse.Namespace) -> Plan:
    """Row sizes from --requests and --quick."""
    sequential = arguments.requests or (300 if arguments.quick else 2000)
    return Plan(sequential, math.ceil(sequential * 2.5), 100 if arguments.quick else 200)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with --serve-*, one of the baseline servers)."""
    arguments = parse_arguments(argv)
    if arguments.serve_raw:
        asyncio.run(serve_raw(arguments.serve_raw))
        return 0
    if arguments.serve_redis:
        asyncio.run(serve_redis(arguments.serve_redis))
        return 0
    if arguments.profile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            print("--profile needs pyinstrument: .venv/bin/pip install pyinstrument", file=sys.stderr)
            return 2
    plan = plan_for(arguments)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as directory:
        processes = common.Processes(Path(directory))
        try:
            url = common.start_redis(processes)
            worker = start_worker(url, processes)
            if arguments.profile:
                common.setup_django(url)
                rows, profiled, worker_profile = asyncio.run(run_profile(url, worker, processes, plan))
                lines = [*header(url, plan), *profile_report(rows, profiled, worker_profile)]
            else:
                servers = {
                    "raw": processes.start("raw", [sys.executable, __file__, "--serve-raw", url]),
                    "hand": processes.start("hand", [sys.executable, __file__, "--serve-redis", url]),
                }
                compared = compared_installed()
                if compared:
                    servers.update(start_compared(url, processes))
                for name, process in servers.items():
                    wait_for_server(url, name, process, processes)
                common.setup_django(url)
                rows = asyncio.run(run_benchmark(url, worker, processes, plan, compared))
                lines = [*header(url, plan, compared), *table(rows), *goals(rows)]
            lines.append(f"\n_Whole run: {time.monotonic() - started:.1f} s._")
        except common.BenchmarkError as exc:
            return common.report_failure(exc, processes)
        finally:
            processes.stop_all()
    return common.publish(lines, arguments.output)


if __name__ == "__main__":
    sys.exit(main())
