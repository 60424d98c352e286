"""Helpers the benchmarks share: child processes, a private redis-server, percentiles, CPU, py-spy.

Scripts run as ``python bench/NAME.py`` put the repository root on ``sys.path`` themselves, then
import this module as ``bench.common``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "tests.settings"


class BenchmarkError(Exception):
    """The benchmark could not measure: a process did not start, or calls kept failing."""


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None elsewhere."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: Mapping[str, int | None]) -> dict[str, float | None]:
    """CPU seconds used so far by each named process (None: this one)."""
    return {name: process_cpu(pid) for name, pid in pids.items()}


def cpu_used(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float | None]:
    """CPU seconds each process used between two snapshots; None where /proc could not tell."""
    used: dict[str, float | None] = {}
    for name, start in before.items():
        end = after[name]
        used[name] = None if end is None or start is None else end - start
    return used


@dataclass(frozen=True)
class RedisLoad:
    """What redis-server did: CPU seconds (user + system, all its threads) and commands processed.

    `RedisLoad.read(client)` gives the server's counters so far, from one ``INFO cpu stats``
    (microsecond resolution, where /proc/<pid>/stat counts 10 ms ticks); the difference of two
    readings is what a measured row cost it, idle clients' polling included.
    """

    cpu: float
    commands: int

    @classmethod
    def read(cls, client: Any) -> RedisLoad:
        """The counters so far (`client`: a sync redis-py client)."""
        info = client.info("cpu", "stats")
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return cls(cpu, int(info["total_commands_processed"]))

    def __sub__(self, earlier: RedisLoad) -> RedisLoad:
        # Minus 1 command: the INFO that read these counters is counted too.
        return RedisLoad(self.cpu - earlier.cpu, self.commands - earlier.commands - 1)

    def __add__(self, other: RedisLoad) -> RedisLoad:
        return RedisLoad(self.cpu + other.cpu, self.commands + other.commands)

    def us_per(self, items: int) -> float:
        """Redis CPU microseconds per item (call, message)."""
        return self.cpu * 1e6 / items if items else math.nan

    def versus(self, items: int, base: RedisLoad | None, base_items: int) -> str:
        """Redis CPU per item against `base`'s (a baseline row of the same run), as "1.23x"."""
        if base is None or base.cpu <= 0 or not items or not base_items:
            return "-"
        return f"{self.us_per(items) / base.us_per(base_items):.2f}x"

    def cells(self, items: int) -> list[str]:
        """Table cells for `items` calls or messages: Redis commands, CPU us and CPU us per command
        for each, and how many a second one Redis core would carry at that cost (1e6 / us)."""
        us = self.us_per(items)
        per_command = self.cpu * 1e6 / self.commands if self.commands > 0 else math.nan
        per_core = 1e6 / us if us > 0 else math.nan
        commands = self.commands / items if items else math.nan
        return [f"{commands:.1f}", f"{us:,.1f}", f"{per_command:.2f}", f"{per_core:,.0f}"]


def progress(text: str) -> None:
    """A progress line on stderr, so that stdout carries only the report."""
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Processes:
    """The child processes of one run; `stop_all` ends every one of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` from the repository root with its output in a log file."""
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.started.append((name, process))
        return process

    def pid(self, name: str) -> int:
        """The process id of the child called `name`."""
        return next(process.pid for started, process in self.started if started == name)

    def output(self, name: str, lines: int = 40) -> str:
        """The last lines a child printed."""
        path = self.directory / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        """Terminate every child, newest first (redis-server last); kill those that linger."""
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(processes: Processes) -> str:
    """Start a private redis-server and return its URL once it answers PING."""
    import redis

    executable = shutil.which("redis-server")
    if executable is None:
        raise BenchmarkError("redis-server is not installed (apt-get install redis-server).")
    port = free_port()
    argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = processes.start("redis-server", [*argv, "--dir", str(processes.directory)])
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    raise BenchmarkError(f"redis-server on port {port} did not start:\n{processes.output('redis-server')}")


def setup_django(url: str) -> None:
    """Configure Django with the test settings and the bus on our Redis."""
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    os.environ["BUS_TEST_REDIS_URL"] = url
    import django

    django.setup()


def versions(url: str, extra: Sequence[str] = ()) -> list[str]:
    """Versions of everything measured, for a report's header; `extra` names more packages."""
    import redis
    import redis.utils

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    server = redis.Redis.from_url(url).info("server")["redis_version"]
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python"
    return [
        f"python {platform.python_version()}",
        f"django {version('django')}",
        f"channels {version('channels')}",
        f"channels-redis {version('channels-redis')}",
        f"redis-py {version('redis')} ({parser} parser)",
        f"msgpack {version('msgpack')}",
        *(f"{name} {version(name)}" for name in extra),
        f"redis-server {server}",
    ]


# --------------------------------------------------------------------------------------------
# The stock channels-redis layer, the baselines' transport
# --------------------------------------------------------------------------------------------

RAW_PREFIX = "benchraw:"  # channels-redis key prefix of the raw baselines, apart from the bus's "bus:"
RAW_GROUP = "bench.raw.fanout"  # the group of bench/edge_app.py's plain WebSocket consumers


def raw_host(url: str) -> dict[str, Any]:
    """A channels-redis host entry for `url`, configured to work with redis-py 8."""
    # socket_timeout None: redis-py 8 would time out the 5 s blocking receive (channels_redis#422);
    # max_connections: 100 calls in flight plus the receiver exceed redis-py 8's default of 100.
    return {"address": url, "socket_timeout": None, "max_connections": 400}


def raw_layer(url: str) -> Any:
    """The stock channels-redis layer on `url` (a channel holds 1,000 messages, as the bus's do)."""
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[raw_host(url)], prefix=RAW_PREFIX, capacity=1000)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------

Frame = tuple[str, str]  # (function, short file path)
Stack = tuple[list[Frame], float]  # frames root first, and the time (or samples) they stand for


def short_path(path: str) -> str:
    """A file path relative to the repository, site-packages or the standard library."""
    paths = sysconfig.get_paths()
    for prefix in (paths["purelib"], paths["platlib"], paths["stdlib"], str(ROOT)):
        if path.startswith(prefix + os.sep):
            return path[len(prefix) + 1 :]
    return path


_PY_SPY_FRAME = re.compile(r"^(.*) \((.*):\d+\)$")


def py_spy_stacks(path: Path) -> Iterable[Stack]:
    """The samples of py-spy's raw (collapsed) output as (frames, sample count)."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for text in stack.split(";"):
            match = _PY_SPY_FRAME.match(text)
            if match:
                frames.append((match.group(1), short_path(match.group(2))))
        yield frames, float(count)


def is_idle(frames: Sequence[Frame]) -> bool:
    """Whether a sample is the event loop waiting in epoll (nothing to do)."""
    return any(function.endswith("select") and path == "selectors.py" for function, path in frames[-2:])


def summarize(
    title: str,
    stacks: Iterable[Stack],
    unit: str,
    area: Callable[[str], str],
    top: int = 25,
    inclusive_of: Sequence[str] = ("bus/",),
    inclusive_title: str = "bus functions",
) -> list[str]:
    """Self time by area and function, and inclusive time of the functions in `inclusive_of`.

    `area` names the part of the stack a short file path belongs to; `inclusive_of` are path
    prefixes of the functions whose time with their callees is listed too.
    """
    total = idle = 0.0
    by_area: dict[str, float] = defaultdict(float)
    by_function: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    prefixes = tuple(inclusive_of)
    for frames, weight in stacks:
        if not frames:
            continue
        total += weight
        if is_idle(frames):
            idle += weight
            continue
        function, path = frames[-1]
        if path == "<built-in>" and len(frames) > 1:
            caller, path = frames[-2]
            function = f"{function} [built-in, from {caller}]"
        by_area[area(path)] += weight
        by_function[f"{function} ({path})"] += weight
        for name in {f"{f} ({p})" for f, p in frames if p.startswith(prefixes)}:
            inclusive[name] += weight
    busy = total - idle
    if busy <= 0:
        return [f"### {title}", "", "No samples.", ""]

    def share(value: float) -> str:
        return f"{100 * value / busy:.1f}%"

    lines = [
        f"### {title}",
        "",
        f"{total:,.{3 if unit == 's' else 0}f} {unit} sampled; idle in the event loop's epoll wait: "
        f"{100 * idle / total:.1f}%. Shares below are of the busy rest.",
        "",
        "| self time by area | share |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {share(value)} |" for name, value in ranked(by_area)]
    lines += ["", "| top functions by self time | share |", "|---|---:|"]
    lines += [f"| {name} | {share(value)} |" for name, value in ranked(by_function)[:top]]
    lines += ["", f"| {inclusive_title} by inclusive time (with callees) | share |", "|---|---:|"]
    lines += [f"| {name} | {share(value)} |" for name, value in ranked(inclusive)[:top]]
    return [*lines, ""]


def ranked(values: dict[str, float]) -> list[tuple[str, float]]:
    """Items by decreasing value."""
    return sorted(values.items(), key=lambda item: -item[1])


def py_spy_executable() -> str | None:
    """py-spy next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def publish(lines: list[str], output: Path | None) -> int:
    """Print the report, and write it to `output` when one was given; the exit status."""
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if output:
        output.write_text(report)
    return 0


def area(path: str) -> str:
    """The part of the stack a profiled file belongs to; the project's own files are named one by one."""
    for start, name in (
        ("bus/", ""),
        ("consumers/", ""),
        ("workers/", ""),
        ("bench/", ""),
        ("tests/", ""),
        ("channels_redis/", "channels-redis"),
        ("channels/", "channels"),
        ("daphne/", "daphne"),
        ("twisted/", "twisted"),
        ("autobahn/", "autobahn"),
        ("txaio/", "autobahn"),
        ("redis/", "redis-py"),
        ("asyncio/", "asyncio"),
        ("selectors.py", "asyncio"),
        ("asgiref/", "asgiref"),
        ("pydantic", "pydantic"),
        ("json/", "json"),
        ("msgpack/", "msgpack"),
        ("django/", "django"),
    ):
        if path.startswith(start):
            return name or path
    return f"other: {path.split('/')[0]}"


def report_header(title: str, versions: Sequence[str]) -> list[str]:
    """A report's first lines: its title, when, with which versions, on which machine."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"# {title}",
        "",
        f"- date: {now}",
        f"- versions: {', '.join(versions)}",
        f"- host: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs",
    ]


def report_failure(exc: BenchmarkError, processes: Processes, tail: int = 0) -> int:
    """Say why the run failed (and, with `tail`, the last lines of every process); exit status 1."""
    print(f"benchmark failed: {exc}", file=sys.stderr)
    if tail:
        for name, _ in processes.started:
            print(f"--- {name}:\n{processes.output(name, tail)}", file=sys.stderr)
    return 1
