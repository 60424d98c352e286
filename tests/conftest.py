"""Shared fixtures: private Redis servers, worker processes, and a fresh channel layer per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import redis
from channels.layers import channel_layers

from bench.common import free_port
from bus.conf import channel_layers as layers_for
from bus.layers import RedisBusLayer
from tests.polling import poll
from tests.site import Visitor

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

__all__ = ["free_port"]  # the benchmarks' one, for the tests that import it from here


class RedisServer:
    """A redis-server of the test's own on a free loopback port, which it may stop and restart."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.options = options  # more redis-server options, e.g. "--replicaof", host, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, executable: str) -> list[str]:
        return [
            executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), *self.options,
        ]  # fmt: skip

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server).")
        self.process = subprocess.Popen(
            self.command(executable), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        poll(
            client.ping,
            what=f"redis-server on port {self.port} to answer PING",
            ignoring=(redis.ConnectionError,),
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def flush(self) -> None:
        redis.Redis(port=self.port).flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_layers() -> Iterator[None]:
    """Each test gets new channel layer objects (in-memory state and pools do not leak)."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture
def redis_layer(redis_server: RedisServer, settings: object) -> str:
    """Point this test process's bus at the private Redis, emptied first."""
    redis_server.flush()
    settings.CHANNEL_LAYERS = layers_for(redis_server.url)  # type: ignore[attr-defined]
    return redis_server.url


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "records"
    directory.mkdir()
    return directory


def read_records(directory: Path, kind: str) -> list[str]:
    lines: list[str] = []
    for path in sorted(directory.glob(f"{kind}-*.txt")):
        lines.extend(path.read_text().split())
    return lines


class WorkerProcess:
    """`manage.py runworker` as a real OS process, with its output kept for the test to read."""

    def __init__(self, process: subprocess.Popen[str], log: Path, log_file: IO[str]) -> None:
        self.process = process
        self.log = log
        self.log_file = log_file

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        poll(
            lambda: text in self.output(),
            what=f"{text!r} in the output of worker {self.pid}",
            timeout=timeout,
        )

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="session")
def worker_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SQLite databases, migrated once, for worker processes that tests start (DJANGO_DATA_DIR)."""
    return migrated(tmp_path_factory.mktemp("worker-data"))


def process_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a process a test starts: its own SQLite files, test settings."""
    env = {name: value for name, value in os.environ.items() if not name.endswith("DATABASE_URL")}
    return {**env, "DJANGO_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "tests.settings", **extra}


def run_bus(data_dir: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`manage.py bus ARGS` as another process would run it, on `data_dir`'s databases."""
    return subprocess.run(
        [sys.executable, "manage.py", "bus", *args],
        cwd=ROOT,
        env=process_env(data_dir, BUS_TEST_REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def migrated(data_dir: Path, **extra: str) -> Path:
    """Create and migrate every database alias of a process configured by `extra`, in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate_all", "-v0"],
        cwd=ROOT,
        env=process_env(data_dir, **extra),
        check=True,
        timeout=120,
    )
    return data_dir


@pytest.fixture
def start_worker(
    tmp_path: Path, record_dir: Path, worker_data_dir: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `runworker CHANNELS` processes on the given Redis URL; each is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        redis_url: str,
        *channels: str,
        concurrency: int | None = None,
        metrics_port: int | None = None,
        wait: bool = True,
        extra_env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        settings: str = "tests.settings",
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        command = [sys.executable, str(ROOT / "manage.py"), "runworker", *channels, "--settings", settings]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        if metrics_port is not None:
            command += ["--metrics-port", str(metrics_port)]
        env = process_env(
            data_dir or worker_data_dir,
            BUS_TEST_REDIS_URL=redis_url,
            BUS_TEST_RECORD_DIR=str(record_dir),
            PYTHONUNBUFFERED="1",
            **(extra_env or {}),
        )
        log_file = log.open("w")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
        worker = WorkerProcess(process, log, log_file)
        started.append(worker)
        if wait:
            wait_for_worker(worker, redis_url, channels)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()
        worker.log_file.close()


class UpProcess:
    """`manage.py up` (web and workers, orders x2) in its own process group, its output in a file.

    The up and chaos tests start the whole system the same way: one launcher keeps them alike.
    """

    def __init__(
        self,
        data_dir: Path,
        redis_url: str | None,
        log_level: str | None = None,
        databases: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.visitor = Visitor(self.base)
        self.log = data_dir / "up.log"
        # The system gets only the databases and Redis the test gives it, not the developer's.
        env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL") and k != "REDIS_URL"}
        env.update(
            DJANGO_SETTINGS_MODULE="project.settings", DJANGO_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1"
        )
        if redis_url:
            env["REDIS_URL"] = redis_url
        if log_level:
            env["LOG_LEVEL"] = log_level
        env.update(databases or {})  # <ALIAS>_DATABASE_URL variables; SQLite files in data_dir without
        env.update(environment or {})  # a test's own settings module, say
        self.env = env
        self.log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(self.port), "--workers", "orders=2"],
            cwd=ROOT,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        # Read while `up` is still writing: the last character may be cut in half.
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """Ask `up` to shut down as an operator would (SIGTERM); its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        """Kill the whole process group if it is still running, so no child outlives the test."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.log_file.close()


def on_the_bus(redis_url: str, use: Callable[[RedisBusLayer], Awaitable[T]]) -> T:
    """`use` a layer on the bus at `redis_url` (prefix "bus:", as every process has it); its result."""

    async def run() -> T:
        layer = RedisBusLayer(hosts=[redis_url], prefix="bus:")
        try:
            return await use(layer)
        finally:
            await layer.close_pools()

    # Tests that are themselves coroutines call this too: run it on a thread's own loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def presence(redis_url: str, channel: str) -> dict[str, dict[str, Any]]:
    """The live workers of a channel, as `bus status` sees them."""
    return on_the_bus(redis_url, lambda layer: layer.presence(channel))


def durable_subscribers(redis_url: str, group: str) -> set[str]:
    """The domain channels an event group's at-least-once events are queued on."""
    return set(on_the_bus(redis_url, lambda layer: layer.durable_subscribers(group)))


def wait_for_worker(
    worker: WorkerProcess, redis_url: str, channels: tuple[str, ...], timeout: float = 30
) -> None:
    """Block until the worker's heartbeat is visible on every channel it serves."""

    def beating() -> bool:
        if worker.process.poll() is not None:
            pytest.fail(f"Worker exited with {worker.process.returncode}:\n{worker.output()}")
        return all(
            any(f".{worker.pid}." in member for member in presence(redis_url, channel))
            for channel in channels
        )

    try:
        poll(beating, what=f"worker {worker.pid} to beat on {', '.join(channels)}", timeout=timeout)
    except AssertionError as late:
        pytest.fail(f"{late}. Its output:\n{worker.output()}")
