"""`bus asyncapi`: the AsyncAPI 3.0 document of the bus (bus/asyncapi.py), as JSON.

The same document the web process serves at /api/asyncapi.json: print it, or write it to a file
for a code generator, a documentation site or a review of what a contract change does to the wire.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from bus.asyncapi import document

from .base import Action, Options, Stop


def asyncapi(command: BaseCommand, options: Options) -> None:
    text = json.dumps(document(), indent=2)
    if not options["output"]:
        command.stdout.write(text)
        return
    path = Path(options["output"])
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        raise Stop(f"Could not write {path}: {exc.strerror or exc}.") from exc
    command.stderr.write(f"Wrote the AsyncAPI document to {path}.")


def arguments(parser: CommandParser) -> None:
    parser.add_argument("--output", "-o", metavar="FILE", help="write it to FILE instead of printing it")


ASYNCAPI = Action(
    "asyncapi",
    "print the AsyncAPI 3.0 document of the bus",
    asyncapi,
    arguments,
    description=(
        "The AsyncAPI 3.0 document of the bus, built from the contracts: each domain's channel, "
        "every call, command and event with its payload and error replies, each method's delivery "
        "and contract version. The web process serves the same at /api/asyncapi.json."
    ),
)
