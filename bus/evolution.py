"""Contract evolution: which changes a rolling deploy survives, checked against a snapshot.

During a deploy the old and the new version of a domain run side by side, so each change to a
contract is read from both sides. What the bus lets through in both directions (additive):
a new method or event, a new optional argument (sent only when a caller sets it), a new field
in a result or an event (readers ignore fields they do not know). What breaks a caller, worker
or subscriber still on the other version (breaking): a service, method or event removed; an
argument removed or renamed, or new and required, or required where it was optional; a field
removed or renamed, or optional where readers needed it; a type changed (only widening an
argument, or narrowing a result, to a union that contains the old type is allowed); a changed
error list, read flag or delivery; callers narrowed (`@rpc(callers=)`: a service no longer
listed, or a list where anyone could call; a wider list is additive).

`manage.py bus contracts check` compares the contracts in the code with the committed snapshot
(BUS["CONTRACTS_SNAPSHOT"]) and fails naming each breaking change; `bus contracts snapshot`
records the code's contracts, for additive changes and for a break made on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from .conf import bus_setting
from .contracts import contracts

__all__ = ["Change", "compare", "current", "read_snapshot", "snapshot_path", "write_snapshot"]

Schema = dict[str, Any]

# Keys of a JSON Schema that say nothing about what a value may be.
_NOTES = frozenset({"title", "description", "default", "examples"})


@dataclass(frozen=True)
class Change:
    where: str
    what: str
    breaking: bool

    def __str__(self) -> str:
        return f"{'BREAKING' if self.breaking else 'additive'}  {self.where}: {self.what}"


def current() -> dict[str, Schema]:
    """Every contract declared in this process, as `Contract.json_schema()`, by service."""
    return {name: contract.json_schema() for name, contract in sorted(contracts().items())}


def snapshot_path() -> Path:
    path = Path(bus_setting("CONTRACTS_SNAPSHOT"))
    return path if path.is_absolute() else Path(getattr(settings, "BASE_DIR", Path.cwd())) / path


def read_snapshot() -> dict[str, Schema] | None:
    path = snapshot_path()
    if not path.exists():
        return None
    loaded: dict[str, Schema] = json.loads(path.read_text())
    return loaded


def write_snapshot(schemas: dict[str, Schema]) -> Path:
    path = snapshot_path()
    path.write_text(json.dumps(schemas, indent=2, sort_keys=True) + "\n")
    return path


def compare(old: dict[str, Schema], new: dict[str, Schema]) -> list[Change]:
    """Every change from the `old` contracts to the `new`, breaking or not."""
    changes = [Change(name, "service removed", True) for name in sorted(set(old) - set(new))]
    changes += [Change(name, "service added", False) for name in sorted(set(new) - set(old))]
    for name in sorted(set(old) & set(new)):
        changes += _compare_service(name, old[name], new[name])
    return changes


def _compare_service(service: str, old: Schema, new: Schema) -> list[Change]:
    changes: list[Change] = []
    for kind, compare in (("methods", _compare_method), ("events", _compare_event)):
        before, after = old.get(kind, {}), new.get(kind, {})
        noun = kind[:-1]
        changes += [
            Change(f"{service}.{n}", f"{noun} removed", True) for n in sorted(set(before) - set(after))
        ]
        changes += [
            Change(f"{service}.{n}", f"{noun} added", False) for n in sorted(set(after) - set(before))
        ]
        for name in sorted(set(before) & set(after)):
            changes += compare(f"{service}.{name}", before[name], after[name])
    return changes


def _compare_method(where: str, old: Schema, new: Schema) -> list[Change]:
    changes: list[Change] = []
    for flag in ("read", "delivery"):
        if old.get(flag) != new.get(flag):
            changes.append(Change(where, f"{flag} changed from {old.get(flag)} to {new.get(flag)}", True))
    if sorted(old.get("errors", [])) != sorted(new.get("errors", [])):
        changes.append(Change(where, f"errors changed from {old.get('errors')} to {new.get('errors')}", True))
    # Callers (absent: anyone): one no longer listed is refused, a newly listed one harms nobody.
    callers = old.get("callers"), new.get("callers")
    if callers[0] != callers[1]:
        narrowed = callers[1] is not None and (callers[0] is None or bool(set(callers[0]) - set(callers[1])))
        shown = [", ".join(names) if names is not None else "anyone" for names in callers]
        changes.append(Change(where, f"callers changed from {shown[0]} to {shown[1]}", narrowed))
    # Arguments are written by callers and read by workers; results the other way round.
    changes += _compare_values(
        f"{where}(arguments)", _inline(old["arguments"]), _inline(new["arguments"]), True
    )
    changes += _compare_values(f"{where} -> result", _inline(old["result"]), _inline(new["result"]), False)
    return changes


def _compare_event(where: str, old: Schema, new: Schema) -> list[Change]:
    changes: list[Change] = []
    if old.get("delivery") != new.get("delivery"):
        changes.append(
            Change(where, f"delivery changed from {old.get('delivery')} to {new.get('delivery')}", True)
        )
    return changes + _compare_values(
        f"event {where}", _inline(old["payload"]), _inline(new["payload"]), False
    )


def _compare_values(where: str, old: Schema, new: Schema, new_reads: bool) -> list[Change]:
    """`new_reads`: the new side reads what the old side writes (arguments); else the reverse."""
    if _is_object(old) and _is_object(new):
        return _compare_objects(where, old, new, new_reads)
    if old.get("type") == "array" and new.get("type") == "array":
        return _compare_values(f"{where}[]", old.get("items", {}), new.get("items", {}), new_reads)
    if old == new:
        return []
    reader, writer = (new, old) if new_reads else (old, new)
    if writer in reader.get("anyOf", []):
        return [Change(where, f"type widened from {_shown(old)} to {_shown(new)}", False)]
    return [Change(where, f"type changed from {_shown(old)} to {_shown(new)}", True)]


def _compare_objects(where: str, old: Schema, new: Schema, new_reads: bool) -> list[Change]:
    fields_old, fields_new = old.get("properties", {}), new.get("properties", {})
    required_old, required_new = set(old.get("required", [])), set(new.get("required", []))
    noun = "argument" if new_reads and where.endswith("(arguments)") else "field"
    changes: list[Change] = []
    for name in sorted(set(fields_old) - set(fields_new)):
        # A reader that forbids it (a worker) or needs it (a reader that required it) breaks.
        breaking = new_reads or name in required_old
        changes.append(Change(f"{where}.{name}", f"{noun} removed (or renamed)", breaking))
    for name in sorted(set(fields_new) - set(fields_old)):
        if new_reads and name in required_new:
            changes.append(
                Change(f"{where}.{name}", f"new required {noun}: older callers do not send it", True)
            )
        else:
            changes.append(Change(f"{where}.{name}", f"{noun} added", False))
    for name in sorted(set(fields_old) & set(fields_new)):
        if new_reads and name in required_new - required_old:
            changes.append(Change(f"{where}.{name}", f"{noun} is now required", True))
        if not new_reads and name in required_old - required_new:
            changes.append(
                Change(f"{where}.{name}", f"{noun} may now be missing; older readers need it", True)
            )
        changes += _compare_values(f"{where}.{name}", fields_old[name], fields_new[name], new_reads)
    return changes


def _is_object(schema: Schema) -> bool:
    return schema.get("type") == "object" and "properties" in schema


def _inline(schema: Schema, defs: Schema | None = None, depth: int = 0) -> Any:
    """`schema` with its `$ref`s replaced by their definitions and notes (titles, descriptions,
    defaults) left out, so that two versions compare by what they allow."""
    defs = schema.get("$defs", {}) if defs is None and isinstance(schema, dict) else (defs or {})
    if depth > 32:
        return schema  # a recursive type: compared as written below this depth
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs.get(ref.removeprefix("#/$defs/"), {}), defs, depth + 1)
        return {
            key: _inline(value, defs, depth + 1)
            for key, value in schema.items()
            if key not in _NOTES and key != "$defs"
        }
    if isinstance(schema, list):
        return [_inline(value, defs, depth + 1) for value in schema]
    return schema


def _shown(schema: Schema) -> str:
    return json.dumps(schema, sort_keys=True)[:120]
