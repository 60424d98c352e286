"""`bus call`, `bus send` and `bus publish`: one message from a shell, its answer as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from bus.client import default_bus
from bus.contracts import contracts

from .base import Action, Options, Stop, per_process_layer, per_process_note
from .listing import event_lines, method_lines


def parse_arguments(text: str) -> dict[str, Any]:
    """The JSON object given on the command line, or exit 2 saying what is wrong with it."""
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Stop(
            f'The arguments are not valid JSON ({exc}); give a JSON object, e.g. \'{{"sku": "A-1"}}\'.',
            returncode=2,
        ) from exc
    if not isinstance(arguments, dict):
        raise Stop(f"The arguments must be a JSON object, not {type(arguments).__name__}.", returncode=2)
    return arguments


def require_member(action: str, target: str) -> None:
    """A known service named without a method (or event): exit 2, listing what it has."""
    service, _, member = target.partition(".")
    contract = contracts().get(service)
    if contract is None or member:
        return  # a whole target, or an unknown service: the bus says what is wrong (exit 8)
    schema = contract.json_schema()
    if action == "publish":
        what, lines, has = "an event", event_lines(schema), "publishes"
    else:
        what, lines, has = "a method", method_lines(schema), "has"
    plural = what.split()[-1] + "s"
    listing = [f"{service} {has} these {plural}:", *lines] if lines else [f"{service} {has} no {plural}."]
    raise Stop(f"`bus {action} {target}` names a service, not {what}; " + "\n".join(listing), returncode=2)


def _runner(action: str, send: Callable[..., Any]) -> Callable[[BaseCommand, Options], None]:
    """The handler of call, send or publish: check the target, send, print the JSON answer."""

    def run(command: BaseCommand, options: Options) -> None:
        require_member(action, options["target"])
        arguments = parse_arguments(options["arguments"])
        extra = {"timeout": options["timeout"]} if action == "call" else {}
        result = send(options["target"], **extra, **arguments)
        if action == "publish" and per_process_layer():
            command.stderr.write(per_process_note("the event reaches only subscribers in this process"))
        command.stdout.write(json.dumps(result if action == "call" else {"message_id": result}, indent=2))

    return run


def _arguments(what: str, timeout: bool) -> Callable[[CommandParser], None]:
    def add(parser: CommandParser) -> None:
        parser.add_argument("target", help=f"service.{what}; a service alone lists its {what}s")
        parser.add_argument("arguments", nargs="?", default="{}", help="a JSON object of arguments")
        if timeout:
            parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the reply")

    return add


CALL = Action(
    "call",
    "call a method and print its JSON result",
    _runner("call", default_bus.call),
    _arguments("method", timeout=True),
    description="Call service.method with a JSON object of arguments; print the result as JSON.",
    exit_codes=(0, 2, 3, 4, 5, 6, 7, 8, 9),
)
SEND = Action(
    "send",
    "send a command (no reply); print its message id",
    _runner("send", default_bus.send),
    _arguments("method", timeout=False),
    description="Send service.method as a command: a worker runs it later; nothing is returned.",
    exit_codes=(0, 2, 3, 7, 8),
)
PUBLISH = Action(
    "publish",
    "publish an event; print its message id",
    _runner("publish", default_bus.publish),
    _arguments("event", timeout=False),
    description="Publish service.event with a JSON payload to every subscriber.",
    exit_codes=(0, 2, 3, 7, 8),
)
