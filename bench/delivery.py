"""Durable one-way commands between OS processes on a real Redis: the bus against Celery and FastStream.

    .venv/bin/python bench/delivery.py [--quick] [--messages N] [--rate R] [--output PATH]

Run from the repository root (needs the `bench` extra: celery, faststream). It starts its own
redis-server on a free loopback port; this process is the one producer, and it measures five
stacks in one run, first with one worker process each, then with three:

1. bus at-least-once: ``await Sink.take.asend(sent=...)`` (bench/sink.py) queued on the domain's
   Redis stream, ``manage.py runworker sink`` workers (XREADGROUP), each message acknowledged
   after its handler finished: the bus's default for commands;
2. bus at-most-once: ``Sink.take_once``, the same handler declared ``delivery=AT_MOST_ONCE``
   (the old path: a sorted-set channel, popped, never acknowledged), to the same workers;
3. Celery: ``take.apply_async`` (bench/celery_app.py) on a Redis broker, ``task_acks_late=True``,
   workers ``celery worker -P solo -c 1`` (one process each, one task at a time, as many
   processes as the bus's);
4. FastStream: ``broker.publish(..., stream=...)``, workers (bench/faststream_app.py) reading
   the stream in one consumer group and acknowledging each message after its handler;
5. raw channels-redis: the stock ``RedisChannelLayer``'s ``send`` to one channel, one worker
   (``bench/delivery.py --serve-raw``) looping on its ``receive``: at-most-once, the baseline of
   what the bus costs Redis (one worker only: see RAW_WORKERS).

Every handler only notes when it ran (bench/probe.py: an append; a thread of the worker writes
the notes to Redis every 20 ms), so the transport is what is measured. Two kinds of rows:

- throughput: the producer sends N messages as fast as it can (64 sends in flight where the
  API is async; Celery's `apply_async` is synchronous, so one at a time) and the row ends when
  the last one was handled: messages/s from the first send to the last handled;
- latency: the producer sends at a fixed rate (default 500/s), and each message's time from
  just before its send to its handler (p50, p90, p99, max).

Both also report the CPU time each process used during the row per message (producer, all the
workers together, redis-server) and Redis commands per message (redis-server's own counts, from
``INFO cpu stats``, including what idle workers of the other stacks poll meanwhile), and what
one Redis core would carry at that cost (1e6 / Redis CPU us per message). Each row is measured in
SLICES slices, the stacks taking turns, so that whatever else the machine does hits them alike.
An at-most-once send refused with ChannelFull (its channel holds 1,000 messages) waits 2 ms and
is sent again; the rows count those refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, probe  # noqa: E402  (the repository root must be on sys.path first)

SETTINGS = "bench.settings"  # the test settings plus the `sink` domain
WORKER_COUNTS = (1, 3)
SLICES = 5
#: Sends in flight at once in a throughput row, for the stacks whose producer API is async.
PRODUCER_IN_FLIGHT = 64
DEFAULT_RATE = 500.0
FULL_PAUSE = 0.002  # seconds an at-most-once send waits after ChannelFull before it tries again
POLL = 0.005  # seconds between looks at the handled count
READY_TIMEOUT = 60.0
#: A row fails when its messages are not all handled within this many seconds after the last send.
HANDLED_TIMEOUT = 60.0
GOAL_RATE = 8000  # durable commands/s, 1 producer -> 1 worker
GOAL_VS_CELERY = 3.0

BUS_DURABLE = "bus at-least-once"
BUS_AT_MOST_ONCE = "bus at-most-once"
CELERY = "Celery acks_late"
FASTSTREAM = "FastStream stream + ack"
RAW = "raw channels-redis"
RAW_CHANNEL = "bench.raw.take"
#: Workers of the raw baseline in every row. With competing receivers the stock layer hands some
#: messages to two of them (django/channels_redis#163, the bus's reason for its own receive): a
#: slice counting those would end before its own messages were all handled, and the rest would
#: be counted in the next stack's slice.
RAW_WORKERS = 1
THROUGHPUT, LATENCY = "throughput", "latency"

Send = Callable[[float], Awaitable[Any]]


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many messages each row sends, and how fast the latency rows send them."""

    throughput: int
    latency: int
    warmup: int
    rate: float


@dataclass
class Row:
    """One stack, one number of workers, one kind of row (a slice, or slices joined)."""

    stack: str
    workers: int
    kind: str
    messages: int
    sent_seconds: float  # first send to last send returned
    seconds: float  # first send to last message handled
    latencies: list[float] = field(repr=False)  # seconds, sorted
    cpu: dict[str, float | None] = field(default_factory=dict)  # producer, workers, redis
    redis: common.RedisLoad | None = None
    refused: int = 0  # ChannelFull answers, each sent again
    duplicates: int = 0  # handled more often than sent

    @property
    def sent_rate(self) -> float:
        return self.messages / self.sent_seconds if self.sent_seconds > 0 else math.nan

    @property
    def rate(self) -> float:
        """Messages handled per second, from the first send to the last handled."""
        return self.messages / self.seconds if self.seconds > 0 else math.nan

    def ms(self, percent: float) -> float:
        return common.percentile(self.latencies, percent) * 1000

    def cpu_us(self) -> str:
        """CPU microseconds per message of the producer, the workers and redis-server."""
        values = [self.cpu.get(name) for name in ("producer", "workers", "redis")]
        if self.messages == 0 or any(value is None for value in values):
            return "-"
        return " / ".join(f"{value * 1e6 / self.messages:,.0f}" for value in values if value is not None)

    def redis_cells(self) -> list[str]:
        """Redis commands, CPU us, CPU us per command per message and messages/s per Redis core."""
        return ["-"] * 4 if self.redis is None else self.redis.cells(self.messages)

    def joined(self, other: Row) -> Row:
        """This row and another slice of the same stack, workers and kind, as one row."""
        cpu = {name: _plus(value, other.cpu.get(name)) for name, value in self.cpu.items()}
        redis = None if self.redis is None or other.redis is None else self.redis + other.redis
        return Row(
            self.stack, self.workers, self.kind, self.messages + other.messages,
            self.sent_seconds + other.sent_seconds, self.seconds + other.seconds,
            sorted(self.latencies + other.latencies), cpu, redis,
            self.refused + other.refused, self.duplicates + other.duplicates,
        )  # fmt: skip


def _plus(one: float | None, other: float | None) -> float | None:
    return None if one is None or other is None else one + other


# --------------------------------------------------------------------------------------------
# Stacks: how the producer sends, and how their workers start
# --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One way of sending durable work to worker processes."""

    name: str
    send: Send  # sends one message, stamped with the time.time() it was sent at
    in_flight: int  # sends at once in a throughput row
    kind: str  # which workers serve it: "bus", "celery", "faststream" or "raw"


def worker_argv(kind: str, name: str) -> list[str]:
    """The command line of one worker process of `kind`."""
    if kind == "bus":
        return [sys.executable, "manage.py", "runworker", "sink", "--settings", SETTINGS]
    if kind == "raw":
        return [sys.executable, str(ROOT / "bench" / "delivery.py"), "--serve-raw"]
    if kind == "celery":
        return [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "solo",
            "-c", "1", "-Q", "bench.take", "-n", f"{name}@%h", "--loglevel", "WARNING",
        ]  # fmt: skip
    return [sys.executable, str(ROOT / "bench" / "faststream_app.py"), "take"]


def start_worker(url: str, kind: str, index: int, processes: common.Processes) -> str:
    """Start worker `index` of `kind`; its process name."""
    name = f"{kind}-{index}"
    env = {
        **os.environ,
        "BUS_TEST_REDIS_URL": url,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        probe.URL_VARIABLE: url,
        probe.NAME_VARIABLE: name,
    }
    processes.start(name, worker_argv(kind, name), env)
    return name


async def wait_ready(url: str, workers: Mapping[str, list[str]], processes: common.Processes) -> None:
    """Until every worker serves: bus workers beat presence, the others set their ready key."""
    import redis
    from channels.layers import get_channel_layer

    client = redis.Redis.from_url(url)
    layer = get_channel_layer()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        for names in workers.values():
            for name in names:
                process = next(p for started, p in processes.started if started == name)
                if process.poll() is not None:
                    raise common.BenchmarkError(
                        f"{name} exited with {process.returncode}:\n{processes.output(name)}"
                    )
        others = [name for kind, names in workers.items() if kind != "bus" for name in names]
        ready = all(client.exists(probe.READY_KEY.format(name)) for name in others)
        if ready and len(await layer.presence("sink")) >= len(workers["bus"]):
            return
        if time.monotonic() > deadline:
            raise common.BenchmarkError(f"the workers did not all start within {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)


async def serve_raw() -> None:
    """A raw baseline worker: receive from the stock layer's channel and note the time, forever."""
    layer = common.raw_layer(os.environ[probe.URL_VARIABLE])
    probe.announce_ready()
    while True:
        message = await layer.receive(RAW_CHANNEL)
        probe.record(message["sent"])


async def stacks(url: str) -> tuple[list[Stack], Callable[[], Awaitable[None]]]:
    """The five stacks, and what closes their producers' connections."""
    from faststream.redis import RedisBroker

    from bench import celery_app, faststream_app
    from bench.sink import Sink
    from bus.client import default_bus

    broker = RedisBroker(url, logger=faststream_app.quiet_logger())
    await broker.connect()
    raw = common.raw_layer(url)

    async def bus_durable(sent: float) -> None:
        await Sink.take.asend(sent=sent)

    async def bus_at_most_once(sent: float) -> None:
        await Sink.take_once.asend(sent=sent)

    async def celery(sent: float) -> None:
        celery_app.take.apply_async((sent,))

    async def faststream(sent: float) -> None:
        await broker.publish(sent, stream=faststream_app.TAKE_STREAM)

    async def raw_send(sent: float) -> None:
        await raw.send(RAW_CHANNEL, {"type": "take", "sent": sent})

    async def close() -> None:
        from channels.layers import get_channel_layer

        await broker.stop()
        await raw.close_pools()
        await default_bus.aclose()
        await get_channel_layer().close_pools()

    return [
        Stack(BUS_DURABLE, bus_durable, PRODUCER_IN_FLIGHT, "bus"),
        Stack(BUS_AT_MOST_ONCE, bus_at_most_once, PRODUCER_IN_FLIGHT, "bus"),
        Stack(CELERY, celery, 1, "celery"),
        Stack(FASTSTREAM, faststream, PRODUCER_IN_FLIGHT, "faststream"),
        Stack(RAW, raw_send, PRODUCER_IN_FLIGHT, "raw"),
    ], close


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


async def send_one(stack: Stack) -> int:
    """Send one message, again after each ChannelFull; how many times it was refused."""
    import channels.exceptions

    import bus

    refused = 0
    while True:
        try:
            await stack.send(time.time())
            return refused
        except (bus.ChannelFull, channels.exceptions.ChannelFull):
            refused += 1
            await asyncio.sleep(FULL_PAUSE)


async def flood(stack: Stack, total: int) -> int:
    """Send `total` messages as fast as the stack takes them; the refusals."""
    left, refused = total, 0

    async def sender() -> None:
        nonlocal left, refused
        while left > 0:
            left -= 1
            refused += await send_one(stack)

    await asyncio.gather(*(sender() for _ in range(stack.in_flight)))
    return refused


async def paced(stack: Stack, total: int, rate: float) -> int:
    """Send `total` messages at `rate` a second, each at its time; the refusals."""
    loop = asyncio.get_running_loop()
    start, refused = loop.time(), 0
    for index in range(total):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        refused += await send_one(stack)
    return refused


class Bench:
    """The run's Redis, processes and workers, and how one row is measured."""

    def __init__(self, url: str, processes: common.Processes, plan: Plan) -> None:
        import redis

        self.url = url
        self.processes = processes
        self.plan = plan
        self.client = redis.Redis.from_url(url)
        self.workers: dict[str, list[str]] = {"bus": [], "celery": [], "faststream": [], "raw": []}

    async def add_workers(self, count: int) -> None:
        """Start workers until each stack has `count`, and wait until they all serve."""
        for kind, names in self.workers.items():
            while len(names) < (min(count, RAW_WORKERS) if kind == "raw" else count):
                names.append(start_worker(self.url, kind, len(names) + 1, self.processes))
        await wait_ready(self.url, self.workers, self.processes)

    async def measure(self, stack: Stack, kind: str, total: int) -> Row:
        """Send `total` messages (flooded or paced, per `kind`) and wait until all were handled."""
        probe.reset(self.client)
        pids: dict[str, int | None] = {"producer": None}
        names = self.workers[stack.kind]
        pids.update({name: self.processes.pid(name) for name in names})
        gc.collect()
        before = common.cpu_snapshot(pids)
        redis_before = common.RedisLoad.read(self.client)
        start = time.time()
        if kind == THROUGHPUT:
            refused = await flood(stack, total)
        else:
            refused = await paced(stack, total, self.plan.rate)
        sent_seconds = time.time() - start
        count = await self.wait_handled(stack, total)
        after = common.cpu_snapshot(pids)
        redis = common.RedisLoad.read(self.client) - redis_before
        pairs = probe.collected(self.client)
        used = common.cpu_used(before, after)
        workers_cpu: float | None = 0.0
        for name in names:
            workers_cpu = _plus(workers_cpu, used[name])
        cpu = {"producer": used["producer"], "workers": workers_cpu, "redis": redis.cpu}
        last = max(handled for _, handled in pairs)
        latencies = sorted(handled - sent for sent, handled in pairs)
        return Row(
            stack.name, len(names), kind, total, sent_seconds, last - start, latencies, cpu,
            redis, refused, count - total,
        )  # fmt: skip

    async def wait_handled(self, stack: Stack, total: int) -> int:
        """Until `total` messages were handled; how many were (more if some came twice)."""
        deadline = time.monotonic() + HANDLED_TIMEOUT
        while (count := probe.handled(self.client)) < total:
            if time.monotonic() > deadline:
                raise common.BenchmarkError(
                    f"{stack.name}: {count:,} of {total:,} messages handled after {HANDLED_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(POLL)
        return count


async def run_benchmark(url: str, processes: common.Processes, plan: Plan) -> list[Row]:
    """Every row, one worker each and then three, the stacks taking turns in each."""
    bench = Bench(url, processes, plan)
    all_stacks, close = await stacks(url)
    rows: dict[tuple[str, int, str], Row] = {}
    try:
        for count in WORKER_COUNTS:
            await bench.add_workers(count)
            measured = [stack for stack in all_stacks if stack.kind != "raw" or count <= RAW_WORKERS]
            for stack in measured:
                await bench.measure(stack, THROUGHPUT, plan.warmup)
            for kind, total in ((THROUGHPUT, plan.throughput), (LATENCY, plan.latency)):
                for _ in range(SLICES):
                    for stack in measured:
                        part = await bench.measure(stack, kind, total // SLICES)
                        key = (stack.name, count, kind)
                        rows[key] = rows[key].joined(part) if key in rows else part
                for stack in measured:
                    row = rows[(stack.name, count, kind)]
                    common.progress(
                        f"{stack.name:<24} {count} worker(s) {kind:<10}: {row.rate:,.0f} handled/s, "
                        f"p50 {row.ms(50):.1f} ms, p99 {row.ms(99):.1f} ms"
                    )
    finally:
        await close()
    order = {stack.name: index for index, stack in enumerate(all_stacks)}
    return sorted(rows.values(), key=lambda row: (row.kind != THROUGHPUT, row.workers, order[row.stack]))


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def header(url: str, plan: Plan) -> list[str]:
    """The report's title and setup lines."""
    return [
        *common.report_header(
            "Durable one-way commands: bus vs Celery vs FastStream",
            common.versions(url, extra=("celery", "kombu", "faststream")),
        ),
        f"- one producer (this process) and 1 or 3 worker processes per stack ({RAW}: 1, see "
        "RAW_WORKERS in bench/delivery.py) on a private "
        f"redis-server ({url}); handlers only note the time; {plan.throughput:,} messages per "
        f"throughput row, {plan.latency:,} per latency row at {plan.rate:,.0f}/s, each row in "
        f"{SLICES} slices taking turns with the other stacks, after {plan.warmup} warm-up messages",
        f"- throughput: {PRODUCER_IN_FLIGHT} sends in flight (Celery's `apply_async` is synchronous: "
        "one at a time); handled/s counts from the first send to the last message handled",
        "- CPU us/msg: CPU time (user + system) each process used during the row, divided by its "
        "messages; workers: all of the stack's worker processes together; redis: redis-server's own "
        "count (`INFO cpu`: used_cpu_user + used_cpu_sys), read before and after each slice as its "
        "commands are (`INFO stats`); both include the other stacks' idle polling and the probe's "
        "notes. Msgs/s per Redis core = 1e6 / Redis CPU us per message: what one redis-server could "
        "carry if its CPU were the only limit",
        "",
    ]


def throughput_table(rows: Sequence[Row]) -> list[str]:
    """Messages per second, each compared with Celery's with as many workers; what each costs Redis,
    compared with the raw channels-redis row's."""
    celery = {row.workers: row for row in rows if row.stack == CELERY}
    raw = {row.workers: row for row in rows if row.stack == RAW}
    lines = [
        "## Throughput: 1 producer, as fast as it sends",
        "",
        "| stack | workers | messages | sent/s | handled/s | vs Celery | CPU us/msg: producer / workers "
        "/ redis | Redis commands/msg | Redis CPU us/msg | Redis CPU us/command | msgs/s per Redis core "
        "| Redis CPU/msg vs raw channels-redis | ChannelFull, sent again |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = celery.get(row.workers)
        versus = "baseline" if row.stack == CELERY else f"{row.rate / base.rate:.2f}x" if base else "-"
        raw_row = raw.get(row.workers)
        on_redis = (
            "baseline"
            if row is raw_row
            else "-"
            if raw_row is None or row.redis is None
            else row.redis.versus(row.messages, raw_row.redis, raw_row.messages)
        )
        lines.append(
            f"| {row.stack} | {row.workers} | {row.messages:,} | {row.sent_rate:,.0f} | "
            f"{row.rate:,.0f} | {versus} | {row.cpu_us()} | {' | '.join(row.redis_cells())} | "
            f"{on_redis} | {row.refused:,} |"
        )
    return lines


def latency_table(rows: Sequence[Row], rate: float) -> list[str]:
    """Send-to-handled latency at a fixed rate."""
    lines = [
        "",
        f"## Latency from send to handled, {rate:,.0f} messages/s",
        "",
        "| stack | workers | messages | p50 ms | p90 ms | p99 ms | max ms | CPU us/msg: producer / workers "
        "/ redis | Redis commands/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.stack} | {row.workers} | {row.messages:,} | {row.ms(50):.2f} | {row.ms(90):.2f} | "
            f"{row.ms(99):.2f} | {row.ms(100):.2f} | {row.cpu_us()} | {row.redis_cells()[0]} |"
        )
    return lines


def goals(rows: Sequence[Row]) -> list[str]:
    """The issue's goals, each marked met or not met."""
    found = {(row.stack, row.workers): row for row in rows if row.kind == THROUGHPUT}
    lines = ["", "## Goals", ""]
    durable, celery = found.get((BUS_DURABLE, 1)), found.get((CELERY, 1))
    if durable:
        verdict = "met" if durable.rate >= GOAL_RATE else "not met"
        lines.append(
            f"- bus at-least-once >= {GOAL_RATE:,} commands/s, 1 producer -> 1 worker: **{verdict}** "
            f"({durable.rate:,.0f}/s)"
        )
    if durable and celery:
        ratio = durable.rate / celery.rate
        verdict = "met" if ratio >= GOAL_VS_CELERY else "not met"
        lines.append(
            f"- bus at-least-once >= {GOAL_VS_CELERY:g}x Celery (acks_late), 1 worker: **{verdict}** "
            f"({durable.rate:,.0f}/s vs {celery.rate:,.0f}/s = {ratio:.2f}x)"
        )
    duplicated = [row for row in rows if row.duplicates]
    for row in duplicated:
        lines.append(f"- {row.stack}, {row.workers} worker(s), {row.kind}: {row.duplicates} handled twice")
    return lines


def report(url: str, plan: Plan, rows: Sequence[Row]) -> list[str]:
    throughput = [row for row in rows if row.kind == THROUGHPUT]
    latency = [row for row in rows if row.kind == LATENCY]
    return [
        *header(url, plan),
        *throughput_table(throughput),
        *latency_table(latency, plan.rate),
        *goals(rows),
    ]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--messages", type=int, default=None, help="messages per throughput row (default 20000)"
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="messages/s of the latency rows")
    parser.add_argument("--quick", action="store_true", help="about a minute instead of a few")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.messages is not None and arguments.messages < SLICES:
        parser.error(f"--messages must be at least {SLICES}")
    if arguments.rate <= 0:
        parser.error("--rate must be positive")
    return arguments


def plan_for(arguments: argparse.Namespace) -> Plan:
    """Row sizes from --messages, --rate and --quick: a latency row sends for 1 s (quick) or 5 s."""
    throughput = arguments.messages or (4000 if arguments.quick else 20000)
    latency = max(SLICES, round(arguments.rate * (1 if arguments.quick else 5)))
    return Plan(throughput, latency, 200 if arguments.quick else 500, arguments.rate)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.serve_raw:
        asyncio.run(serve_raw())
        return 0
    if not all(importlib.util.find_spec(name) for name in ("celery", "faststream")):
        print('bench/delivery.py needs the bench extra: .venv/bin/pip install -e ".[bench]"', file=sys.stderr)
        return 2
    plan = plan_for(arguments)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as directory:
        processes = common.Processes(Path(directory))
        try:
            url = common.start_redis(processes)
            os.environ[probe.URL_VARIABLE] = url  # bench.celery_app reads it when imported
            common.setup_django(url)
            rows = asyncio.run(run_benchmark(url, processes, plan))
            lines = report(url, plan, rows)
            lines.append(f"\n_Whole run: {time.monotonic() - started:.1f} s._")
        except common.BenchmarkError as exc:
            return common.report_failure(exc, processes, tail=20)
        finally:
            processes.stop_all()
    return common.publish(lines, arguments.output)


if __name__ == "__main__":
    sys.exit(main())
