"""Durable one-way commands between OS processes on a real Redis: the bus against Celery and FastStream.

    .venv/bin/python bench/delivery.py [--quick] [--messages N] [--rate R] [--output PATH]

Run from the repository root (needs the `bench` extra: celery, faststream). It starts its own
redis-server on a free loopback port; this process is the one producer, and it measures four
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
   the stream in one consumer group and acknowledging each message after its handler.

Every handler only notes when it ran (bench/probe.py: an append; a thread of the worker writes
the notes to Redis every 20 ms), so the transport is what is measured. Two kinds of rows:

- throughput: the producer sends N messages as fast as it can (64 sends in flight where the
  API is async; Celery's `apply_async` is synchronous, so one at a time) and the row ends when
  the last one was handled: messages/s from the first send to the last handled;
- latency: the producer sends at a fixed rate (default 500/s), and each message's time from
  just before its send to its handler (p50, p90, p99, max).

Both also report the CPU time each process used during the row per message (producer, all the
workers together, redis-server) and Redis commands per message (redis-server's own count,
including what idle workers of the other stacks poll meanwhile). Each row is measured in
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
    redis_commands: int | None = None
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

    def commands_per_message(self) -> str:
        if self.redis_commands is None or not self.messages:
            return "-"
        return f"{self.redis_commands / self.messages:.1f}"

    def joined(self, other: Row) -> Row:
        """This row and another slice of the same stack, workers and kind, as one row."""
        cpu = {name: _plus(value, other.cpu.get(name)) for name, value in self.cpu.items()}
        commands = (
            None
            if self.redis_commands is None or other.redis_commands is None
            else self.redis_commands + other.redis_commands
        )
        return Row(
            self.stack, self.workers, self.kind, self.messages + other.messages,
            self.sent_seconds + other.sent_seconds, self.seconds + other.seconds,
            sorted(self.latencies + other.latencies), cpu, commands,
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
    kind: str  # which workers serve it: "bus", "celery" or "faststream"


def worker_argv(kind: str, name: str) -> list[str]:
    """The command line of one worker process of `kind`."""
    if kind == "bus":
        return [sys.executable, "manage.py", "runworker", "sink", "--settings", SETTINGS]
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


async def stacks(url: str) -> tuple[list[Stack], Callable[[], Awaitable[None]]]:
    """The four stacks, and what closes their producers' connections."""
    from faststream.redis import RedisBroker

    from bench import celery_app, faststream_app
    from bench.sink import Sink
    from bus.client import default_bus

    broker = RedisBroker(url, logger=faststream_app.quiet_logger())
    await broker.connect()

    async def bus_durable(sent: float) -> None:
        await Sink.take.asend(sent=sent)

    async def bus_at_most_once(sent: float) -> None:
        await Sink.take_once.asend(sent=sent)

    async def celery(sent: float) -> None:
        celery_app.take.apply_async((sent,))

    async def faststream(sent: float) -> None:
        await broker.publish(sent, stream=faststream_app.TAKE_STREAM)

    async def close() -> None:
        from channels.layers import get_channel_layer

        await broker.stop()
        await default_bus.aclose()
        await get_channel_layer().close_pools()

    return [
        Stack(BUS_DURABLE, bus_durable, PRODUCER_IN_FLIGHT, "bus"),
        Stack(BUS_AT_MOST_ONCE, bus_at_most_once, PRODUCER_IN_FLIGHT, "bus"),
        Stack(CELERY, celery, 1, "celery"),
        Stack(FASTSTREAM, faststream, PRODUCER_IN_FLIGHT, "faststream"),
    ], close


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


async def send_one(stack: Stack) -> int:
    """Send one message, again after each ChannelFull; how many times it was refused."""
    import bus

    refused = 0
    while True:
        try:
            await stack.send(time.time())
            return refused
        except bus.ChannelFull:
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
        self.workers: dict[str, list[str]] = {"bus": [], "celery": [], "faststream": []}

    def commands(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    async def add_workers(self, count: int) -> None:
        """Start workers until each stack has `count`, and wait until they all serve."""
        for kind, names in self.workers.items():
            while len(names) < count:
                names.append(start_worker(self.url, kind, len(names) + 1, self.processes))
        await wait_ready(self.url, self.workers, self.processes)

    async def measure(self, stack: Stack, kind: str, total: int) -> Row:
        """Send `total` messages (flooded or paced, per `kind`) and wait until all were handled."""
        probe.reset(self.client)
        pids: dict[str, int | None] = {"producer": None, "redis": self.processes.pid("redis-server")}
        names = self.workers[stack.kind]
        pids.update({name: self.processes.pid(name) for name in names})
        gc.collect()
        before = common.cpu_snapshot(pids)
        commands_before = self.commands()
        start = time.time()
        if kind == THROUGHPUT:
            refused = await flood(stack, total)
        else:
            refused = await paced(stack, total, self.plan.rate)
        sent_seconds = time.time() - start
        count = await self.wait_handled(stack, total)
        after = common.cpu_snapshot(pids)
        # Minus 1: the INFO command that reads the count is counted too.
        commands = self.commands() - commands_before - 1
        pairs = probe.collected(self.client)
        used = common.cpu_used(before, after)
        workers_cpu: float | None = 0.0
        for name in names:
            workers_cpu = _plus(workers_cpu, used[name])
        cpu = {"producer": used["producer"], "workers": workers_cpu, "redis": used["redis"]}
        last = max(handled for _, handled in pairs)
        latencies = sorted(handled - sent for sent, handled in pairs)
        return Row(
            stack.name, len(names), kind, total, sent_seconds, last - start, latencies, cpu,
            commands, refused, count - total,
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
            for stack in all_stacks:
                await bench.measure(stack, THROUGHPUT, plan.warmup)
            for kind, total in ((THROUGHPUT, plan.throughput), (LATENCY, plan.latency)):
                for _ in range(SLICES):
                    for stack in all_stacks:
                        part = await bench.measure(stack, kind, total // SLICES)
                        key = (stack.name, count, kind)
                        rows[key] = rows[key].joined(part) if key in rows else part
                for stack in all_stacks:
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
        f"- one producer (this process) and 1 or 3 worker processes per stack on a private "
        f"redis-server ({url}); handlers only note the time; {plan.throughput:,} messages per "
        f"throughput row, {plan.latency:,} per latency row at {plan.rate:,.0f}/s, each row in "
        f"{SLICES} slices taking turns with the other stacks, after {plan.warmup} warm-up messages",
        f"- throughput: {PRODUCER_IN_FLIGHT} sends in flight (Celery's `apply_async` is synchronous: "
        "one at a time); handled/s counts from the first send to the last message handled",
        "- CPU us/msg: CPU time (user + system) each process used during the row, divided by its "
        "messages; workers: all of the stack's worker processes together",
        "",
    ]


def throughput_table(rows: Sequence[Row]) -> list[str]:
    """Messages per second, each compared with Celery's with as many workers."""
    celery = {row.workers: row for row in rows if row.stack == CELERY}
    lines = [
        "## Throughput: 1 producer, as fast as it sends",
        "",
        "| stack | workers | messages | sent/s | handled/s | vs Celery | CPU us/msg: producer / workers "
        "/ redis | Redis commands/msg | ChannelFull, sent again |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = celery.get(row.workers)
        versus = "baseline" if row.stack == CELERY else f"{row.rate / base.rate:.2f}x" if base else "-"
        lines.append(
            f"| {row.stack} | {row.workers} | {row.messages:,} | {row.sent_rate:,.0f} | "
            f"{row.rate:,.0f} | {versus} | {row.cpu_us()} | {row.commands_per_message()} | "
            f"{row.refused:,} |"
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
            f"{row.ms(99):.2f} | {row.ms(100):.2f} | {row.cpu_us()} | {row.commands_per_message()} |"
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
