"""Retries with backoff for commands and published events, then dead letters to list and replay;
a clean stop hands waiting retries on instead of dropping them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from channels.layers import get_channel_layer

import bus
from bus import deadletters, messages
from bus.client import default_bus
from bus.targets import lookup_event
from bus.testing import serving
from bus.threads import in_pool
from tests.conftest import WorkerProcess, durable_subscribers, migrated, read_records, run_bus
from tests.polling import poll

pytestmark = [pytest.mark.redis]

StartWorker = Callable[..., WorkerProcess]


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
    poll(
        lambda: len(read_records(record_dir, "flaky-once")),
        lambda tries: tries == 2,
        what="two tries of 'once'",
    )
    poll(
        lambda: run_bus(data_dir, redis_layer, "deadletters").stdout,
        lambda listing: "always" in listing,
        what="'always' among the dead letters",
    )
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
    poll(
        lambda: len(read_records(record_dir, "flaky-always")),
        lambda tries: tries == 4,
        what="the replay's try",
    )
    assert run_bus(data_dir, redis_layer, "deadletters").stdout.strip() == ""
    again = run_bus(data_dir, redis_layer, "deadletters", "replay", letter_id)
    assert again.returncode != 0 and "was replayed already" in again.stderr


def test_a_published_event_whose_handler_fails_is_retried_then_dead_lettered(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    data_dir = migrated(tmp_path / "data")
    worker = start_worker(redis_layer, "echo", data_dir=data_dir)
    group = lookup_event("echo.happened").group
    # Heartbeats subscribe to events after announcing the worker: wait for the subscription.
    poll(
        lambda: durable_subscribers(redis_layer, group),
        lambda subscribers: "echo" in subscribers,
        what=f"worker {worker.pid}'s channel subscribed to {group}",
    )

    async def publish() -> None:
        await bus.apublish("echo.happened", text="explode")
        await bus.apublish("echo.happened", text="fine")
        await default_bus.aclose()

    asyncio.run(publish())
    poll(
        lambda: run_bus(data_dir, redis_layer, "deadletters").stdout,
        lambda listing: "echo.happened" in listing,
        what="echo.happened among the dead letters",
    )
    listing = run_bus(data_dir, redis_layer, "deadletters").stdout
    assert "x2  ValueError: this event always fails" in listing
    assert read_records(record_dir, "event") == ["fine"]
    purge = run_bus(data_dir, redis_layer, "deadletters", "purge")
    assert "Deleted 1 dead letter(s)." in purge.stdout
    assert os.environ.get("BUS_TEST_RECORD_DIR") is None, "the test process itself records nothing"


async def test_a_sigterm_during_a_retry_wait_hands_the_retry_on_to_the_next_worker(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    data_dir = migrated(tmp_path / "data")
    # Without jitter, the retry after the fifth try waits 0.5 * 2 ** 4 = 8 s: far longer than a
    # stop takes (with the default full jitter it could be any wait up to that).
    steady = json.dumps({"RETRY_BACKOFF": {"jitter": 0}})
    first = start_worker(redis_layer, "echo", data_dir=data_dir, extra_env={"BUS_TEST_SETTINGS": steady})
    command = messages.envelope(
        messages.COMMAND, "echo.stubborn", {"key": "handover", "failures": 1}, headers={"attempt": 5}
    )
    await get_channel_layer().send("echo", dict(command))
    await asyncio.to_thread(first.wait_for_output, "echo.stubborn failed (try 5 of 7)")
    assert "trying again in 8.0 s" in first.output()
    (record_dir / "flaky-handover.failures").write_text("0")  # the cause is fixed: the next try works
    assert await asyncio.to_thread(first.terminate) == 0
    assert "Handed on 1 retry(ies) waiting in this worker: back on their channels" in first.output()
    start_worker(redis_layer, "echo", data_dir=data_dir)
    await asyncio.to_thread(
        poll,
        lambda: len(read_records(record_dir, "flaky-handover")),
        lambda tries: tries == 2,
        what="the retry",
    )
    assert set(read_records(record_dir, "flaky-handover")) == {command["id"]}, "one message, tried twice"
    dead = await asyncio.to_thread(run_bus, data_dir, redis_layer, "deadletters")
    assert dead.returncode == 0 and "echo.stubborn" not in dead.stdout


async def test_a_waiting_retry_goes_back_to_its_channel_with_its_try_count_and_due_time(
    redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    # One slot: once the call after it is answered, the worker holds the retry (due in 30 s).
    worker = start_worker(redis_layer, "echo", concurrency=1)
    layer = get_channel_layer()
    due = time.time() + 30
    retry = messages.envelope(
        messages.COMMAND, "echo.record", {"n": 7}, headers={"attempt": 2, "not_before": due}
    )
    await layer.send("echo", dict(retry))
    assert await bus.acall("echo.echo", text="after") == "after"
    assert await asyncio.to_thread(worker.terminate) == 0
    assert "Handed on 1 retry(ies) waiting in this worker: back on their channels" in worker.output()
    back = await layer.receive("echo")
    assert (back["id"], back["headers"]) == (retry["id"], {"attempt": 2, "not_before": due})
    assert read_records(record_dir, "record") == [], "not tried before it is due"

    # The next worker holds it until it is due, then tries it.
    back["headers"]["not_before"] = due = time.time() + 1
    await layer.send("echo", back)
    start_worker(redis_layer, "echo")
    await asyncio.to_thread(poll, lambda: read_records(record_dir, "record"), what="the retry tried when due")
    tried = min(path.stat().st_mtime for path in record_dir.glob("record-*.txt"))  # noqa: ASYNC240
    assert tried >= due, "tried when due, not before"
    await default_bus.aclose()


@pytest.mark.django_db(transaction=True)
async def test_with_the_in_memory_layer_a_waiting_retry_becomes_a_dead_letter_on_stop() -> None:
    """The in-memory layer ends with the process: a retry waiting there is kept to replay by hand."""
    retry = messages.envelope(
        messages.COMMAND, "echo.record", {"n": 1}, headers={"attempt": 2, "not_before": time.time() + 30}
    )
    async with serving("echo", concurrency=1):
        await get_channel_layer().send("echo", dict(retry))
        assert await bus.acall("echo.echo", text="after") == "after"
    letters = await in_pool(deadletters.waiting)
    assert [(letter.message_id, letter.attempts) for letter in letters] == [(retry["id"], 1)]
    assert letters[0].error == (
        "Waiting for try 2, the worker stopped while it waited, and its layer ends with it; "
        "replay it with `manage.py bus deadletters replay`."
    )
