"""Rolling deploys: two versions of a domain's contract live at once (tests/evolve), with real
worker processes on a real Redis; and the snapshot check that names a breaking change.

This test process declares version 1 of `evolve` (EVOLVE_VERSION unset); a process started with
EVOLVE_VERSION=2 declares version 2, which only adds: an optional argument, a result field, an
event field and a method.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bus
from bus import Contract, ContractError, Event, Schema, evolution, rpc
from bus.client import default_bus
from tests.conftest import ROOT, WorkerProcess, process_env, read_records
from tests.evolve.contract import NEW, Evolve
from tests.polling import apoll

StartWorker = Callable[..., WorkerProcess]
SETTINGS = "tests.evolve.settings"


def bus_command(
    redis_url: str, worker_data_dir: Path, version: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`manage.py bus ARGS` from a process that declares evolve's `version`."""
    env = process_env(
        worker_data_dir, BUS_TEST_REDIS_URL=redis_url, EVOLVE_VERSION=version, DJANGO_SETTINGS_MODULE=SETTINGS
    )
    return subprocess.run(
        [sys.executable, "manage.py", "bus", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_this_process_declares_the_old_version() -> None:
    assert not NEW and "farewell" not in Evolve.methods


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_old_worker_new_caller_new_argument_refused_by_name_new_method_unknown_by_version(
    redis_layer: str, start_worker: StartWorker, worker_data_dir: Path
) -> None:
    start_worker(redis_layer, "evolve", settings=SETTINGS, extra_env={"EVOLVE_VERSION": "1"})

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return bus_command(redis_layer, worker_data_dir, "2", "call", *args)

    plain = call("evolve.greet", '{"name": "ada"}')
    assert (plain.returncode, json.loads(plain.stdout)) == (0, {"text": "Hi, ada"}), plain.stderr
    polite = call("evolve.greet", '{"name": "ada", "polite": true}')
    assert polite.returncode == 3, polite.stdout
    assert (
        "Unknown argument(s) 'polite' for evolve.greet: this side runs evolve's contract version "
        in polite.stderr
    )
    assert f"version {Evolve.version()}, the caller's is " in polite.stderr
    assert "deploy evolve's new workers first" in polite.stderr
    farewell = call("evolve.farewell", '{"name": "ada"}')
    assert farewell.returncode == 8, farewell.stdout
    assert "Service 'evolve' has no method 'farewell'" in farewell.stderr
    assert (
        f"This worker runs evolve's contract version {Evolve.version()}, the caller's is " in farewell.stderr
    )


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_new_worker_old_caller_reads_a_result_with_a_field_it_does_not_know(
    redis_layer: str, start_worker: StartWorker, worker_data_dir: Path
) -> None:
    start_worker(redis_layer, "evolve", settings=SETTINGS, extra_env={"EVOLVE_VERSION": "2"})
    greeting = await Evolve.client().greet(name="ada")  # this process is the old caller
    assert greeting.text == "Hi, ada" and "language" not in greeting.model_dump()
    await default_bus.aclose()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_old_subscriber_handles_a_new_publishers_event_and_status_shows_both_versions(
    redis_layer: str, start_worker: StartWorker, worker_data_dir: Path, record_dir: Path
) -> None:
    start_worker(redis_layer, "evolve", settings=SETTINGS, extra_env={"EVOLVE_VERSION": "1"})
    new = start_worker(redis_layer, "evolve", settings=SETTINGS, extra_env={"EVOLVE_VERSION": "2"})
    status = bus_command(redis_layer, worker_data_dir, "1", "status")
    assert "evolve: 2 worker(s)" in status.stdout, status.stdout
    assert "2 CONTRACT VERSIONS LIVE" in status.stdout, status.stdout
    new.terminate()  # a publisher of the new version remains; only the old subscriber runs
    published = bus_command(
        redis_layer, worker_data_dir, "2", "publish", "evolve.greeted", '{"name": "bob", "mood": "busy"}'
    )
    assert published.returncode == 0, published.stderr
    seen = await apoll(
        lambda: _records(record_dir), lambda lines: len(lines) >= 1, what="the old subscriber to handle it"
    )
    assert seen == ["v1:bob"], "the old subscriber ignored the field it does not know"
    dead = bus_command(redis_layer, worker_data_dir, "1", "deadletters")
    assert "evolve.greeted" not in dead.stdout, "and refused nothing"
    await default_bus.aclose()


async def _records(record_dir: Path) -> list[str]:
    return read_records(record_dir, "greeted")


# --- the snapshot check: each breaking change named ---------------------------------------------


class Item(Schema):
    sku: str


class Rich(Item):
    note: str = ""


class Base(Contract, name="evo_base"):
    seen = Event(Item)

    @rpc(read=True)
    async def look(self, *, sku: str, limit: int = 10) -> Item: ...

    @rpc()
    async def gone(self) -> None: ...


class Additive(Contract, name="evo_additive"):
    seen = Event(Rich)
    later = Event(Item)

    @rpc(read=True)
    async def look(self, *, sku: str, limit: int = 10, deep: bool = False) -> Rich: ...

    @rpc()
    async def gone(self) -> None: ...

    @rpc()
    async def fresh(self) -> None: ...


class Gone(ContractError):
    """Nothing to look at any more."""


class Breaking(Contract, name="evo_breaking"):
    @rpc(errors=[Gone], read=False)
    async def look(self, *, code: str, limit: str, depth: int) -> str: ...


def _as(service: type[Contract]) -> dict[str, Any]:
    return {"evo": service.json_schema()}


def test_additive_changes_pass_the_check() -> None:
    changes = evolution.compare(_as(Base), _as(Additive))
    assert [str(change) for change in changes if change.breaking] == []
    described = {str(change) for change in changes}
    assert "additive  evo.look(arguments).deep: argument added" in described
    assert "additive  evo.look -> result.note: field added" in described
    assert "additive  evo.fresh: method added" in described
    assert "additive  event evo.seen.note: field added" in described


def test_each_breaking_change_is_named() -> None:
    breaking = {str(change) for change in evolution.compare(_as(Base), _as(Breaking)) if change.breaking}
    assert "BREAKING  evo.gone: method removed" in breaking
    assert "BREAKING  evo.seen: event removed" in breaking
    assert "BREAKING  evo.look: read changed from True to False" in breaking
    assert "BREAKING  evo.look: errors changed from [] to ['evo_breaking.Gone']" in breaking
    assert "BREAKING  evo.look(arguments).sku: argument removed (or renamed)" in breaking
    assert (
        "BREAKING  evo.look(arguments).depth: new required argument: older callers do not send it" in breaking
    )
    assert any(line.startswith("BREAKING  evo.look(arguments).limit: type changed") for line in breaking)
    assert any(line.startswith("BREAKING  evo.look -> result: type changed") for line in breaking)
    narrowed = evolution.compare(_as(Additive), _as(Base))
    assert "BREAKING  evo.look(arguments).deep: argument removed (or renamed)" in {str(c) for c in narrowed}


def test_the_committed_snapshot_matches_the_code() -> None:
    """What CI runs as `manage.py bus contracts check` (scripts/test), for the shop's contracts."""
    done = subprocess.run(
        [sys.executable, "manage.py", "bus", "contracts", "check"],
        cwd=ROOT,
        env=process_env(ROOT / "var", DJANGO_SETTINGS_MODULE="project.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts match contracts.json." in done.stdout


# --- readers drop what they do not know, and check the rest as strictly as ever ----------------


class Stamp(Schema):
    at: datetime.datetime
    count: int


class Stamped(Contract, name="evo_stamped"):
    stamped = Event(Stamp)

    @rpc(read=True)
    async def stamp(self) -> Stamp: ...


def test_readers_ignore_new_fields_but_check_the_known_ones_strictly() -> None:
    method, event = Stamped.methods["stamp"], Stamped.events["stamped"]
    newer = {"at": "2026-12-05T10:00:00Z", "count": 2, "zone": "UTC"}
    assert (
        method.load_result(newer)
        == event.load(newer)
        == Stamp(at=datetime.datetime(2026, 12, 5, 10, tzinfo=datetime.UTC), count=2)
    )
    with pytest.raises(bus.ValidationError, match="count"):
        event.load({**newer, "count": "2"})  # strict JSON: "2" is not an int
    with pytest.raises(bus.ValidationError, match="zone"):
        event.validate(newer)  # the publisher writes only what its own contract says
