"""Retries with backoff for commands and published events, then dead letters to list and replay."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import bus
from bus.client import default_bus
from tests.conftest import WorkerProcess, migrated, read_records, run_bus

pytestmark = [pytest.mark.redis]

StartWorker = Callable[..., WorkerProcess]


def wait_until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_failing_command_is_retried_then_dead_lettered_and_replayed(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    data_dir = migrated(tmp_path / "data")
    start_worker(redis_layer, "echo", data_dir=data_dir)

    async def send() -> None:
        await bus.asend("echo.flaky", key="once", failures=1)
        await bus.asend("echo.flaky", key="always", failures=99)
        await default_bus.aclose()

    asyncio.run(send())
    # "once" fails one try and succeeds on the retry; "always" fails 1 + 2 retries.
    wait_until(lambda: len(read_records(record_dir, "flaky-once")) == 2)
    wait_until(lambda: "always" in run_bus(data_dir, redis_layer, "deadletters").stdout)
    assert len(read_records(record_dir, "flaky-always")) == 3
    assert len(set(read_records(record_dir, "flaky-always"))) == 1, "every try carries the same message id"
    listing = run_bus(data_dir, redis_layer, "deadletters").stdout
    letter_id = listing.split()[0]
    assert "echo.flaky  x3  RuntimeError: flaky always fails try 3" in listing
    shown = run_bus(data_dir, redis_layer, "deadletters", "show", letter_id).stdout
    assert json.loads(shown[: shown.index("\n}") + 2])["envelope"]["body"] == {
        "key": "always",
        "failures": 99,
    }
    assert 'raise RuntimeError(f"flaky {key} fails try {tries}")' in shown, "the traceback is kept"
    status = json.loads(run_bus(data_dir, redis_layer, "status", "--json").stdout)
    assert status["dead_letters"] == 1

    (record_dir / "flaky-always.failures").write_text("0")  # the cause is fixed
    replayed = run_bus(data_dir, redis_layer, "deadletters", "replay", letter_id)
    assert replayed.returncode == 0 and "Replayed" in replayed.stdout
    wait_until(lambda: len(read_records(record_dir, "flaky-always")) == 4)
    assert run_bus(data_dir, redis_layer, "deadletters").stdout.strip() == ""
    again = run_bus(data_dir, redis_layer, "deadletters", "replay", letter_id)
    assert again.returncode != 0 and "was replayed already" in again.stderr


def test_a_published_event_whose_handler_fails_is_retried_then_dead_lettered(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    data_dir = migrated(tmp_path / "data")
    start_worker(redis_layer, "echo", data_dir=data_dir)
    time.sleep(1.0)  # the first heartbeat joins the event group

    async def publish() -> None:
        await bus.apublish("echo.happened", text="explode")
        await bus.apublish("echo.happened", text="fine")
        await default_bus.aclose()

    asyncio.run(publish())
    wait_until(lambda: "echo.happened" in run_bus(data_dir, redis_layer, "deadletters").stdout)
    listing = run_bus(data_dir, redis_layer, "deadletters").stdout
    assert "x2  ValueError: this event always fails" in listing
    assert read_records(record_dir, "event") == ["fine"]
    purge = run_bus(data_dir, redis_layer, "deadletters", "purge")
    assert "Deleted 1 dead letter(s)." in purge.stdout
    assert os.environ.get("BUS_TEST_RECORD_DIR") is None, "the test process itself records nothing"
