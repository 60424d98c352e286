"""The AsyncAPI document of the bus (bus/asyncapi.py): valid AsyncAPI 3.0, complete, and true to the wire.

Valid: checked against the official AsyncAPI 3.0.0 JSON Schema (tests/asyncapi/README.md says where
it comes from), plus the rules that schema cannot express (every `$ref` resolves; an operation's
messages are its channel's). Complete: every contract method is a call and a command, every event
is published and received by each subscribing domain, each with the JSON Schema of its contract.
True: the messages a real call, command and event put on the layer match the documented schemas.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from channels.layers import get_channel_layer
from channels.routing import get_default_application
from django.core.management import call_command
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

import bus
from bus import asyncapi
from bus.conf import bus_setting
from bus.contracts import contracts
from bus.exceptions import BusError, ContractError
from bus.services import implementation
from bus.testing import serving
from bus.worker import served_channels
from tests.echo.contract import Echo

ASYNCAPI_SCHEMA = Path(__file__).resolve().parents[1] / "asyncapi" / "asyncapi-3.0.0.schema.json"
SCHEMAS = "#/components/schemas/"


@cache
def _built() -> str:
    return json.dumps(asyncapi.document())


def document() -> dict[str, Any]:
    """The document, as JSON would carry it (a fresh copy for each test to change at will)."""
    built: dict[str, Any] = json.loads(_built())
    return built


@cache
def validator() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads(ASYNCAPI_SCHEMA.read_text()))


def problems(instance: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.instance_path))}: {error.message[:300]}"
        for error in validator().iter_errors(instance)
    ]


def resolve(root: dict[str, Any], ref: str) -> Any:
    """The value a local `$ref` ("#/a/b~1c") points to; KeyError when nothing is there."""
    assert ref.startswith("#/"), ref
    value: Any = root
    for part in ref[2:].split("/"):
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


@cache
def payload_validator(message: str) -> jsonschema_rs.Validator:
    """A validator for a documented message's payload, its `$ref`s resolved in the document."""
    doc = document()
    payload = doc["components"]["messages"][message]["payload"]
    return jsonschema_rs.validator_for({**payload, "components": {"schemas": doc["components"]["schemas"]}})


def test_the_document_is_valid_asyncapi_3_0() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert problems(doc) == []


def test_the_official_schema_refuses_what_asyncapi_3_0_refuses() -> None:
    """The check above is not vacuous: the vendored schema finds each of these mistakes."""
    doc = document()
    wrong = copy.deepcopy(doc)
    wrong["operations"]["echo.add.call"]["action"] = "publish"  # AsyncAPI 2's word
    assert any("echo.add.call" in problem for problem in problems(wrong))
    wrong = copy.deepcopy(doc)
    del wrong["info"]["version"]
    assert problems(wrong)
    wrong = copy.deepcopy(doc)
    wrong["channels"]["echo"]["address"] = 42
    assert problems(wrong)
    wrong = copy.deepcopy(doc)
    wrong["components"]["messages"]["echo.add.request"]["correlationId"] = {"location": "payload.id"}
    assert problems(wrong)


def test_every_reference_resolves_and_operations_use_their_channels_messages() -> None:
    """What the AsyncAPI schema cannot check: no dangling `$ref`; an operation's messages (and its
    reply's) are messages of the channel it names."""
    doc = document()
    for ref in set(refs(doc)):
        resolve(doc, ref)  # raises KeyError when dangling
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)
        reply = operation.get("reply")
        if reply:
            assert all(
                m["$ref"].startswith(reply["channel"]["$ref"] + "/messages/") for m in reply["messages"]
            )


def test_component_schemas_are_json_schema() -> None:
    for name, schema in document()["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def expected_schema(kind: Any, mode: JsonSchemaMode) -> Any:
    """What pydantic says of `kind`, with its definitions written out in place."""
    schema: dict[str, Any] = TypeAdapter(kind).json_schema(mode=mode)
    return written_out(schema, schema)


def written_out(root: dict[str, Any], schema: Any) -> Any:
    """`schema` with every local `$ref` replaced by what it points to (in `root`), so that two
    schemas compare by content whatever their definitions are called (pydantic names a model
    `Item-Input` when another model called Item is written in the other mode)."""
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            return written_out(root, resolve(root, schema["$ref"]))
        return {key: written_out(root, value) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [written_out(root, value) for value in schema]
    return schema


def dereferenced(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    return written_out(doc, schema)


def test_every_method_is_a_call_and_a_command_with_its_contracts_schemas() -> None:
    doc = document()
    messages, operations = doc["components"]["messages"], doc["operations"]
    methods = [method for contract in contracts().values() for method in contract.methods.values()]
    assert {"echo.add", "inventory.reserve", "orders.place", "payments.charge"} <= {m.target for m in methods}
    for method in methods:
        version = contracts()[method.service].version()
        call, send = operations[f"{method.target}.call"], operations[f"{method.target}.send"]
        assert (call["action"], send["action"]) == ("send", "send")
        assert call["channel"] == send["channel"] == {"$ref": f"#/channels/{method.service}"}
        assert doc["channels"][method.service]["address"] == method.service
        assert call["reply"]["address"] == {
            "location": "$message.payload#/reply_to",
            "description": "The caller's reply channel.",
        }
        assert (call["x-delivery"], send["x-delivery"]) == ("at-most-once", method.delivery.value)
        assert call["x-contract-version"] == send["x-contract-version"] == version
        assert f"Delivered {method.delivery.value}" in send["description"]
        assert f"Contract version {version}" in call["description"]
        assert send["x-retries"] == method.retries and call["x-read"] == method.read
        arguments = doc["components"]["schemas"][f"{method.target}.arguments"]
        assert written_out(doc, arguments) == expected_schema(method.arguments, "validation"), method.target
        for kind in ("request", "command"):
            body = messages[f"{method.target}.{kind}"]["payload"]["allOf"][1]["properties"]["body"]
            assert body == {"$ref": f"{SCHEMAS}{method.target}.arguments"}
        result = messages[f"{method.target}.result"]["payload"]["allOf"][1]["properties"]["result"]
        assert dereferenced(doc, result) == expected_schema(method.result_type, "serialization"), (
            method.target
        )


def test_every_event_is_published_and_received_by_each_subscribing_domain() -> None:
    doc = document()
    events = [event for contract in contracts().values() for event in contract.events.values()]
    assert {"echo.happened", "inventory.stock_changed", "orders.updated"} <= {e.target for e in events}
    subscribed = {
        (target, domain)
        for domain in served_channels(get_default_application())
        for target in getattr(implementation(domain), "subscriptions", {})
    }
    assert ("inventory.stock_changed", "presentation") in subscribed
    for event in events:
        service = event.target.partition(".")[0]
        publish = doc["operations"][f"{event.target}.publish"]
        assert publish["action"] == "send"
        assert doc["channels"][f"events.{event.target}"]["address"] == f"bus.events.{event.target}"
        assert (publish["x-delivery"], publish["x-contract-version"]) == (
            str(event.delivery),
            contracts()[service].version(),
        )
        message = doc["components"]["messages"][event.target]
        body = message["payload"]["allOf"][1]["properties"]["body"]
        assert dereferenced(doc, body) == expected_schema(event.payload, "serialization"), event.target
    receivers = {
        (operation["messages"][0]["$ref"].rpartition("/")[2], operation["channel"]["$ref"].rpartition("/")[2])
        for name, operation in doc["operations"].items()
        if operation["action"] == "receive"
    }
    assert receivers == subscribed


def test_error_replies_name_the_declared_errors_and_every_kind_of_the_bus() -> None:
    doc = document()
    kinds = {error.kind for error in _subclasses(BusError)[1:] if not issubclass(error, ContractError)}
    assert set(asyncapi.bus_error_kinds()) == kinds
    assert {"unavailable", "deadline", "validation", "remote", "unknown", "bad_message"} <= kinds
    for contract in contracts().values():
        for method in contract.methods.values():
            reply = doc["components"]["messages"][f"{method.target}.error"]["payload"]["allOf"][1][
                "properties"
            ]
            named = [ref["$ref"].removeprefix(SCHEMAS) for ref in reply["error"]["oneOf"]]
            declared = [error.qualified_code for error in method.errors]
            assert named == [*declared, *(f"error.{kind}" for kind in sorted(kinds))], method.target
            for code in declared:
                assert doc["components"]["schemas"][code]["properties"]["code"] == {"const": code}
    assert "NoWorker" in doc["components"]["schemas"]["error.unavailable"]["properties"]["code"]["enum"]


def _subclasses(kind: type[BusError]) -> list[type[BusError]]:
    return [kind, *(sub for direct in kind.__subclasses__() for sub in _subclasses(direct))]


@pytest.mark.django_db(transaction=True)
async def test_the_messages_on_the_wire_are_what_the_document_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real call (answered, refused, failing), a command and an event, on the in-memory layer:
    each envelope and reply the layer carries matches its documented message, and no other."""
    doc = document()
    layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
    carried: list[dict[str, Any]] = []
    for name in ("send", "durable_send", "group_send"):
        monkeypatch.setattr(layer, name, _recording(getattr(layer, name), carried))
    async with serving("echo"):
        assert await bus.acall("echo.add", a=1, b=2) == 3
        with pytest.raises(ContractError):
            await bus.acall("echo.refuse", reason="no")
        with pytest.raises(bus.RemoteError):
            await bus.acall("echo.fail", message="boom")
        await bus.asend("echo.record", n=1)
        await bus.apublish("echo.happened", text="hi")
    targets = {message["id"]: str(message["target"]) for message in carried if "target" in message}
    envelopes = [
        name for name, message in doc["components"]["messages"].items() if "Envelope" in json.dumps(message)
    ]
    checked = set()
    for message in carried:
        name = _documented(message, targets)
        checked.add(name)
        wire = json.loads(json.dumps(message))
        assert payload_validator(name).is_valid(wire), (name, wire)
        if message["type"] != "bus.reply":  # a reply is told by the request it answers
            others = [m for m in envelopes if m != name and payload_validator(m).is_valid(wire)]
            assert others == [], (name, others)
    assert {"echo.add.request", "echo.add.result", "echo.refuse.error", "echo.fail.error"} <= checked
    assert {"echo.record.command", "echo.happened"} <= checked


def _recording(send: Any, carried: list[dict[str, Any]]) -> Any:
    async def recorded(channel: str, message: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if str(message.get("type", "")).startswith("bus."):
            carried.append(dict(message))
        return await send(channel, message, *args, **kwargs)

    return recorded


def _documented(message: dict[str, Any], targets: dict[str, str]) -> str:
    """The name of the documented message this one should be."""
    if message["type"] == "bus.reply":
        return f"{targets[message['in_reply_to']]}.{'result' if message['ok'] else 'error'}"
    suffix = {"bus.request": ".request", "bus.command": ".command", "bus.event": ""}[message["type"]]
    return f"{message['target']}{suffix}"


def test_manage_py_bus_asyncapi_prints_the_document_or_writes_it(tmp_path: Path) -> None:
    printed = _run("asyncapi")
    assert json.loads(printed) == document()
    target = tmp_path / "asyncapi.json"
    assert _run("asyncapi", "--output", str(target)) == ""
    assert json.loads(target.read_text()) == document()
    assert Echo.name in document()["channels"]


def _run(*arguments: str) -> str:
    out = io.StringIO()
    call_command("bus", *arguments, stdout=out, stderr=io.StringIO())
    return out.getvalue()
