"""Calls, commands and events in one process, on the in-memory layer with an in-loop worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

import bus
from bus import wakeups
from bus.targets import lookup_event
from bus.testing import serving
from tests.conftest import read_records
from tests.echo.contract import Echo, Refused
from tests.polling import apoll, poll

# Write methods read the domain's mode (read-only or not) from the database, in handler threads.
pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_acall_returns_the_json_result() -> None:
    async with serving("echo"):
        assert await bus.acall("echo.echo", text="hello") == "hello"
        assert await bus.acall("echo.add", a=2) == 3


async def test_sync_call_from_a_sync_view_thread_runs_on_the_callers_loop() -> None:
    """A sync caller under sync_to_async (a view, a handler) reaches an in-memory worker."""
    async with serving("echo"):
        assert await sync_to_async(bus.call)("echo.add", a=40, b=2) == 42


async def test_typed_client_returns_declared_types() -> None:
    async with serving("echo"):
        echo = Echo.client()
        assert await echo.count(items=[{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}]) == 5  # type: ignore[list-item]


async def test_declared_error_is_reraised_as_its_own_type_with_details() -> None:
    async with serving("echo"):
        with pytest.raises(Refused, match="Refused: no thanks") as caught:
            await bus.acall("echo.refuse", reason="no thanks")
    assert caught.value.code == "echo.Refused"
    assert caught.value.details == {"reason": "no thanks"}


async def test_undeclared_error_arrives_as_remote_error_naming_type_and_message() -> None:
    async with serving("echo"):
        with pytest.raises(bus.RemoteError, match="RuntimeError: boom") as caught:
            await bus.acall("echo.fail", message="boom")
    assert caught.value.remote_type == "RuntimeError"


async def test_invalid_arguments_name_the_field_before_anything_is_sent() -> None:
    with pytest.raises(
        bus.ValidationError, match=r"items\.0\.quantity: Input should be a valid integer"
    ) as caught:
        await bus.acall("echo.count", items=[{"sku": "A", "quantity": "2"}])
    assert caught.value.errors == [
        {"field": "items.0.quantity", "message": "Input should be a valid integer"}
    ]
    with pytest.raises(bus.ValidationError, match="surprise: Extra inputs are not permitted"):
        await bus.acall("echo.echo", text="x", surprise=1)
    with pytest.raises(bus.ValidationError, match="text: Field required"):
        await bus.acall("echo.echo")


async def test_unknown_service_and_method_list_what_exists() -> None:
    with pytest.raises(bus.UnknownTarget, match=r"Unknown method 'nowhere\.x'.*echo"):
        await bus.acall("nowhere.x")
    with pytest.raises(bus.UnknownTarget, match="Service 'echo' has no method 'nope'; it has: add, "):
        await bus.acall("echo.nope")
    with pytest.raises(bus.UnknownTarget, match="publishes no event 'nope'"):
        await bus.apublish("echo.nope")


async def test_no_worker_fails_at_once_and_says_why() -> None:
    with pytest.raises(
        bus.NoWorker, match=r"in-memory channel layer .* reaches only workers in the same process"
    ):
        await bus.acall("echo.echo", text="hello")


async def test_deadline_raises_timeout_and_the_late_request_never_runs(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    async with serving("echo", concurrency=1):
        first = asyncio.create_task(bus.acall("echo.sleep_sync", seconds=0.5, tag="first"))
        await asyncio.to_thread(
            poll, lambda: read_records(record_dir, "sleeping"), what="the first call running"
        )
        with pytest.raises(
            bus.DeadlineExceeded, match=r"echo\.sleep_sync did not answer within 0\.1 s"
        ) as caught:
            await bus.acall("echo.sleep_sync", seconds=0, tag="late", timeout=0.1)
        assert isinstance(caught.value, TimeoutError)
        assert await first == 0.5
        await bus.acall("echo.echo", text="after")  # the worker has looked at the late request by now
    assert read_records(record_dir, "slept") == ["first"]


async def test_oversized_request_is_refused_before_sending() -> None:
    async with serving("echo"):
        with pytest.raises(bus.MessageTooLarge, match=r"over the limit of 1,048,576 .*MAX_MESSAGE_BYTES"):
            await bus.acall("echo.echo", text="x" * 2_000_000)


async def test_oversized_result_becomes_a_clear_remote_error() -> None:
    async with serving("echo"):
        with pytest.raises(
            bus.RemoteError, match=r"The result of echo\.blob could not be sent: The message is"
        ):
            await bus.acall("echo.blob", size=2_000_000)
        assert await bus.acall("echo.echo", text="still serving") == "still serving"


async def test_result_that_breaks_the_contract_is_a_remote_error() -> None:
    async with serving("echo"):
        with pytest.raises(bus.RemoteError, match=r"Invalid result from echo\.bad_result"):
            await bus.acall("echo.bad_result")


async def test_correlation_id_follows_a_call_into_nested_calls() -> None:
    async with serving("echo"):
        answer = await bus.acall("echo.relay", text="hi")
    assert answer["text"] == "hi"
    assert answer["inner"]["correlation_id"] == answer["outer"]
    assert answer["inner"]["message_id"] != answer["outer"]


async def test_sync_handlers_run_in_a_thread_pool_concurrently() -> None:
    async with serving("echo", concurrency=8):
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(bus.acall("echo.sleep_sync", seconds=0.3) for _ in range(8)))
        elapsed = asyncio.get_running_loop().time() - started
        names = {(await bus.acall("echo.whoami"))["thread"] for _ in range(3)}
    # Eight 0.3 s handlers in series would take 2.4 s; this bound only proves they overlapped.
    assert elapsed < 2.0
    assert all(name.startswith("bus-handler") for name in names)


async def test_hundreds_of_concurrent_calls_in_one_loop() -> None:
    async with serving("echo"):
        results = await asyncio.gather(*(bus.acall("echo.add", a=n) for n in range(500)))
    assert results == [n + 1 for n in range(500)]


async def test_full_channel_is_a_clear_unavailable_error(
    settings: object, record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    settings.CHANNEL_LAYERS = {  # type: ignore[attr-defined]
        "default": {"BACKEND": "bus.layers.InMemoryBusLayer", "CONFIG": {"capacity": 2}}
    }
    async with serving("echo", concurrency=1):
        busy = [asyncio.create_task(bus.acall("echo.sleep", seconds=0.3))]
        await asyncio.to_thread(
            poll, lambda: read_records(record_dir, "sleeping"), what="the worker's only slot to take a call"
        )
        busy += [asyncio.create_task(bus.acall("echo.sleep", seconds=0.3)) for _ in range(2)]
        await apoll(
            lambda: get_channel_layer().queue_depth("echo"),
            lambda depth: depth == 2,
            what="two more calls to fill the queue",
        )
        with pytest.raises(bus.ChannelFull, match="The 'echo' channel is full: its workers are behind"):
            await bus.acall("echo.echo", text="one too many")
        await asyncio.gather(*busy)


async def test_send_runs_a_command_without_waiting(record_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    async with serving("echo"):
        message_id = await bus.asend("echo.record", n=7)
        assert len(message_id) == 32
        await asyncio.to_thread(poll, lambda: read_records(record_dir, "record"), what="the command to run")
    assert read_records(record_dir, "record") == ["7"]


async def test_publish_reaches_subscribed_domains(record_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    async with serving("echo"):
        group = lookup_event("echo.happened").group

        # Heartbeats subscribe to events right after announcing the worker: wait for that.
        await apoll(
            lambda: get_channel_layer().durable_subscribers(group),
            lambda subscribers: "echo" in subscribers,
            what=f"echo to subscribe to {group}",
        )
        await bus.apublish("echo.happened", text="tick")
        with pytest.raises(bus.ValidationError, match="text: Field required"):
            await bus.apublish("echo.happened")
        await asyncio.to_thread(poll, lambda: read_records(record_dir, "event"), what="the event handled")
    assert read_records(record_dir, "event") == ["tick"]


async def test_malformed_messages_are_answered_or_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = get_channel_layer()
    async with serving("echo"):
        await layer.send("echo", {"no": "type"})
        await layer.send(
            "echo", {"type": "bus.request", "id": "r1", "reply_to": "bus.reply.test", "target": 5}
        )
        await layer.send("echo", {"type": "something.else", "id": "r2"})
        reply = await layer.receive("bus.reply.test")
        assert reply["ok"] is False
        assert reply["in_reply_to"] == "r1"
        assert reply["error"]["kind"] == "bad_message"
        assert "'target' has the wrong type (int)" in reply["error"]["message"]
        assert "'body' is missing" in reply["error"]["message"]
        assert await bus.acall("echo.echo", text="alive") == "alive"
    assert "'type' must be one of bus.request, bus.command, bus.event (got None)" in caplog.text
    assert "'type' must be one of bus.request, bus.command, bus.event (got 'something.else')" in caplog.text


async def test_worker_side_validation_guards_against_callers_that_skip_it() -> None:
    layer = get_channel_layer()
    async with serving("echo"):
        request = bus.messages.envelope(
            "bus.request",
            "echo.add",
            {"a": "one"},
            reply_to="bus.reply.raw",
            deadline=asyncio.get_running_loop().time() + 10**10,
        )
        await layer.send("echo", request)
        reply = await layer.receive("bus.reply.raw")
    assert reply["error"]["kind"] == "validation"
    assert reply["error"]["details"]["errors"] == [
        {"field": "a", "message": "Input should be a valid integer"}
    ]


async def test_a_wakeup_runs_a_periodic_method_before_its_period(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    # The worker starts its periodic tasks (which listen for wakeups at once) before its first
    # heartbeat, and `serving` returns after that beat: the hourly task is listening by then.
    async with serving("echo"):
        await asyncio.to_thread(wakeups.wake, "echo.poked")  # from another thread, as on_commit is
        await asyncio.to_thread(poll, lambda: read_records(record_dir, "poked"), what="the woken task to run")
    assert len(read_records(record_dir, "poked")) == 1
