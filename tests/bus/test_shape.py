"""The shape of `bus/`: small modules and functions, and a public API that moves only on purpose."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import bus
from bus import client, contracts

BUS = Path(__file__).resolve().parents[2] / "bus"
MODULE_LINES = 450
# A function, with its decorators; or a statement at module level, which is how a data literal
# (a table, a schema) would grow past it.
DEFINITION_LINES = 60


def _lines(node: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(decorator.lineno for decorator in decorators)])
    return (node.end_lineno or node.lineno) - start + 1


def long_definitions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = [
        f"{node.name} ({_lines(node)} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _lines(node) > DEFINITION_LINES
    ]
    found += [
        f"line {node.lineno} ({_lines(node)} lines)"
        for node in tree.body
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and _lines(node) > DEFINITION_LINES
    ]
    return found


def test_no_module_of_bus_is_over_450_lines() -> None:
    sizes = {str(path.relative_to(BUS)): len(path.read_text().splitlines()) for path in BUS.rglob("*.py")}
    assert {name: size for name, size in sizes.items() if size > MODULE_LINES} == {}


def test_no_function_or_literal_of_bus_is_over_60_lines() -> None:
    long = {
        str(path.relative_to(BUS)): found
        for path in BUS.rglob("*.py")
        if "migrations" not in path.parts and (found := long_definitions(path))
    }
    assert long == {}


def test_the_measure_counts_decorators_and_literals(tmp_path: Path) -> None:
    source = "@decorated\ndef f():\n    pass\n\nTABLE = {\n" + "    1: 1,\n" * 70 + "}\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert long_definitions(path) == ["line 5 (72 lines)"]
    assert _lines(ast.parse(source).body[0]) == 3


def test_the_public_api_is_what_it_was() -> None:
    assert bus.__all__ == [
        "BadMessage",
        "BrokerUnreachable",
        "Bus",
        "BusError",
        "ChannelFull",
        "Contract",
        "ContractError",
        "DeadlineExceeded",
        "Delivery",
        "Event",
        "Forbidden",
        "InvalidResult",
        "MessageTooLarge",
        "NoWorker",
        "ReadOnly",
        "RemoteError",
        "Schema",
        "Service",
        "Unauthenticated",
        "Unavailable",
        "UnknownTarget",
        "ValidationError",
        "acall",
        "apublish",
        "asend",
        "call",
        "every",
        "publish",
        "rpc",
        "send",
        "subscribe",
    ]
    for name in ("call", "acall", "send", "asend", "publish", "apublish"):
        assert getattr(bus, name) == getattr(client.default_bus, name)
    assert inspect.iscoroutinefunction(bus.acall) and not inspect.iscoroutinefunction(bus.call)
    # Imported from the modules by the project, its tests and its benchmarks.
    declaring = {"Contract", "Event", "Method", "Schema", "contracts", "lookup_event", "lookup_method", "rpc"}
    assert declaring <= set(contracts.__all__)
    assert {"Bus", "default_bus", "run_sync", "translate_broker_errors"} <= set(client.__all__)
