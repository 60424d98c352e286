"""The AsyncAPI 3.0 document of the bus, built from the contracts as the OpenAPI one is from the routes.

What another team (or language) needs to talk to a domain without reading Python, written nowhere
twice: operations are the contracts' methods and events; payloads their pydantic models' JSON
Schema (`$ref`s rewritten into components/schemas); the envelope the fields of `bus.messages`;
errors the declared ContractErrors and the kinds of `bus.exceptions`; subscribers the routed
Services' `@subscribe`s. Channels: `<service>` (a domain's), `events.<service>.<event>` (what a
publisher sends to), `reply` (`bus.reply.<listener>`). Operations: `<target>.call` (with its
reply), `<target>.send`, `<target>.publish`, `<target>.receive.<domain>`. Extensions: x-delivery,
x-contract-version, x-read, x-retries, each also said in words. `manage.py bus asyncapi` prints it;
the web process serves it at /api/asyncapi.json.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from channels.routing import get_default_application
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from . import exceptions, messages
from .contracts import Contract, contracts
from .services import implementation
from .targets import Delivery, Event, Method
from .worker import served_channels

__all__ = ["ASYNCAPI_VERSION", "bus_error_kinds", "document"]

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
REPLY = "reply"  # the reply channel's key

Schema = dict[str, Any]

INFO_DESCRIPTION = """\
Every message of the service bus: calls (request and reply), commands (no reply) and events (to
every subscribing domain). A message is one envelope (components/schemas/Envelope) whose `body`
holds the arguments or the event's payload; a call is answered on its caller's reply channel by a
Reply matched by `in_reply_to`. Values are JSON-compatible (the Redis layer encodes them with
msgpack); arguments are checked strictly on both sides, and readers of results and events ignore
fields they do not know (rolling deploys).

Extensions: `x-delivery` is what the bus promises a message: commands and events are
at-least-once unless their contract says at-most-once; calls are always at-most-once (their caller
waits, and decides). `x-contract-version` is the fingerprint of the contract (`Contract.version()`)
that every message carries in `headers.contract`. `x-read` marks a method that changes nothing
(served in read-only mode); `x-retries` is how often a failing command or event handler is tried
again before it becomes a dead letter."""

SERVERS: Schema = {
    "redis": {
        "host": "{host}",
        "protocol": "redis",
        "description": "REDIS_URL's Redis (channels-redis; durable channels are Redis streams).",
        "variables": {"host": {"default": "127.0.0.1:6379", "description": "REDIS_URL's host and port."}},
    }
}
CORRELATION_IDS: Schema = {
    "request": {"location": "$message.payload#/id", "description": "A reply's `in_reply_to` names it."},
    "reply": {"location": "$message.payload#/in_reply_to", "description": "The request it answers."},
    "correlation": {"location": "$message.payload#/correlation_id", "description": "One id in every log."},
}


def document() -> dict[str, Any]:
    """The whole document, from the contracts this process declares and the Services its routing
    table (routing.py) serves. Built anew on each call: callers cache it."""
    declared = dict(sorted(contracts().items()))
    bodies, schemas = _payload_schemas(declared)
    built = _Built(declared, bodies)
    for contract in declared.values():
        built.add(contract)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": _info(declared),
        "servers": SERVERS,
        "defaultContentType": "application/msgpack",
        "channels": built.channels,
        "operations": built.operations,
        "components": {
            "schemas": {**_envelope_schemas(), **_error_schemas(declared), **schemas},
            "messages": dict(sorted(built.messages.items())),
            "correlationIds": CORRELATION_IDS,
        },
    }


class _Built:
    """The channels, operations and messages of the document, filled one contract at a time."""

    def __init__(self, declared: dict[str, type[Contract]], bodies: dict[Any, Schema]) -> None:
        self.bodies = bodies
        self.subscribed = _subscribers()
        self.channels: dict[str, Schema] = {REPLY: _reply_channel()}
        self.channels.update({name: _domain_channel(contract) for name, contract in declared.items()})
        self.operations: dict[str, Schema] = {}
        self.messages: dict[str, Schema] = {}

    def add(self, contract: type[Contract]) -> None:
        version = contract.version()
        for method in contract.methods.values():
            self.messages.update(_method_messages(method, self.bodies, version))
            self.operations.update(_method_operations(method, version))
            for kind in ("request", "command"):
                self._listen(contract.name, f"{method.name}.{kind}", f"{method.target}.{kind}")
            for kind in ("result", "error"):
                self._listen(REPLY, f"{method.target}.{kind}", f"{method.target}.{kind}")
        for event in contract.events.values():
            self.messages[event.target] = _event_message(event, self.bodies[event.payload], version)
            self.channels[_group(event)] = _event_channel(event)
            self.operations[f"{event.target}.publish"] = _publish(event, version)
            for domain, retries in self.subscribed.get(event.target, {}).items():
                self._listen(domain, event.target, event.target)
                self.operations[f"{event.target}.receive.{domain}"] = _receive(event, domain, retries)

    def _listen(self, channel: str, key: str, message: str) -> None:
        self.channels[channel]["messages"][key] = {"$ref": MESSAGES + message}


def _info(declared: dict[str, type[Contract]]) -> Schema:
    versions = {name: contract.version() for name, contract in declared.items()}
    fingerprint = hashlib.sha256(repr(sorted(versions.items())).encode()).hexdigest()[:12]
    tags = [
        {"name": name, "description": _summary(inspect.getdoc(c)) or name} for name, c in declared.items()
    ]
    return {
        "title": "django-distributed service bus",
        "version": fingerprint,
        "description": INFO_DESCRIPTION,
        "tags": tags,
        "x-contract-versions": versions,
    }


def _summary(text: str | None) -> str:
    """A docstring's first line ("" for none)."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _subscribers() -> dict[str, dict[str, int]]:
    """Event target -> {subscribing domain: retries}, for the domains routing.py serves."""
    found: dict[str, dict[str, int]] = {}
    for domain in served_channels(get_default_application()):
        service = implementation(domain)
        for target, subscription in (service.subscriptions if service else {}).items():
            found.setdefault(target, {})[domain] = subscription.retries
    return found


def _payload_schemas(declared: dict[str, type[Contract]]) -> tuple[dict[Any, Schema], dict[str, Schema]]:
    """The schema of every body (arguments as a worker accepts them, results and events as they
    are written) by type, and the definitions they refer to by component name: an argument model
    is named `<service>.<method>.arguments`."""
    kinds: dict[tuple[Any, JsonSchemaMode], None] = {}
    for contract in declared.values():
        for method in contract.methods.values():
            kinds[method.arguments, "validation"] = None
            kinds[method.result_type, "serialization"] = None
        kinds.update({(event.payload, "serialization"): None for event in contract.events.values()})
    generated, definitions = TypeAdapter.json_schemas(
        [(key, key[1], TypeAdapter(key[0])) for key in kinds], ref_template=SCHEMAS + "{model}"
    )
    methods = [method for contract in declared.values() for method in contract.methods.values()]
    renames = {
        generated[(m.arguments, "validation"), "validation"]["$ref"]: f"{SCHEMAS}{m.target}.arguments"
        for m in methods
    }
    bodies = {key[0][0]: _renamed(schema, renames) for key, schema in generated.items()}
    schemas = {
        renames.get(SCHEMAS + name, SCHEMAS + name).removeprefix(SCHEMAS): _renamed(schema, renames)
        for name, schema in definitions.get("$defs", {}).items()
    }
    return bodies, dict(sorted(schemas.items()))


def _renamed(schema: Any, renames: dict[str, str]) -> Any:
    if isinstance(schema, dict):
        return {k: renames.get(v, v) if k == "$ref" else _renamed(v, renames) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_renamed(value, renames) for value in schema]
    return schema


def _object(description: str, required: Any, **fields: tuple[Any, str]) -> Schema:
    """An object schema; each field is (its JSON type, or a schema; its description)."""
    properties = {
        name: (kind if isinstance(kind, dict) else {"type": kind}) | ({"description": text} if text else {})
        for name, (kind, text) in fields.items()
    }
    return {"type": "object", "description": description, "required": [*required], "properties": properties}


def _envelope_schemas() -> dict[str, Schema]:
    """The envelope, the reply, the error and the headers: the fields of bus.messages."""
    headers, error = {"$ref": SCHEMAS + "Headers"}, {"$ref": SCHEMAS + "ErrorBody"}
    return {
        "Envelope": _object(
            inspect.getdoc(messages.Envelope) or "",
            messages.Envelope.__annotations__,
            type=({"enum": list(messages.ENVELOPE_TYPES)}, "A call, a command or an event."),
            id=("string", "A new uuid4 hex; a retry or a redelivery keeps it."),
            correlation_id=("string", "Inherited from the message being handled, else its id."),
            target=("string", "'service.method' or 'service.event'."),
            body=("object", "The arguments, or the event's payload."),
            deadline=(["number", "null"], "Unix time after which a worker drops a call; null otherwise."),
            reply_to=(["string", "null"], "The caller's reply channel; null but for calls."),
            sent_at=("number", "Unix time it was sent."),
            headers=(headers, ""),
        ),
        "Reply": _object(
            inspect.getdoc(messages.Reply) or "",
            messages.Reply.__annotations__,
            type=({"const": messages.REPLY}, ""),
            id=("string", "A new uuid4 hex."),
            in_reply_to=("string", "The id of the request it answers."),
            correlation_id=("string", "The request's."),
            ok=("boolean", "A result (true) or an error (false)."),
            result=({}, "The method's result; null with an error."),
            error=({"anyOf": [error, {"type": "null"}]}, "The error; null with a result."),
            headers=(headers, ""),
        ),
        "ErrorBody": _object(
            "An error as it crosses the bus (BusError.to_wire); a caller raises it as its type.",
            messages.ErrorBody.__annotations__,
            kind=("string", "The bus's kind of error; 'contract' for a declared one."),
            code=("string", "The error's class; a declared one's qualified code (inventory.OutOfStock)."),
            message=("string", "What went wrong, for a person."),
            details=("object", "JSON-compatible details (fields, limits)."),
        ),
        "Headers": _object(
            "The envelope's open `headers` (a reply's carry only `pins`); unknown ones are ignored.",
            (),
            contract=("string", "The sender's version of the target's contract (x-contract-version)."),
            pins=({"additionalProperties": {"type": "number"}}, "Read-your-writes: alias -> until."),
            trace=("object", "The OpenTelemetry context (traceparent), with tracing on."),
            attempt=({"type": "integer", "minimum": 1}, "Which try of a retried command or event."),
            not_before=("number", "Unix time when a handed-on retry is due."),
        ),
    }


def _bus_error_classes() -> list[type[exceptions.BusError]]:
    """Every error class of the bus itself (not the declared ContractErrors), in tree order."""
    found: list[type[exceptions.BusError]] = []
    pending = [exceptions.BusError]
    while pending:
        error = pending.pop(0)
        found += [error] if error is not exceptions.BusError else []
        pending += [sub for sub in error.__subclasses__() if sub is not exceptions.ContractError]
    return [error for error in found if error.__module__ == exceptions.__name__]


def bus_error_kinds() -> list[str]:
    """The kinds of the bus's own errors, each a component `error.<kind>` of the document."""
    return sorted({error.kind for error in _bus_error_classes()})


def _error_schemas(declared: dict[str, type[Contract]]) -> dict[str, Schema]:
    """One schema per kind of the bus's errors (`error.<kind>`: the codes of that kind), and one
    per declared ContractError, by its qualified code."""
    kinds: dict[str, list[type[exceptions.BusError]]] = {}
    for error in _bus_error_classes():
        kinds.setdefault(error.kind, []).append(error)
    schemas = {
        f"error.{kind}": _error_schema({"const": kind}, {"enum": [e.__name__ for e in errors]}, errors)
        for kind, errors in kinds.items()
    }
    for contract in declared.values():
        for method in contract.methods.values():
            for e in method.errors:
                schemas[_code(e)] = _error_schema({"const": e.kind}, {"const": _code(e)}, [e])
    return schemas


def _code(error: type[exceptions.ContractError]) -> str:
    return error.qualified_code or error.__name__


def _error_schema(kind: Schema, code: Schema, errors: list[type[exceptions.BusError]]) -> Schema:
    described = "\n".join(f"{error.__name__}: {_summary(inspect.getdoc(error))}" for error in errors)
    own = {"description": described, "properties": {"kind": kind, "code": code}}
    return {"allOf": [{"$ref": SCHEMAS + "ErrorBody"}], **own}


def _envelope(kind: str, target: str, body: Schema, **fields: Schema) -> Schema:
    own = {"type": {"const": kind}, "target": {"const": target}, "body": body, **fields}
    return {"allOf": [{"$ref": SCHEMAS + "Envelope"}, {"properties": own}]}


def _reply(ok: bool, schema: Schema) -> Schema:
    null = {"type": "null"}
    answer = {"result": schema, "error": null} if ok else {"result": null, "error": schema}
    return {"allOf": [{"$ref": SCHEMAS + "Reply"}, {"properties": {"ok": {"const": ok}, **answer}}]}


def _message(name: str, title: str, text: str, payload: Schema, correlation: str, **extra: Any) -> Schema:
    """A message: the envelope's headers, the payload, how it is correlated, and its marks."""
    return {
        "name": name,
        "title": title,
        "summary": _summary(text) or title,
        "description": text or title,
        "headers": {"$ref": SCHEMAS + "Headers"},
        "payload": payload,
        "correlationId": {"$ref": f"#/components/correlationIds/{correlation}"},
        "tags": [{"name": name.partition(".")[0]}],
        **extra,
    }


def _method_messages(method: Method, bodies: dict[Any, Schema], version: str) -> dict[str, Schema]:
    """A method's request and command (its arguments), its result and its error replies."""
    t, arguments = method.target, bodies[method.arguments]
    marks = {"x-contract-version": version, "x-read": method.read}
    request = _envelope(
        messages.REQUEST, t, arguments, reply_to={"type": "string"}, deadline={"type": "number"}
    )
    command = _envelope(messages.COMMAND, t, arguments, reply_to={"type": "null"}, deadline={"type": "null"})
    errors = [{"$ref": SCHEMAS + _code(error)} for error in method.errors]
    errors += [{"$ref": f"{SCHEMAS}error.{kind}"} for kind in bus_error_kinds()]
    declared = ", ".join(map(_code, method.errors)) or "none"
    failed = f"{t} failed: with a declared error ({declared}) or one of the bus's kinds."
    delivery = {"x-delivery": method.delivery.value}
    result = _reply(True, bodies[method.result_type])
    return {
        f"{t}.{kind}": _message(f"{t}.{kind}", title, text, payload, correlation, **extra)
        for kind, title, text, payload, correlation, extra in (
            ("request", f"Call {t}", method.doc, request, "request", marks),
            ("command", f"Command {t}", method.doc, command, "correlation", marks | delivery),
            ("result", f"{t}: result", f"What {t} returns.", result, "reply", {}),
            ("error", f"{t}: error", failed, _reply(False, {"oneOf": errors}), "reply", {}),
        )
    }


def _event_message(event: Event, payload: Schema, version: str) -> Schema:
    envelope = _envelope(
        messages.EVENT, event.target, payload, reply_to={"type": "null"}, deadline={"type": "null"}
    )
    marks = {"x-contract-version": version, "x-delivery": str(event.delivery)}
    return _message(event.target, f"Event {event.target}", event.doc, envelope, "correlation", **marks)


def _group(event: Event) -> str:
    """The key of the channel an event is published to."""
    return f"events.{event.target}"


def _domain_channel(contract: type[Contract]) -> Schema:
    about = (
        f"What {contract.name}'s workers receive: calls, on the channel layer's channel {contract.name!r}; "
        "commands and the events it subscribes to, at least once on its durable channel of the same name "
        "(a Redis stream), at most once on the channel. "
    )
    about += inspect.getdoc(contract) or ""
    return _channel(contract.name, f"{contract.name}'s domain channel", about, tags=[{"name": contract.name}])


def _event_channel(event: Event) -> Schema:
    about = (
        f"The group {event.target} is published to. The bus hands it to the domain channel of every "
        "subscribing domain: their workers join the group while alive, and an at-least-once event is "
        "queued for them even while none is."
    )
    tags = [{"name": event.target.partition(".")[0]}]
    channel = _channel(event.group, f"Event {event.target}", about, tags=tags)
    channel["messages"][event.name] = {"$ref": MESSAGES + event.target}
    return channel


def _reply_channel() -> Schema:
    about = (
        "One per event loop of a process that calls (bus/replies.py), shared by all its calls: a worker "
        "sends each reply to the request's `reply_to`; the caller matches it by `in_reply_to`."
    )
    listener = {"listener": {"description": "A uuid4 hex, new for each event loop."}}
    return _channel("bus.reply.{listener}", "A calling process's reply channel", about, parameters=listener)


def _channel(address: str, title: str, about: str, **extra: Any) -> Schema:
    return {"address": address, "title": title, "description": about, "messages": {}, **extra}


def _operation(action: str, channel: str, message: str, title: str, text: str, **extra: Any) -> Schema:
    """An operation on `channel` with one message (its key in the channel), and its marks."""
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "title": title,
        "summary": _summary(text) or title,
        "description": text,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        **extra,
    }


def _notes(delivery: Delivery | None, version: str = "", retries: int | None = None) -> str:
    """What the extensions say, in words."""
    said = f"Delivered {delivery or Delivery.AT_LEAST_ONCE} (x-delivery)."
    if retries is not None:
        said += f" A failing handler is tried {retries} more time(s) (x-retries), then kept as a dead letter."
    return said + (f" Contract version {version} (x-contract-version)." if version else "")


def _method_operations(method: Method, version: str) -> dict[str, Schema]:
    """`<target>.call`: a request and its reply; `<target>.send`: the same method as a command."""
    t, doc, at_most = method.target, f"{method.doc}\n\n" if method.doc else "", Delivery.AT_MOST_ONCE
    marks = {"tags": [{"name": method.service}], "x-contract-version": version, "x-read": method.read}
    reply = {
        "address": {"location": "$message.payload#/reply_to", "description": "The caller's reply channel."},
        "channel": {"$ref": f"#/channels/{REPLY}"},
        "messages": [{"$ref": f"#/channels/{REPLY}/messages/{t}.{kind}"} for kind in ("result", "error")],
    }
    call_text = doc + "The caller waits for the reply until its deadline. " + _notes(at_most, version)
    send_text = doc + "No reply. " + _notes(method.delivery, version, method.retries)
    return {
        f"{t}.call": _operation(
            "send", method.service, f"{method.name}.request", f"Call {t}", call_text,
            reply=reply, **marks, **{"x-delivery": at_most.value},
        ),
        f"{t}.send": _operation(
            "send", method.service, f"{method.name}.command", f"Send {t} as a command", send_text,
            **marks, **{"x-delivery": method.delivery.value, "x-retries": method.retries},
        ),
    }  # fmt: skip


def _publish(event: Event, version: str) -> Schema:
    service = event.target.partition(".")[0]
    text = (f"{event.doc}\n\n" if event.doc else "") + _notes(event.delivery, version)
    marks = {"tags": [{"name": service}], "x-delivery": str(event.delivery), "x-contract-version": version}
    return _operation("send", _group(event), event.name, f"{service} publishes {event.target}", text, **marks)


def _receive(event: Event, domain: str, retries: int) -> Schema:
    text = f"{domain}'s @subscribe handler of {event.target}.\n\n" + _notes(event.delivery, retries=retries)
    marks = {"tags": [{"name": domain}], "x-delivery": str(event.delivery), "x-retries": retries}
    return _operation("receive", domain, event.target, f"{domain} receives {event.target}", text, **marks)
