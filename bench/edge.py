"""The edge under load: HTTP through daphne with a bus call, WebSockets held, broadcasts fanned out.

    .venv/bin/python bench/edge.py [--quick] [--output PATH] [--profile] [--sockets N] [--rounds N]
                                   [--app MODULE:ATTRIBUTE]

Run from the repository root. Everything runs on 127.0.0.1: a private redis-server on a free
port, ``manage.py runworker inventory`` and ``runworker presentation`` (test settings, their own
migrated SQLite files), and three daphne processes serving ``bench/edge_app.py`` (the project's
routes plus bench-only endpoints): one for HTTP, one holding the project's ``/ws/`` sockets, one
holding the baseline's plain Channels sockets, so each memory figure comes from a fresh process.
Each figure is printed next to its baseline measured in the same run:

1. HTTP requests/s with 50 connections (``wrk``, or a small keep-alive asyncio client when wrk is
   missing): ``/bench/bus`` (one uncached ``bus.acall("inventory.stock")`` per request) against
   ``/bench/plain`` (an ``AsyncHttpConsumer`` answering ``{"ok": true}``), same daphne.
2. daphne's RSS (VmRSS) per open ``/ws/`` socket (resumed, so in the "stock" group), against the
   same number of plain Channels consumers in one group of the stock channels-redis layer.
3. Broadcast to every socket, per socket from just before the trigger to the frame's arrival:
   end to end (``inventory.restock`` -> outbox -> relay, every 0.5 s -> presentation worker ->
   group_send -> sockets), and the fan-out leg alone (``group_send`` of a "log.event" straight
   to the stock topic's group), against the stock layer's ``group_send`` to the plain consumers;
   with the CPU per frame of the daphne and of this client over the measured rounds, to show
   that the client is not the limit. ``--sockets 5000`` (about 100 s in all) measures at scale.

``--profile`` then records with py-spy, after the measured rows: daphne holding the ``/ws/``
sockets while fan-outs run back to back, and daphne with the inventory worker while
``/bench/bus`` is under load; it prints where their time goes and keeps the collapsed stacks
(speedscope and flamegraph.pl open them) next to ``--profile-output``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402  (the repository root must be on sys.path first)

APP = "bench.edge_app:application"
SKU = "BENCH-1"
CONNECTIONS = 50  # HTTP connections, as in CHANNELS-FACTS' daphne figures
#: The workers the bench runs: echo answers /bench/echo, inventory /bench/bus, presentation logs.
DOMAINS = ("echo", "inventory", "presentation")
#: Broadcast rounds not measured before each kind: the first rounds after 1,000 sockets opened
#: pay one-off costs (daphne's collector going through the new connections' objects).
WARM_UP_ROUNDS = 3
OPEN_AT_ONCE = 50  # WebSocket handshakes in flight while opening (daphne's listen backlog is 50)
FANOUT_OFFSET = 1_000_000_000  # cursors of bench fan-outs: above anything the event log reaches
READY_TIMEOUT = 60.0
ROUND_TIMEOUT = 15.0  # seconds a broadcast round waits for every socket
GOAL_HTTP_RATIO = 0.6
GOAL_FANOUT_P99_MS = 250.0
GOAL_FANOUT_P99_RATIO = 0.3  # of the stock layer's p99 with plain consumers, same run
GOAL_MEMORY_RATIO = 1.1  # daphne RSS per /ws/ socket over a plain consumer's, same run
QUOTED_FANOUT = "~420-440 ms until all 1,000 arrived"  # CHANNELS-FACTS, stock layer, 1,000 sockets


@dataclass(frozen=True)
class Plan:
    """How long and how much each part measures."""

    seconds: float  # per HTTP row
    warmup: float  # per HTTP endpoint, before its row
    sockets: int
    rounds: int  # broadcast rounds of each kind
    profile_seconds: float


def plan_for(arguments: argparse.Namespace) -> Plan:
    """Sizes from --quick, --sockets and --rounds."""
    quick = arguments.quick
    return Plan(
        seconds=3.0 if quick else 10.0,
        warmup=1.0 if quick else 2.0,
        sockets=arguments.sockets or (200 if quick else 1000),
        rounds=arguments.rounds or (3 if quick else 10),
        profile_seconds=5.0 if quick else 10.0,
    )


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The child processes of the run and how to reach them."""

    processes: common.Processes
    url: str
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # daphne name -> port

    def pid(self, name: str) -> int:
        """Process id of the child `name`."""
        return self.processes.pid(name)

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The child `name`."""
        return next(process for started, process in self.processes.started if started == name)

    def check(self, name: str) -> None:
        """Raise with its output if the child `name` has exited."""
        process = self.process(name)
        if process.poll() is not None:
            raise common.BenchmarkError(
                f"{name} exited with {process.returncode}:\n{self.processes.output(name)}"
            )


def child_env(url: str, data_dir: Path) -> dict[str, str]:
    """Environment of every child: test settings, our Redis, its own SQLite files, DEBUG off.

    As `process_env()` in tests/conftest.py, plus DEBUG off (as in production) and a secret key.
    """
    env = {name: value for name, value in os.environ.items() if not name.endswith("DATABASE_URL")}
    env.pop("REDIS_URL", None)
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": common.SETTINGS,
        "DJANGO_DATA_DIR": str(data_dir),
        "BUS_TEST_REDIS_URL": url,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_hex(32),
        "PYTHONUNBUFFERED": "1",
    }


def manage(env: dict[str, str], *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `manage.py ARGUMENTS` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_stack(processes: common.Processes, app: str = APP) -> Cluster:
    """Redis, migrated databases, the two workers and the three daphne processes."""
    url = common.start_redis(processes)
    data_dir = processes.directory / "data"
    data_dir.mkdir()
    env = child_env(url, data_dir)
    common.progress("migrating the databases")
    migrated = manage(env, "migrate_all", "-v0")
    if migrated.returncode != 0:
        raise common.BenchmarkError(f"migrate_all failed:\n{migrated.stdout}{migrated.stderr}")
    stack = Cluster(processes, url, env)
    for domain in DOMAINS:
        argv = [sys.executable, "manage.py", "runworker", domain, "--settings", common.SETTINGS]
        processes.start(f"worker-{domain}", argv, env)
    daphne = str(Path(sys.executable).parent / "daphne")
    if not Path(daphne).exists():
        daphne = shutil.which("daphne") or "daphne"
    for name in ("daphne-http", "daphne-ws", "daphne-raw"):
        port = stack.ports[name] = common.free_port()
        processes.start(name, [daphne, "-b", "127.0.0.1", "-p", str(port), app], env)
    return stack


async def wait_for_presence(stack: Cluster, domain: str) -> None:
    """Wait until the worker of `domain` beats its heartbeat."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    deadline = time.monotonic() + READY_TIMEOUT
    while not await layer.presence(domain):
        stack.check(f"worker-{domain}")
        if time.monotonic() > deadline:
            raise common.BenchmarkError(f"runworker {domain} did not beat within {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)


async def wait_for_http(stack: Cluster, name: str) -> None:
    """Wait until the daphne `name` answers /bench/plain."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        stack.check(name)
        try:
            status, _ = await http_get(stack.ports[name], "/bench/plain")
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise common.BenchmarkError(f"{name} did not answer within {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(read_body(reader, head), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), body


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body that follows `head`: by Content-Length, or chunk by chunk when it is chunked."""
    if re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)  # the CRLF after each chunk
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the blank line
            pass
        return b"".join(chunks)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return await reader.readexactly(int(length.group(1)) if length else 0)


def seed(stack: Cluster) -> None:
    """Add the product (`manage.py bus call`) and some stock; retried while no worker answers."""
    calls = [
        ("inventory.add_product", {"sku": SKU, "name": "Bench anvil", "price_cents": 1000}),
        ("inventory.restock", {"sku": SKU, "quantity": 1000}),
    ]
    for target, arguments in calls:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            done = manage(stack.env, "bus", "call", target, json.dumps(arguments))
            if done.returncode == 0:
                break
            if done.returncode != 7 or time.monotonic() > deadline:  # 7: unavailable (no worker yet)
                output = f"{done.stdout}{done.stderr}"
                raise common.BenchmarkError(f"bus call {target} exited {done.returncode}:\n{output}")
            time.sleep(0.3)


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise common.BenchmarkError(f"no VmRSS for process {pid}")


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --------------------------------------------------------------------------------------------
# 1. HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class HttpRow:
    """One load run against one endpoint."""

    name: str
    tool: str
    seconds: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int  # socket errors and timeouts
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def cpu_us(self, name: str) -> str:
        """CPU microseconds per request of the process `name`."""
        value = self.cpu.get(name)
        return "-" if value is None or not self.requests else f"{value * 1e6 / self.requests:,.0f}"


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise common.BenchmarkError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def parse_wrk(name: str, output: str) -> HttpRow:
    """A row from `wrk --latency` output."""

    def find(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, output)
        if match is None:
            if default is None:
                raise common.BenchmarkError(f"cannot read wrk output ({pattern}):\n{output}")
            return default
        return match.group(1)

    requests = int(find(r"(\d+) requests in"))
    seconds = _wrk_ms(find(r"requests in ([\d.]+\w+),")) / 1000
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return HttpRow(
        name,
        "wrk",
        seconds,
        requests,
        _wrk_ms(find(r"\n\s+50%\s+(\S+)")),
        _wrk_ms(find(r"\n\s+99%\s+(\S+)")),
        int(find(r"Non-2xx or 3xx responses: (\d+)", "0")),
        errors,
    )


async def run_wrk(name: str, port: int, path: str, seconds: float) -> HttpRow:
    """`wrk` with CONNECTIONS connections on one thread (the other core is daphne's) for `seconds`."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        f"http://127.0.0.1:{port}{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    if process.returncode != 0:
        raise common.BenchmarkError(f"wrk exited {process.returncode}:\n{output.decode(errors='replace')}")
    return parse_wrk(name, output.decode(errors="replace"))


async def run_client(name: str, port: int, path: str, seconds: float) -> HttpRow:
    """The fallback load generator: CONNECTIONS keep-alive connections, GET after GET."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    statuses: dict[int, int] = defaultdict(int)
    errors = 0
    stop = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                await asyncio.wait_for(read_body(reader, head), 5)
                latencies.append(time.perf_counter() - start)
                statuses[int(head.split(b" ", 2)[1])] += 1
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    non_2xx = sum(count for status, count in statuses.items() if not 200 <= status < 300)
    p50, p99 = common.percentile(latencies, 50) * 1000, common.percentile(latencies, 99) * 1000
    return HttpRow(name, "asyncio client", elapsed, len(latencies), p50, p99, non_2xx, errors)


async def measure_http(stack: Cluster, plan: Plan) -> list[HttpRow]:
    """The plain endpoint, then each bus endpoint, each after a warm-up, on daphne-http."""
    load = run_wrk if shutil.which("wrk") else run_client
    port = stack.ports["daphne-http"]
    rows = []
    endpoints = (
        ("plain", "/bench/plain", None),
        ("echo", "/bench/echo", "worker-echo"),
        ("stock", f"/bench/bus?sku={SKU}", "worker-inventory"),
    )
    for name, path, worker in endpoints:
        pids = {"daphne": stack.pid("daphne-http"), "redis": stack.pid("redis-server")}
        if worker is not None:
            pids["worker"] = stack.pid(worker)
        await load(name, port, path, plan.warmup)
        before = common.cpu_snapshot(pids)
        row = await load(name, port, path, plan.seconds)
        row.cpu = common.cpu_used(before, common.cpu_snapshot(pids))
        common.progress(
            f"HTTP {name:<5}: {row.rate:,.0f} requests/s, p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms, "
            f"{row.non_2xx} non-2xx, {row.errors} socket errors ({row.tool})"
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# 2 and 3. WebSockets
# --------------------------------------------------------------------------------------------


def event_key(frame: dict[str, Any]) -> str:
    """What identifies one broadcast among the events a socket receives."""
    data = frame.get("data") or {}
    if frame.get("kind") == "inventory.stock_changed":
        return f"stock:{data.get('on_hand')}"
    return f"{frame.get('kind')}:{data.get('round')}"


class Fleet:
    """N WebSocket clients in this process, each reading its frames in a task of its own.

    Every event frame's arrival (perf_counter, before parsing) is recorded under its
    `event_key`; pings are answered with a pong. Nothing is acknowledged while a round is
    measured (an ack is a frame to daphne in the middle of the fan-out); `acknowledge()` acks
    between rounds so no socket reaches the server's unacknowledged-events limit.
    """

    def __init__(self, name: str, uri: str, origin: str, resume: bool) -> None:
        self.name = name
        self.uri = uri
        self.origin = origin
        self.resume = resume
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.last_cursor: dict[int, str] = {}
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.complete: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.closed: list[int | None] = []  # close codes of sockets that ended while measured

    @property
    def size(self) -> int:
        """Sockets open."""
        return len(self.sockets) - len(self.closed)

    async def open(self, count: int) -> None:
        """Open `count` sockets, OPEN_AT_ONCE handshakes at a time; resumed ones have said hello."""
        from websockets.asyncio.client import connect
        from websockets.typing import Origin

        gate = asyncio.Semaphore(OPEN_AT_ONCE)

        async def one() -> Any:
            async with gate:
                socket = await connect(
                    self.uri,
                    origin=Origin(self.origin),
                    compression=None,
                    ping_interval=None,  # daphne pings us; the library answers
                    open_timeout=30,
                    close_timeout=5,
                    max_queue=None,
                )
                if self.resume:
                    await socket.send(json.dumps({"type": "resume", "cursor": None}))
                    hello = json.loads(await asyncio.wait_for(socket.recv(), 30))
                    if hello.get("type") != "hello":
                        raise common.BenchmarkError(f"expected hello, got {hello!r}")
                return socket

        opened = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        failures = [result for result in opened if isinstance(result, BaseException)]
        for result in opened:
            if not isinstance(result, BaseException):
                index = len(self.sockets)
                self.sockets.append(result)
                self.readers.append(asyncio.create_task(self._read(index, result)))
        if failures:
            raise common.BenchmarkError(
                f"{self.name}: {len(failures)} of {count} sockets failed to open: {failures[0]!r}"
            )

    async def _read(self, index: int, socket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in socket:
                now = time.perf_counter()
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "event":
                    key = event_key(frame)
                    arrived = self.arrivals[key]
                    arrived.append(now)
                    self.last_cursor[index] = frame["cursor"]
                    if len(arrived) >= self.size:
                        self.complete[key].set()
                elif kind == "ping":
                    await socket.send('{"type": "pong"}')
        except ConnectionClosed:
            pass
        finally:
            self.closed.append(socket.close_code)
            for key, arrived in self.arrivals.items():
                if len(arrived) >= self.size:
                    self.complete[key].set()

    async def wait(self, key: str, timeout: float = ROUND_TIMEOUT) -> list[float]:
        """Arrival times of `key` once every open socket has it, or whatever came within `timeout`."""
        with contextlib.suppress(TimeoutError):
            if len(self.arrivals[key]) < self.size:
                await asyncio.wait_for(self.complete[key].wait(), timeout)
        return list(self.arrivals[key])

    async def acknowledge(self) -> None:
        """Ack every socket's last event (the protocol's backlog bound); resumed sockets only."""
        if not self.resume:
            return
        sends = [
            self.sockets[index].send(json.dumps({"type": "ack", "cursor": cursor}))
            for index, cursor in self.last_cursor.items()
        ]
        await asyncio.gather(*sends, return_exceptions=True)
        await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Close every socket and stop the readers."""
        await asyncio.gather(*(socket.close() for socket in self.sockets), return_exceptions=True)
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


@dataclass
class Broadcast:
    """Rounds of one kind of broadcast: every socket's latency, and how many never arrived."""

    name: str
    sockets: int
    latencies: list[float] = field(default_factory=list)  # seconds, every socket of every round
    last: list[float] = field(default_factory=list)  # per round: until the last socket had it
    first: list[float] = field(default_factory=list)  # per round: until the first socket had it
    missing: int = 0
    send_ms: list[float] = field(default_factory=list)  # per round: the trigger call itself
    #: CPU seconds of "daphne" and "client" (this process) over the measured rounds, pauses included.
    cpu: dict[str, float | None] = field(default_factory=dict)

    def add(self, start: float, arrivals: Sequence[float], sockets: int) -> None:
        """Record one round triggered at `start` (perf_counter)."""
        latencies = sorted(arrival - start for arrival in arrivals)
        self.latencies.extend(latencies)
        self.missing += max(0, sockets - len(latencies))
        if latencies:
            self.first.append(latencies[0])
            self.last.append(latencies[-1])

    def ms(self, percent: float) -> float:
        """Percentile of every socket's latency, in milliseconds."""
        return common.percentile(sorted(self.latencies), percent) * 1000

    def median_ms(self, values: Sequence[float]) -> float:
        """Median of per-round values, in milliseconds."""
        return common.percentile(sorted(values), 50) * 1000

    @property
    def rounds(self) -> int:
        """Rounds that reached at least one socket."""
        return len(self.last)

    def cpu_us(self, name: str) -> float:
        """CPU microseconds of the process `name` per frame that arrived."""
        used = self.cpu.get(name)
        return math.nan if used is None or not self.latencies else used * 1e6 / len(self.latencies)

    def client_busy(self) -> float:
        """This client's CPU over the time the rounds took, trigger to last arrival: at 1.0 it would
        be what limits the figures (an upper bound: the pauses between rounds add to its CPU only)."""
        used = self.cpu.get("client")
        return math.nan if used is None or not self.last else used / sum(self.last)


def fanout_message(offset: int, kind: str = "bench.fanout") -> dict[str, Any]:
    """A group message as the presentation worker sends it (`Entry.as_message()` + "log.event")."""
    from consumers import events

    return {
        "type": "log.event",
        "cursor": f"bench:{offset}",
        "topic": events.STOCK,
        "kind": kind,
        "data": {"round": offset},
    }


class Offsets:
    """Increasing fan-out offsets: a socket drops an event whose offset it has seen."""

    def __init__(self) -> None:
        self.next = FANOUT_OFFSET

    def take(self) -> int:
        """The next offset."""
        self.next += 1
        return self.next


async def fan_out(
    fleet: Fleet, send: Callable[[dict[str, Any]], Awaitable[None]], offset: int, result: Broadcast | None
) -> None:
    """One fan-out round: `send` a group message, wait for every socket; record it in `result`."""
    message = fanout_message(offset)
    start = time.perf_counter()
    await send(message)
    sent = time.perf_counter()
    arrivals = await fleet.wait(event_key(message))
    if result is not None:
        result.add(start, arrivals, fleet.size)
        result.send_ms.append((sent - start) * 1000)


async def fan_out_rounds(
    name: str,
    fleet: Fleet,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    offsets: Offsets,
    rounds: int,
    daphne: int,
) -> Broadcast:
    """WARM_UP_ROUNDS rounds, then `rounds` measured ones with a short random pause between; the
    CPU of this client and of the `daphne` process over the measured ones."""
    result = Broadcast(name, fleet.size)
    for _ in range(WARM_UP_ROUNDS):
        await fan_out(fleet, send, offsets.take(), None)
    pids = {"daphne": daphne, "client": None}
    before = common.cpu_snapshot(pids)
    for _ in range(rounds):
        await asyncio.sleep(random.uniform(0.2, 0.4))
        await fan_out(fleet, send, offsets.take(), result)
    result.cpu = common.cpu_used(before, common.cpu_snapshot(pids))
    await fleet.acknowledge()
    report_broadcast(result)
    return result


async def restock_rounds(fleet: Fleet, rounds: int) -> Broadcast:
    """End to end: inventory.restock, then wait for its stock_changed at every socket."""
    import bus

    result = Broadcast("end to end", fleet.size)
    for round_number in range(-WARM_UP_ROUNDS, rounds):  # negative: warming the path up
        await asyncio.sleep(random.uniform(0.1, 0.6))  # out of phase with the relay's 0.5 s poll
        start = time.perf_counter()
        stock = await bus.acall("inventory.restock", sku=SKU, quantity=1)
        called = time.perf_counter()
        arrivals = await fleet.wait(f"stock:{stock['on_hand']}")
        if round_number >= 0:
            result.add(start, arrivals, fleet.size)
            result.send_ms.append((called - start) * 1000)
    await fleet.acknowledge()
    report_broadcast(result)
    return result


def report_broadcast(result: Broadcast) -> None:
    """A progress line for a set of rounds."""
    cpu = (
        f"; CPU us/frame daphne {result.cpu_us('daphne'):.0f}, client {result.cpu_us('client'):.0f} "
        f"(client busy {100 * result.client_busy():.0f}% of the rounds)"
        if result.cpu
        else ""
    )
    common.progress(
        f"{result.name:<22} {result.sockets:,} sockets: "
        f"p50 {result.ms(50):.1f} ms, p99 {result.ms(99):.1f} ms, "
        f"all arrived (median round) {result.median_ms(result.last):.1f} ms, {result.missing} missing{cpu}"
    )


@dataclass
class SocketResults:
    """Everything measured on one daphne's sockets."""

    rss_before_kb: int
    rss_after_kb: int
    sockets: int
    broadcasts: list[Broadcast]
    closed: int = 0

    @property
    def kb_per_socket(self) -> float:
        """RSS growth per open socket, KiB."""
        return (self.rss_after_kb - self.rss_before_kb) / self.sockets if self.sockets else 0.0


async def open_measured(stack: Cluster, name: str, fleet: Fleet, count: int) -> tuple[int, int]:
    """Warm daphne `name` with a few sockets, then open `count`: RSS before and after, KiB."""
    pid = stack.pid(name)
    warm = Fleet(f"{fleet.name} warm-up", fleet.uri, fleet.origin, fleet.resume)
    await warm.open(10)
    await warm.close()
    await asyncio.sleep(1.0)
    before = rss_kb(pid)
    started = time.perf_counter()
    await fleet.open(count)
    common.progress(f"{fleet.name}: {count:,} sockets open in {time.perf_counter() - started:.1f} s")
    await asyncio.sleep(1.0)
    after = rss_kb(pid)
    common.progress(
        f"{name} RSS {before:,} KiB -> {after:,} KiB: {(after - before) / count:.1f} KiB per socket"
    )
    # The load generator's own heap (thousands of clients) must not stall arrivals with a full
    # collection in the middle of a round: keep it out of the collector from here on.
    gc.collect()
    gc.freeze()
    return before, after


async def measure_ws(stack: Cluster, plan: Plan, profile: Path | None) -> tuple[SocketResults, list[str]]:
    """The project's /ws/ sockets on daphne-ws: memory, end-to-end and fan-out broadcasts."""
    from channels.layers import get_channel_layer

    from consumers import events

    port = stack.ports["daphne-ws"]
    fleet = Fleet("/ws/", f"ws://127.0.0.1:{port}/ws/", f"http://127.0.0.1:{port}", resume=True)
    layer = get_channel_layer()
    group = events.group_for(events.STOCK)

    async def send(message: dict[str, Any]) -> None:
        await layer.group_send(group, message)

    try:
        before, after = await open_measured(stack, "daphne-ws", fleet, plan.sockets)
        offsets = Offsets()
        end_to_end = await restock_rounds(fleet, plan.rounds)
        fanout = await fan_out_rounds(
            "fan-out leg", fleet, send, offsets, plan.rounds, stack.pid("daphne-ws")
        )
        profile_lines: list[str] = []
        if profile is not None:
            profile_lines = await profile_fanout(stack, fleet, send, offsets, plan, profile)
        closed = len(fleet.closed)
    finally:
        await fleet.close()
    results = SocketResults(before, after, plan.sockets, [end_to_end, fanout], closed)
    return results, profile_lines


async def measure_raw(stack: Cluster, plan: Plan) -> SocketResults:
    """The baseline on daphne-raw: plain Channels consumers in one group of the stock layer."""
    from channels_redis.core import RedisChannelLayer

    port = stack.ports["daphne-raw"]
    fleet = Fleet("raw", f"ws://127.0.0.1:{port}/bench/raw/", f"http://127.0.0.1:{port}", resume=False)
    layer = RedisChannelLayer(hosts=[common.raw_host(stack.url)], prefix=common.RAW_PREFIX)  # as daphne-raw's

    async def send(message: dict[str, Any]) -> None:
        await layer.group_send(common.RAW_GROUP, message)

    try:
        before, after = await open_measured(stack, "daphne-raw", fleet, plan.sockets)
        fanout = await fan_out_rounds(
            "raw group_send", fleet, send, Offsets(), plan.rounds, stack.pid("daphne-raw")
        )
        closed = len(fleet.closed)
    finally:
        await fleet.close()
        await layer.close_pools()
    return SocketResults(before, after, plan.sockets, [fanout], closed)


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def py_spy(pids: dict[str, int], directory: Path) -> AsyncIterator[dict[str, Path]]:
    """Record each named process with py-spy while the block runs: name -> collapsed stacks file."""
    executable = common.py_spy_executable()
    if executable is None:
        raise common.BenchmarkError("py-spy is not installed (`.venv/bin/pip install py-spy`)")
    outputs = {name: directory / f"{name}-py-spy.txt" for name in pids}
    spies = []
    for name, pid in pids.items():
        argv = ["record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--full-filenames"]
        spy = await asyncio.create_subprocess_exec(
            executable,
            *argv,
            "--nonblocking",
            "--output",
            str(outputs[name]),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        spies.append(spy)
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                await asyncio.wait_for(spy.wait(), 30)
            except TimeoutError:
                spy.kill()
                await spy.wait()


def profile_section(title: str, raw: Path, keep: Path | None, top: int = 20) -> list[str]:
    """A py-spy summary as report lines; the collapsed stacks copied to `keep`."""
    if not raw.exists():
        return [f"### {title}", "", "Not profiled: py-spy wrote nothing (ptrace not permitted?).", ""]
    lines = []
    if keep is not None:
        shutil.copyfile(raw, keep)
        lines = [f"Collapsed stacks: `{keep}`.", ""]
    return [
        *lines,
        *common.summarize(
            title,
            common.py_spy_stacks(raw),
            "samples",
            common.area,
            top=top,
            inclusive_of=("bus/", "consumers/", "channels/", "channels_redis/", "daphne/", "workers/"),
            inclusive_title="project, channels and daphne functions",
        ),
    ]


def keep_path(output: Path, name: str) -> Path:
    """Where --profile-output keeps the collapsed stacks of `name`."""
    return output.with_name(f"{output.stem}-{name}{output.suffix}")


async def profile_fanout(
    stack: Cluster,
    fleet: Fleet,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    offsets: Offsets,
    plan: Plan,
    output: Path,
) -> list[str]:
    """py-spy on daphne-ws while fan-outs run back to back; the summary as report lines."""
    profiled = Broadcast("fan-out under py-spy", fleet.size)
    pids = {"daphne-ws": stack.pid("daphne-ws")}
    async with py_spy(pids, stack.processes.directory) as outputs:
        deadline = time.monotonic() + plan.profile_seconds
        while time.monotonic() < deadline:
            await fan_out(fleet, send, offsets.take(), profiled)
            if profiled.rounds % 50 == 0:
                await fleet.acknowledge()
    await fleet.acknowledge()
    report_broadcast(profiled)
    title = (
        f"daphne holding {fleet.size:,} /ws/ sockets, {profiled.rounds} fan-outs back to back "
        f"(under py-spy: p50 {profiled.ms(50):.0f} ms, "
        f"all arrived {profiled.median_ms(profiled.last):.0f} ms)"
    )
    return [
        "## Profile: where daphne's time goes during a fan-out (py-spy, CPU samples of all threads)",
        "",
        *profile_section(title, outputs["daphne-ws"], keep_path(output, "fanout")),
    ]


async def profile_http(stack: Cluster, plan: Plan, output: Path) -> list[str]:
    """py-spy on daphne-http and the inventory worker while `/bench/bus` is under load."""
    load = run_wrk if shutil.which("wrk") else run_client
    pids = {"daphne-http": stack.pid("daphne-http"), "worker-inventory": stack.pid("worker-inventory")}
    async with py_spy(pids, stack.processes.directory) as outputs:
        row = await load("bus", stack.ports["daphne-http"], f"/bench/bus?sku={SKU}", plan.profile_seconds)
    common.progress(f"HTTP bus under py-spy: {row.rate:,.0f} requests/s")
    lines = [
        "## Profile: `/bench/bus` under load (py-spy, CPU samples of all threads)",
        "",
        f"{row.rate:,.0f} requests/s under the profiler.",
        "",
    ]
    for name, title in (("daphne-http", "daphne"), ("worker-inventory", "runworker inventory")):
        lines += profile_section(title, outputs[name], keep_path(output, name), top=15)
    return lines


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def header(stack: Cluster, plan: Plan, http_tool: str, open_files: int, app: str) -> list[str]:
    """The report's title and setup lines."""
    return [
        *common.report_header(
            "The edge: HTTP with a bus call, WebSockets held, broadcasts fanned out",
            common.versions(stack.url, ("daphne", "twisted", "autobahn", "websockets")),
        ),
        f"- open files limit {open_files:,}",
        f"- everything on 127.0.0.1: private redis-server ({stack.url}), `runworker inventory`, "
        f"`runworker presentation`, three daphne processes serving `{app}` (HTTP; /ws/; "
        "the raw baseline), settings tests.settings with DEBUG off, SQLite",
        f"- HTTP: {http_tool}, {CONNECTIONS} connections, {plan.seconds:.0f} s per endpoint after "
        f"{plan.warmup:.0f} s of warm-up; CPU us/request: daphne / the worker the row calls / redis-server",
        f"- WebSockets: {plan.sockets:,} clients (`websockets` library, asyncio, in this process, "
        f"{OPEN_AT_ONCE} handshakes at a time); latency per socket from just before the trigger to "
        "the frame's arrival at the client, so it includes this client's own CPU on the same 2 cores; "
        f"{plan.rounds} measured rounds of each kind after {WARM_UP_ROUNDS} warm-up rounds; this "
        "process's collector is frozen once each fleet's sockets are open",
        "",
    ]


def _met(met: bool) -> str:
    return "met" if met else "not met"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


Cells = tuple[str, str, str, str, str]  # what, measured, baseline, ratio, goal or note


def table(http: Sequence[HttpRow], ws: SocketResults, raw: SocketResults, plan: Plan) -> list[str]:
    """The Markdown table: each figure, its same-run baseline, the ratio and the goal."""
    rows = [*http_rows(http), *socket_rows(ws, raw, plan)]
    lines = ["| what | measured | baseline (same run) | ratio | goal / note |", "|---|---:|---:|---:|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return lines


def http_rows(http: Sequence[HttpRow]) -> list[Cells]:
    """Requests/s of the bus endpoints against the plain one, then each one's latency, errors, CPU."""
    plain, echo, stock = http
    http_ratio = echo.rate / plain.rate if plain.rate else 0.0
    http_goal = f">= {GOAL_HTTP_RATIO}x: **{'met' if http_ratio >= GOAL_HTTP_RATIO else 'not met'}**"
    rows: list[Cells] = [
        (
            "HTTP requests/s: `/bench/echo` (1 bus call, `echo.add`) vs `/bench/plain` (none)",
            f"{echo.rate:,.0f}",
            f"{plain.rate:,.0f}",
            _ratio(echo.rate, plain.rate),
            http_goal,
        ),
        (
            "HTTP requests/s: `/bench/bus` (1 bus call, `inventory.stock`: an ORM read) vs `/bench/plain`",
            f"{stock.rate:,.0f}",
            f"{plain.rate:,.0f}",
            _ratio(stock.rate, plain.rate),
            "the read costs the worker more than the bus does",
        ),
    ]
    for busy in (echo, stock):
        rows += [
            (
                f"`{busy.name}` HTTP latency p50 / p99 ms",
                f"{busy.p50_ms:.1f} / {busy.p99_ms:.1f}",
                f"{plain.p50_ms:.1f} / {plain.p99_ms:.1f}",
                f"{_ratio(busy.p50_ms, plain.p50_ms)} / {_ratio(busy.p99_ms, plain.p99_ms)}",
                "",
            ),
            (
                f"`{busy.name}` HTTP requests / non-2xx / socket errors",
                f"{busy.requests:,} / {busy.non_2xx} / {busy.errors}",
                f"{plain.requests:,} / {plain.non_2xx} / {plain.errors}",
                "",
                "",
            ),
            (
                f"`{busy.name}` HTTP CPU us/request: daphne / worker / redis",
                f"{busy.cpu_us('daphne')} / {busy.cpu_us('worker')} / {busy.cpu_us('redis')}",
                f"{plain.cpu_us('daphne')} / - / -",
                "",
                "",
            ),
        ]
    return rows


def socket_rows(ws: SocketResults, raw: SocketResults, plan: Plan) -> list[Cells]:
    """Memory per socket, then the fan-out leg and the end-to-end path against the stock layer."""
    n = plan.sockets
    memory_ratio = ws.kb_per_socket / raw.kb_per_socket if raw.kb_per_socket else math.inf
    return [
        (
            f"daphne RSS per open WebSocket, KiB ({n:,}: `/ws/` resumed vs plain consumer in a group)",
            f"{ws.kb_per_socket:.1f}",
            f"{raw.kb_per_socket:.1f}",
            _ratio(ws.kb_per_socket, raw.kb_per_socket),
            f"<= {GOAL_MEMORY_RATIO}x: **{_met(memory_ratio <= GOAL_MEMORY_RATIO)}**; "
            "CHANNELS-FACTS: 31-34 KB idle",
        ),
        (
            f"daphne RSS before -> after {n:,} sockets, MiB",
            f"{ws.rss_before_kb / 1024:.1f} -> {ws.rss_after_kb / 1024:.1f}",
            f"{raw.rss_before_kb / 1024:.1f} -> {raw.rss_after_kb / 1024:.1f}",
            "",
            "",
        ),
        *fanout_rows(ws, raw, plan),
    ]


def fanout_rows(ws: SocketResults, raw: SocketResults, plan: Plan) -> list[Cells]:
    """The broadcast figures: the fan-out leg alone, and restock -> outbox -> sockets."""
    end_to_end, fanout = ws.broadcasts
    (raw_fanout,) = raw.broadcasts
    n = plan.sockets
    p99 = fanout.ms(99)
    fanout_goal = (
        f"<= {GOAL_FANOUT_P99_RATIO}x: **{_met(p99 <= GOAL_FANOUT_P99_RATIO * raw_fanout.ms(99))}**; "
        f"<= {GOAL_FANOUT_P99_MS:.0f} ms: **{_met(p99 <= GOAL_FANOUT_P99_MS)}**"
    )
    quoted = f"quoted, not measured: {QUOTED_FANOUT}" if n == 1000 else "-"
    return [
        (
            f"fan-out leg: group_send -> {n:,} `/ws/` sockets vs stock layer -> plain consumers, p50 ms",
            f"{fanout.ms(50):.1f}",
            f"{raw_fanout.ms(50):.1f}",
            _ratio(fanout.ms(50), raw_fanout.ms(50)),
            "",
        ),
        (
            "fan-out leg p99 ms",
            f"{p99:.1f}",
            f"{raw_fanout.ms(99):.1f}",
            _ratio(p99, raw_fanout.ms(99)),
            fanout_goal,
        ),
        (
            "fan-out leg: until the first / every socket had it, median of rounds, ms",
            f"{fanout.median_ms(fanout.first):.1f} / {fanout.median_ms(fanout.last):.1f}",
            f"{raw_fanout.median_ms(raw_fanout.first):.1f} / {raw_fanout.median_ms(raw_fanout.last):.1f}",
            f"{_ratio(fanout.median_ms(fanout.first), raw_fanout.median_ms(raw_fanout.first))} / "
            f"{_ratio(fanout.median_ms(fanout.last), raw_fanout.median_ms(raw_fanout.last))}",
            quoted,
        ),
        (
            "fan-out leg CPU us per frame: daphne / this client (client busy, share of the rounds' time)",
            f"{fanout.cpu_us('daphne'):.0f} / {fanout.cpu_us('client'):.0f} "
            f"({100 * fanout.client_busy():.0f}%)",
            f"{raw_fanout.cpu_us('daphne'):.0f} / {raw_fanout.cpu_us('client'):.0f} "
            f"({100 * raw_fanout.client_busy():.0f}%)",
            _ratio(fanout.cpu_us("daphne"), raw_fanout.cpu_us("daphne")),
            "the client is not the limit while it is busy less than the rounds last",
        ),
        (
            "fan-out leg: the group_send call itself, median ms",
            f"{fanout.median_ms([ms / 1000 for ms in fanout.send_ms]):.1f}",
            f"{raw_fanout.median_ms([ms / 1000 for ms in raw_fanout.send_ms]):.1f}",
            "",
            "",
        ),
        (
            "end to end: `inventory.restock` -> outbox -> relay -> presentation -> sockets, p50 / p99 ms",
            f"{end_to_end.ms(50):.1f} / {end_to_end.ms(99):.1f}",
            f"fan-out leg: {fanout.ms(50):.1f} / {p99:.1f}",
            f"{_ratio(end_to_end.ms(50), fanout.ms(50))} / {_ratio(end_to_end.ms(99), p99)}",
            "the relay runs on commit",
        ),
        (
            "end to end: first socket / every socket, median of rounds, ms",
            f"{end_to_end.median_ms(end_to_end.first):.1f} / {end_to_end.median_ms(end_to_end.last):.1f}",
            "",
            "",
            "",
        ),
        (
            "frames missing (of sockets x rounds) / sockets closed by the server",
            f"{end_to_end.missing + fanout.missing} of {2 * n * plan.rounds:,} / {ws.closed}",
            f"{raw_fanout.missing} of {n * plan.rounds:,} / {raw.closed}",
            "",
            "",
        ),
    ]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per HTTP row, 200 sockets, 3 rounds")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--sockets", type=int, default=None, help="WebSockets to open (default 1000)")
    parser.add_argument("--rounds", type=int, default=None, help="broadcast rounds of each kind (default 10)")
    parser.add_argument(
        "--app", default=APP, help=f"the ASGI app daphne serves, to try a variant (default {APP})"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then py-spy daphne during fan-outs, and the bus endpoint"
    )
    parser.add_argument(
        "--profile-output",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edge-py-spy.txt",
        help="--profile keeps py-spy's collapsed stacks as PATH's stem-NAME.txt",
    )
    arguments = parser.parse_args(argv)
    for name in ("sockets", "rounds"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return arguments


Measured = tuple[list["HttpRow"], "SocketResults", "SocketResults", list[str]]


async def run(stack: Cluster, plan: Plan, profile: Path | None) -> Measured:
    """Every measurement, in order; the bench's own bus connections are closed at the end."""
    from channels.layers import get_channel_layer

    from bus.client import default_bus

    try:
        for domain in DOMAINS:
            await wait_for_presence(stack, domain)
        await asyncio.to_thread(seed, stack)
        for name in ("daphne-http", "daphne-ws", "daphne-raw"):
            await wait_for_http(stack, name)
        http = await measure_http(stack, plan)
        ws, profile_lines = await measure_ws(stack, plan, profile)
        raw = await measure_raw(stack, plan)
        if profile is not None:
            profile_lines += await profile_http(stack, plan, profile)
    finally:
        await default_bus.aclose()
        await get_channel_layer().close_pools()
    return http, ws, raw, profile_lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; every child process is stopped before it returns."""
    arguments = parse_arguments(argv)
    plan = plan_for(arguments)
    open_files = raise_open_files()
    if open_files < 2 * plan.sockets + 200:
        print(f"{plan.sockets} sockets need more open files than the limit of {open_files}", file=sys.stderr)
        return 2
    if arguments.profile and common.py_spy_executable() is None:
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    try:
        import websockets  # noqa: F401
    except ImportError:
        print("bench/edge.py needs websockets: .venv/bin/pip install websockets", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as directory:
        processes = common.Processes(Path(directory))
        try:
            stack = start_stack(processes, arguments.app)
            os.environ["DJANGO_DATA_DIR"] = stack.env["DJANGO_DATA_DIR"]
            common.setup_django(stack.url)
            profile = arguments.profile_output if arguments.profile else None
            http, ws, raw, profile_lines = asyncio.run(run(stack, plan, profile))
            tool = "wrk -t1 (--latency)" if http[0].tool == "wrk" else "an asyncio keep-alive client"
            lines = [*header(stack, plan, tool, open_files, arguments.app), *table(http, ws, raw, plan), ""]
            lines += profile_lines
            lines.append(f"_Whole run: {time.monotonic() - started:.1f} s._")
        except common.BenchmarkError as exc:
            return common.report_failure(exc, processes, tail=15)
        finally:
            processes.stop_all()
    return common.publish(lines, arguments.output)


if __name__ == "__main__":
    sys.exit(main())
