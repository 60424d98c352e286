"""Signed messages: who sent what, checked by real worker processes on a real Redis before anything runs.

The test process is the caller; it signs as the service its settings name (IDENTITY, SIGNING_KEY).
Worker processes trust the public keys of a directory (TRUSTED_KEYS), given as BUS_TEST_SETTINGS.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import stat
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

import bus
from bus import evolution, identity, messages, verification
from bus.cli import Stop
from bus.client import default_bus
from bus.targets import contract_version
from tests.conftest import WorkerProcess, free_port, read_records
from tests.polling import apoll, poll
from workers.payments.contract import Payments

StartWorker = Callable[..., WorkerProcess]
SERVICES = ("web", "operators", "orders", "echo", "payments")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private key per service (web has an old and a new one), and trust directories:
    `trusted` (every public key), `trusted-new` (web's old key removed)."""
    root = tmp_path_factory.mktemp("keys")
    for service in SERVICES:
        identity.new_key(root / "private", service)
    identity.new_key(root / "private", "web")  # web.2: the key web rotates to
    identity.new_key(root / "rogue", "web")  # a web key nobody trusts
    identity.new_key(root / "rogue", "stranger")  # a service nobody trusts
    for name, skip in (("trusted", ""), ("trusted-new", "web.pub")):
        (root / name).mkdir()
        for public in (root / "private").glob("*.pub"):
            if public.name != skip:
                shutil.copy(public, root / name / public.name)
    return root


def sign_as(settings: Any, service: str | None, key: Path | None = None) -> None:
    """This test process signs as `service` with `key` from now on (None: unsigned)."""
    settings.BUS = {**settings.BUS, "IDENTITY": service, "SIGNING_KEY": str(key) if key else None}


def trusting(directory: Path, service: str, key: Path) -> dict[str, str]:
    """The environment of a worker process that trusts `directory` and signs as `service`."""
    overrides = {"TRUSTED_KEYS": str(directory), "IDENTITY": service, "SIGNING_KEY": str(key)}
    return {"BUS_TEST_SETTINGS": json.dumps(overrides)}


def refused(port: int, channel: str, reason: str) -> float:
    """bus_refused_total{channel, reason} as the worker at `port` serves it (0 before the first)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        samples = [sample for family in families for sample in family.samples]
    wanted = {"channel": channel, "reason": reason}
    return next((s.value for s in samples if s.name == "bus_refused_total" and s.labels == wanted), 0.0)


def signed_request(
    target: str, body: dict[str, Any], reply_to: str, timeout: float = 10
) -> messages.Envelope:
    """A request as this process would send it (signed by its identity), to send by hand."""
    request = messages.envelope(
        messages.REQUEST,
        target,
        body,
        deadline=time.time() + timeout,
        reply_to=reply_to,
        headers={"contract": contract_version(target.partition(".")[0])},
    )
    signer = identity.signer()
    assert signer is not None
    signer.sign(request)
    return request


# -- the signed bytes ---------------------------------------------------------------------------


def an_envelope() -> messages.Envelope:
    return messages.envelope(
        messages.REQUEST,
        "echo.add",
        {"b": 2, "a": 1.5, "nested": {"z": [1, 2.0, None, True], "a": "é"}},
        correlation_id="c-1",
        deadline=1_900_000_000.123456,
        reply_to="bus.reply.x",
        headers={"contract": "abc"},
    )


def test_the_signed_bytes_survive_the_wire_and_ignore_the_order_of_keys() -> None:
    envelope = an_envelope()
    before = identity.signed_bytes(envelope, "web", "k1")
    carried = msgpack.unpackb(msgpack.packb(dict(envelope), use_bin_type=True), raw=False)
    assert identity.signed_bytes(carried, "web", "k1") == before
    reordered = {**envelope, "body": dict(reversed(list(envelope["body"].items())))}
    assert identity.signed_bytes(reordered, "web", "k1") == before  # type: ignore[arg-type]
    assert b'"a":1.5,"b":2' in before and b"1900000000.123456" in before and "é".encode() in before


@pytest.mark.parametrize(
    "change",
    [
        {"type": messages.COMMAND},
        {"id": "other"},
        {"correlation_id": "c-2"},
        {"target": "echo.echo"},
        {"body": {"b": 2, "a": 1.5, "nested": {"z": [1, 2, None, True], "a": "é"}}},  # 2.0 -> 2
        {"deadline": 1_900_000_001.123456},
        {"reply_to": "bus.reply.y"},
        {"sent_at": 1.0},
        {"headers": {"contract": "abd"}},
    ],
)
def test_the_signed_bytes_change_with_every_field_that_matters(change: dict[str, Any]) -> None:
    envelope = an_envelope()
    changed = {**envelope, **change}
    assert identity.signed_bytes(changed, "web", "k1") != identity.signed_bytes(envelope, "web", "k1")  # type: ignore[arg-type]
    assert identity.signed_bytes(envelope, "orders", "k1") != identity.signed_bytes(envelope, "web", "k1")
    assert identity.signed_bytes(envelope, "web", "k2") != identity.signed_bytes(envelope, "web", "k1")


def test_a_signature_survives_what_the_bus_itself_changes_on_the_way(keys: Path, settings: Any) -> None:
    """A retry's try count and due time, read-your-writes pins and trace context are not signed."""
    sign_as(settings, "web", keys / "private" / "web.pem")
    settings.BUS = {**settings.BUS, "TRUSTED_KEYS": str(keys / "trusted")}
    envelope = signed_request("echo.add", {"a": 1}, "bus.reply.x")
    headers = {**envelope["headers"], "attempt": 3, "not_before": time.time(), "pins": {"a": 1}, "trace": {}}
    assert verification.verify({**envelope, "headers": headers}, "echo") == "web"


# -- keys and settings --------------------------------------------------------------------------


def test_keys_new_writes_a_private_key_only_its_owner_reads_and_prints_the_key_id(
    tmp_path: Path, settings: Any
) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("bus", "keys", "new", "orders", "--dir", str(tmp_path), stdout=out, stderr=err)
    call_command("bus", "keys", "new", "orders", "--dir", str(tmp_path), stdout=out, stderr=err)
    first, second = out.getvalue().split()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "orders.2.pem", "orders.2.pub", "orders.pem", "orders.pub",
    ]  # fmt: skip
    assert stat.S_IMODE((tmp_path / "orders.pem").stat().st_mode) == 0o600
    settings.BUS = {**settings.BUS, "TRUSTED_KEYS": str(tmp_path)}
    assert sorted((identity.trusted() or {})["orders"]) == sorted([first, second])
    assert f"Key {second} of orders:" in err.getvalue() and "orders.2.pem" in err.getvalue()
    with pytest.raises(Stop, match=r"The service must be a service name of 1 to 64 ASCII letters") as bad:
        call_command("bus", "keys", "new", "or.ders", "--dir", str(tmp_path))
    assert bad.value.returncode == 2

    sign_as(settings, "orders", tmp_path / "orders.2.pem")
    out = io.StringIO()
    call_command("bus", "keys", "show", stdout=out)
    assert out.getvalue().splitlines() == [
        f"signs as: orders with key {second}",
        f"trusts orders: {', '.join(sorted([first, second]))}",
    ]


def test_an_identity_without_its_key_or_an_empty_trust_is_refused_naming_the_fix(
    tmp_path: Path, settings: Any
) -> None:
    sign_as(settings, "web")
    with pytest.raises(ImproperlyConfigured, match=r"IDENTITY'\] and BUS\['SIGNING_KEY'\] go together"):
        identity.signer()
    settings.BUS = {**settings.BUS, "IDENTITY": None, "TRUSTED_KEYS": str(tmp_path)}
    with pytest.raises(ImproperlyConfigured, match=r"holds no <service>.pub files .* bus keys new"):
        identity.trusted()


def test_fewer_callers_is_a_breaking_change_and_more_an_additive_one() -> None:
    method = Payments.credit.method.json_schema()
    anyone = {key: value for key, value in method.items() if key != "callers"}

    def change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
        contract = {"payments": {"methods": {"credit": old}, "events": {}}}
        return [str(c) for c in evolution.compare(contract, {"payments": {"methods": {"credit": new}}})]

    assert change(anyone, method) == ["BREAKING  payments.credit: callers changed from anyone to operators"]
    assert change(method, anyone) == ["additive  payments.credit: callers changed from operators to anyone"]
    wider = {**method, "callers": ["operators", "web"]}
    assert change(method, wider) == [
        "additive  payments.credit: callers changed from operators to operators, web"
    ]
    assert change(wider, method)[0].startswith("BREAKING")


# -- real worker processes ----------------------------------------------------------------------


@pytest.mark.redis
async def test_signed_calls_run_and_unsigned_tampered_or_untrusted_ones_are_refused(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    port = free_port()
    env = trusting(keys / "trusted", "echo", keys / "private" / "echo.pem")
    start_worker(redis_layer, "echo", metrics_port=port, extra_env=env)
    sign_as(settings, "web", keys / "private" / "web.pem")
    assert await bus.acall("echo.record", n=1) is None

    sign_as(settings, None)
    with pytest.raises(bus.Unauthenticated, match=r"echo.record came unsigned, .* BUS\['SIGNING_KEY'\]"):
        await bus.acall("echo.record", n=2)

    sign_as(settings, "web", keys / "private" / "web.pem")
    layer = get_channel_layer()
    tampered = signed_request("echo.record", {"n": 3}, "bus.reply.tampered")
    tampered["body"]["n"] = 4
    await layer.send("echo", tampered)
    reply = await layer.receive("bus.reply.tampered")
    assert (reply["error"]["code"], reply["error"]["details"]["reason"]) == (
        "Unauthenticated",
        "bad_signature",
    )
    assert "signature does not match the message: it was changed after signing" in reply["error"]["message"]

    sign_as(settings, "web", keys / "rogue" / "web.pem")
    with pytest.raises(
        bus.Unauthenticated, match=r"signed by web with key '\w+', which this worker does not trust"
    ):
        await bus.acall("echo.record", n=5)
    sign_as(settings, "stranger", keys / "rogue" / "stranger.pem")
    with pytest.raises(
        bus.Unauthenticated, match=r"signed by 'stranger', a service this worker does not trust"
    ):
        await bus.acall("echo.record", n=6)

    assert read_records(record_dir, "record") == ["1"], "only the signed call ran"
    for reason in ("unsigned", "bad_signature", "unknown_key", "unknown_service"):
        assert refused(port, "echo", reason) == 1, reason
    await default_bus.aclose()


@pytest.mark.redis
async def test_a_key_rotation_loses_no_call_and_the_retired_key_is_then_refused(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker
) -> None:
    echo_key = keys / "private" / "echo.pem"
    worker = start_worker(redis_layer, "echo", extra_env=trusting(keys / "trusted", "echo", echo_key))
    calls: list[str] = []

    async def calling(stop: asyncio.Event) -> None:
        while not stop.is_set():
            calls.append(await bus.acall("echo.echo", text="hi"))

    # web signs with its old key, then its new one, while calls go on: both are trusted.
    sign_as(settings, "web", keys / "private" / "web.pem")
    stop = asyncio.Event()
    caller = asyncio.create_task(calling(stop))
    await apoll(lambda: asyncio.sleep(0, len(calls)), lambda n: n >= 20, what="calls with the old key")
    sign_as(settings, "web", keys / "private" / "web.2.pem")
    before = len(calls)
    await apoll(
        lambda: asyncio.sleep(0, len(calls)), lambda n: n >= before + 20, what="calls with the new key"
    )
    stop.set()
    await caller  # no call failed: it would have raised here

    # The old key is removed from the workers' trust (a rolling restart): now it is refused.
    assert worker.terminate() == 0
    start_worker(redis_layer, "echo", extra_env=trusting(keys / "trusted-new", "echo", echo_key))
    assert await bus.acall("echo.echo", text="new") == "new"
    sign_as(settings, "web", keys / "private" / "web.pem")
    with pytest.raises(bus.Unauthenticated) as old:
        await bus.acall("echo.echo", text="old")
    assert old.value.reason == "unknown_key"
    await default_bus.aclose()


@pytest.mark.redis
async def test_a_captured_request_replayed_after_its_deadline_is_refused(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    port = free_port()
    env = trusting(keys / "trusted", "echo", keys / "private" / "echo.pem")
    start_worker(redis_layer, "echo", metrics_port=port, extra_env=env)
    sign_as(settings, "web", keys / "private" / "web.pem")
    layer = get_channel_layer()
    captured = signed_request("echo.record", {"n": 7}, "bus.reply.replayed", timeout=1.0)
    await layer.send("echo", captured)
    assert (await layer.receive("bus.reply.replayed"))["ok"] is True
    await asyncio.sleep(max(0.0, captured["deadline"] - time.time()) + 0.1)  # type: ignore[operator]
    await layer.send("echo", captured)
    reply = await layer.receive("bus.reply.replayed")
    assert reply["error"]["details"]["reason"] == "expired"
    assert "arrived" in reply["error"]["message"] and "after its deadline" in reply["error"]["message"]
    assert read_records(record_dir, "record") == ["7"], "the replay did not run"
    assert refused(port, "echo", "expired") == 1


@pytest.mark.redis
@pytest.mark.slow
async def test_only_operators_credit_an_account(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker
) -> None:
    port = free_port()
    env = trusting(keys / "trusted", "payments", keys / "private" / "payments.pem")
    start_worker(redis_layer, "payments", metrics_port=port, extra_env=env)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    payments = Payments.client()
    sign_as(settings, "operators", keys / "private" / "operators.pem")
    assert (await payments.credit(customer_id=customer, amount_cents=1_000)).balance_cents == 1_000

    sign_as(settings, "web", keys / "private" / "web.pem")
    with pytest.raises(bus.Forbidden) as forbidden:
        await payments.credit(customer_id=customer, amount_cents=500)
    assert forbidden.value.message == (
        "payments.credit may be called only by operators; this message was signed by 'web'. Call it "
        "from a process whose BUS['IDENTITY'] is one of those, or add 'web' to the callers of "
        "payments.credit in its contract."
    )
    assert forbidden.value.details == {"target": "payments.credit", "callers": ["operators"], "sender": "web"}
    with pytest.raises(bus.Forbidden, match=r"payments\.charge may be called only by orders"):
        await payments.charge(order_id="o-1", customer_id=customer, amount_cents=100)
    assert (await payments.balance(customer_id=customer)).balance_cents == 1_000, "a read: anyone trusted"
    assert refused(port, "payments", "forbidden") == 2

    sign_as(settings, "operators", keys / "private" / "operators.pem")
    assert (await payments.credit(customer_id=customer, amount_cents=500)).balance_cents == 1_500
    await default_bus.aclose()


@pytest.mark.redis
async def test_an_event_signed_by_another_service_is_refused(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    port = free_port()
    env = trusting(keys / "trusted", "echo", keys / "private" / "echo.pem")
    worker = start_worker(redis_layer, "echo", metrics_port=port, extra_env=env)
    sign_as(settings, "web", keys / "private" / "web.pem")
    await bus.apublish("echo.happened", text="forged")
    sign_as(settings, "echo", keys / "private" / "echo.pem")
    await bus.apublish("echo.happened", text="genuine")
    poll(lambda: read_records(record_dir, "event"), what="the genuine event handled")
    poll(lambda: refused(port, "echo", "forbidden"), what="the forged event refused")
    assert read_records(record_dir, "event") == ["genuine"]
    assert "echo.happened may be published only by echo; this one was signed by 'web'" in worker.output()


@pytest.mark.redis
async def test_a_command_retried_by_the_bus_still_verifies(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    """The worker requeues a failed command with its next try count: the signature still holds."""
    env = trusting(keys / "trusted", "echo", keys / "private" / "echo.pem")
    start_worker(redis_layer, "echo", extra_env=env)
    sign_as(settings, "web", keys / "private" / "web.pem")
    await bus.asend("echo.flaky", key="signed", failures=1)
    poll(lambda: len(read_records(record_dir, "flaky-signed")), lambda n: n >= 2, what="the retry to run")


@pytest.mark.redis
@pytest.mark.slow
async def test_a_signed_command_held_by_a_worker_killed_runs_on_the_next_one(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    """A dead worker's durable messages go back to the queue as they were: still signed, still valid."""
    env = trusting(keys / "trusted", "echo", keys / "private" / "echo.pem")
    first = start_worker(redis_layer, "echo", extra_env=env)
    sign_as(settings, "web", keys / "private" / "web.pem")
    await bus.asend("echo.sleep_sync", seconds=2.0, tag="held")
    poll(lambda: read_records(record_dir, "sleeping"), what="the command to start")
    first.kill()
    second = start_worker(redis_layer, "echo", extra_env=env)
    poll(lambda: read_records(record_dir, "slept"), what="the command to run again", timeout=60)
    assert read_records(record_dir, "sleeping") == ["held", "held"]
    assert "Refused" not in second.output()


@pytest.mark.redis
async def test_a_command_that_waited_past_the_max_age_is_refused_unrun(
    keys: Path, settings: Any, redis_layer: str, start_worker: StartWorker, record_dir: Path
) -> None:
    sign_as(settings, "web", keys / "private" / "web.pem")
    await bus.asend("echo.record", n=8)  # queued durably: no worker is alive yet
    await asyncio.sleep(1.2)
    overrides = {
        "TRUSTED_KEYS": str(keys / "trusted"),
        "SIGNATURE_MAX_AGE": 1,
        "IDENTITY": "echo",
        "SIGNING_KEY": str(keys / "private" / "echo.pem"),
    }
    worker = start_worker(redis_layer, "echo", extra_env={"BUS_TEST_SETTINGS": json.dumps(overrides)})
    worker.wait_for_output("longer than BUS['SIGNATURE_MAX_AGE'] = 1 s allows: a replay")
    await bus.asend("echo.record", n=9)
    poll(lambda: read_records(record_dir, "record"), what="the fresh command to run")
    assert read_records(record_dir, "record") == ["9"]


@pytest.mark.redis
def test_a_worker_with_unusable_trusted_keys_stops_at_start_saying_why(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker
) -> None:
    env = {"BUS_TEST_SETTINGS": json.dumps({"TRUSTED_KEYS": str(tmp_path / "nothing-here")})}
    worker = start_worker(redis_layer, "echo", extra_env=env, wait=False)
    assert worker.process.wait(60) != 0
    assert "holds no <service>.pub files (or is not a directory)" in worker.output()
