"""Choosing how a command or event is delivered: at-least-once by default, at-most-once on request
(the in-memory layer, one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from channels.layers import get_channel_layer

import bus
from bus import Contract, Delivery, Event, Schema, rpc
from bus.targets import lookup_method
from bus.testing import serving
from tests.conftest import read_records
from tests.polling import apoll


class Tick(Schema):
    n: int


class Fleeting(Contract, name="fleeting", delivery=Delivery.AT_MOST_ONCE):
    """Worthless after a crash: every send and event at-most-once, unless one says otherwise."""

    ticked = Event(Tick)
    kept = Event(Tick, delivery=Delivery.AT_LEAST_ONCE)

    @rpc()
    async def ping(self) -> None: ...

    @rpc(delivery=Delivery.AT_LEAST_ONCE)
    async def keep(self) -> None: ...


def test_a_contract_chooses_the_default_and_a_method_or_event_may_say_its_own() -> None:
    assert Fleeting.methods["ping"].delivery is Delivery.AT_MOST_ONCE
    assert Fleeting.methods["keep"].delivery is Delivery.AT_LEAST_ONCE
    assert (Fleeting.events["ticked"].delivery, Fleeting.events["kept"].delivery) == (
        Delivery.AT_MOST_ONCE,
        Delivery.AT_LEAST_ONCE,
    )
    schema = Fleeting.json_schema()
    assert schema["methods"]["ping"]["delivery"] == "at-most-once"
    assert schema["events"]["kept"]["delivery"] == "at-least-once"
    assert lookup_method("echo.record").delivery is Delivery.AT_LEAST_ONCE, "the default"


async def test_an_at_most_once_send_with_no_worker_fails_at_once() -> None:
    with pytest.raises(bus.NoWorker, match="No worker serves 'fleeting'"):
        await bus.asend("fleeting.ping")
    await bus.asend("fleeting.keep")  # at-least-once: it waits for a worker
    assert (await get_channel_layer().durable_depth("fleeting")).waiting == 1


@pytest.mark.django_db  # a write method: the worker reads the domain's mode first
async def test_a_command_sent_while_no_worker_is_alive_waits_and_runs_when_one_starts(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    sent = await bus.asend("echo.record", n=7)
    assert sent
    layer = get_channel_layer()
    depth = await layer.durable_depth("echo")
    assert (depth.waiting, depth.held) == (1, 0)
    async with serving("echo"):
        await apoll(
            lambda: layer.durable_depth("echo"),
            lambda d: (d.waiting, d.held, d.delayed) == (0, 0, 0),
            what="it ran",
        )
    assert read_records(record_dir, "record") == ["7"]
    with pytest.raises(bus.NoWorker):
        await bus.acall("echo.echo", text="calls still fail fast")
