"""The shape of `bus/`'s imports: no module imports, even late inside a function, a module that
imports it back; and the library imports nothing of the project built on it.

Read from the source with `ast`, so an import inside a function or under `if TYPE_CHECKING:`
counts like one at the top, and so does a string handed to `import_module`/`import_string`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

BUS = Path(__file__).resolve().parents[2] / "bus"
# What is built on the bus: the library may not know any of it.
PROJECT = {"workers", "consumers", "project", "routing", "tests", "bench"}
_DYNAMIC = {"import_module", "import_string", "__import__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BUS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def bus_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(BUS.rglob("*.py"))}


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name `module`'s source imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from . import x` imports the module `x` when there is one, else a name of the package:
            # the longest prefix that is a module says which (see import_graph).
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _DYNAMIC and isinstance(node.args[0].value, str):
                yield node.args[0].value


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(bus module -> bus modules it imports, bus module -> outside top-level packages it imports)."""
    modules = bus_modules()
    inside: dict[str, set[str]] = {name: set() for name in modules}
    outside: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imported(tree, name, path.name == "__init__.py"):
            # `bus.layers.wire` counts as `bus.layers.wire`, not also as its package `bus.layers`.
            known = next((candidate for candidate in _prefixes(imported) if candidate in modules), None)
            if known is not None and known != name:
                inside[name].add(known)
            elif not imported.startswith("bus.") and imported != "bus":
                outside[name].add(imported.partition(".")[0])
    return inside, outside


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    """The reader sees relative, absolute, late and dynamic imports (else the checks below prove nothing)."""
    inside, outside = import_graph()
    assert {"bus.client", "bus.conf", "bus.messages"} <= inside["bus"] | inside["bus.client"]
    assert "bus.layers.wire" in inside["bus.layers.redis"], "absolute import of a sibling module"
    assert "bus.layers.presence" in inside["bus.layers.memory"]
    assert {"django", "channels"} <= outside["bus.client"]
    tree = ast.parse(
        "def late():\n    from .client import Bus\n    import_module('workers.orders')\n"
        "if TYPE_CHECKING:\n    from . import services\n"
    )
    assert {"bus.client.Bus", "workers.orders", "bus.services"} <= set(
        _imported(tree, "bus.contracts", is_package=False)
    )
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_bus_has_no_import_cycles_not_even_inside_packages() -> None:
    inside, _ = import_graph()
    assert cycles(inside) == [], "modules of bus/ that import each other, directly or around a circle"


def test_bus_imports_nothing_of_the_project_built_on_it() -> None:
    _, outside = import_graph()
    reaching = {name: sorted(found & PROJECT) for name, found in outside.items() if found & PROJECT}
    assert reaching == {}, "bus/ is the library: it may not import the shop, its edges or its tests"
