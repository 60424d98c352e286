"""`bus services`, and the signatures it prints: what a caller may send, read off the JSON Schema."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from bus.contracts import contracts

from .base import Action, Options


def type_name(spec: dict[str, Any]) -> str:
    """A JSON Schema type in a few characters: `integer`, `array[OrderItem]`, `string | null`."""
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in spec:
        return " | ".join(type_name(option) for option in spec["anyOf"])
    if "enum" in spec:
        return " | ".join(json.dumps(value) for value in spec["enum"])
    if "const" in spec:
        return json.dumps(spec["const"])
    kind = spec.get("type")
    if kind == "array":
        items = spec.get("items")
        return f"array[{type_name(items)}]" if isinstance(items, dict) and items else "array"
    if isinstance(kind, list):
        return " | ".join(str(part) for part in kind)
    return str(kind) if kind else "any"


def signature(schema: dict[str, Any]) -> str:
    """An object schema as `(sku: string, limit: integer = 20)`: each field, defaults shown."""
    required = set(schema.get("required", []))
    parts = []
    for name, spec in schema.get("properties", {}).items():
        default = "" if name in required else f" = {json.dumps(spec.get('default'))}"
        parts.append(f"{name}: {type_name(spec)}{default}")
    return f"({', '.join(parts)})"


def method_lines(service: dict[str, Any]) -> list[str]:
    """One line per method of a service's schema: signature, read or write, how a send of it is
    delivered, who may call it (when restricted), declared errors."""
    lines = []
    for name, method in service["methods"].items():
        kind = "read" if method["read"] else "write"
        if method.get("callers") is not None:
            kind += f"; callers {', '.join(method['callers'])}"
        errors = f"  raises {', '.join(method['errors'])}" if method["errors"] else ""
        lines.append(
            f"  {service['service']}.{name}{signature(method['arguments'])}  "
            f"[{kind}; send {method['delivery']}]{errors}"
        )
    return lines


def event_lines(service: dict[str, Any]) -> list[str]:
    """One line per event of a service's schema, with its payload's fields and its delivery."""
    return [
        f"  event {service['service']}.{name}{signature(event['payload'])}  [{event['delivery']}]"
        for name, event in service["events"].items()
    ]


def schemas() -> list[dict[str, Any]]:
    """Every declared contract as JSON Schema, by service name."""
    return [contract.json_schema() for _, contract in sorted(contracts().items())]


def services(command: BaseCommand, options: Options) -> None:
    found = schemas()
    if options["json"]:
        command.stdout.write(json.dumps(found, indent=2))
        return
    if not found:
        command.stderr.write("No services: no installed app declares a contract.")
    for service in found:
        summary = service["description"].splitlines()[0] if service["description"] else ""
        command.stdout.write(f"{service['service']}: {summary}")
        lines = method_lines(service) + event_lines(service)
        command.stdout.write("\n".join(lines or ["  (no methods, no events)"]))


def json_flag(parser: CommandParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


SERVICES = Action(
    "services",
    "list services: methods with arguments, events",
    services,
    json_flag,
    description=(
        "Every contract: each method's arguments, read or write, how a send of it is delivered "
        "(at-least-once or at-most-once), declared errors; each event and its delivery."
    ),
)
