"""The domains' contracts: each shared word and each state spelled once, and domains called by contract.

What is about the code (who imports whom, how a domain is called) is read from the source with
`ast`; what is about values (limits, choices) from the live classes.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from enum import StrEnum
from importlib import import_module
from pathlib import Path
from typing import Any

from django.db import models

from workers import vocabulary
from workers.inventory import models as inventory_models
from workers.inventory.contract import HoldState, Inventory, ReservationState
from workers.orders import models as orders_models
from workers.orders.contract import TERMINAL_STATES, OrderItem, Orders, OrderState, StepName
from workers.payments import models as payments_models
from workers.payments.contract import ChargeState, LedgerKind, Payments

WORKERS = Path(__file__).resolve().parents[2] / "workers"
DOMAINS = ("inventory", "orders", "payments")
# The bus's ways to name a target by string; a domain's own code names its contract's members.
_BY_NAME = {"call", "acall", "send", "asend", "publish", "apublish", "emit"}


def sources() -> Iterator[tuple[str, Path]]:
    """Every module of workers/ but migrations (generated), by dotted name."""
    for path in sorted(WORKERS.rglob("*.py")):
        if "migrations" not in path.parts:
            yield ".".join(path.relative_to(WORKERS.parent).with_suffix("").parts), path


def absolute_imports(path: Path) -> set[str]:
    """The modules `path` imports by absolute name (a domain's own modules it imports relatively)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_a_domain_meets_another_only_through_contract_modules() -> None:
    reached: dict[str, list[str]] = defaultdict(list)
    for module, path in sources():
        domain = module.split(".")[1]
        for name in absolute_imports(path):
            parts = name.split(".")
            if parts[0] != "workers" or len(parts) < 2 or parts[1] in (domain, "vocabulary"):
                continue
            if parts[1] in DOMAINS and parts[2:3] == ["contract"]:
                continue
            if parts[1] in DOMAINS or len(parts) > 2:
                reached[module].append(name)
    assert dict(reached) == {}, "import another domain's contract.py, or workers.vocabulary"
    for domain in DOMAINS:
        mine = absolute_imports(WORKERS / domain / "contract.py")
        assert {name for name in mine if name.startswith("workers.")} <= {
            "workers.vocabulary",
            *(f"workers.vocabulary.{word}" for word in vocabulary.__all__),
        }, f"{domain}'s contract imports the shared vocabulary and no domain"


def test_production_code_calls_domains_by_their_contracts_not_by_name() -> None:
    """`Inventory.reserve.call(...)`, typed, rather than `bus.call("inventory.reserve", ...)`."""
    by_name = []
    for module, path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            strings = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
            if name in _BY_NAME and any(isinstance(value, str) and "." in value for value in strings):
                by_name.append(f"{module}:{node.lineno} {name}({strings[0]!r}, ...)")
    assert by_name == []


def test_nothing_in_workers_silences_the_type_checker() -> None:
    ignored = [
        f"{module}:{number}"
        for module, path in sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line
    ]
    assert ignored == []


def _argument_schemas(argument: str) -> dict[str, Any]:
    """The JSON Schema of `argument` in every contract method that takes it, by method."""
    found = {}
    for contract in (Inventory, Orders, Payments):
        for method in contract.methods.values():
            properties = method.arguments.model_json_schema()["properties"]
            if argument in properties:
                found[method.target] = {k: v for k, v in properties[argument].items() if k != "title"}
    return found


def test_an_id_has_the_same_limits_in_every_contract_that_takes_it() -> None:
    """OrderId was 1-32 characters in orders and 1-64 in inventory and payments; now 1-64 everywhere."""
    for argument, users in (("order_id", 5), ("customer_id", 7), ("sku", 3)):
        schemas = _argument_schemas(argument)
        assert len(schemas) >= users, schemas
        distinct = {repr(sorted(schema.items())) for schema in schemas.values()}
        assert len(distinct) == 1, schemas
    assert _argument_schemas("order_id")["orders.get"] == {"maxLength": 64, "minLength": 1, "type": "string"}
    line = {k: v for k, v in OrderItem.model_json_schema()["properties"]["sku"].items() if k != "title"}
    assert line == _argument_schemas("sku")["inventory.stock"], "an order line's SKU is inventory's"
    for domain in DOMAINS:
        module = import_module(f"workers.{domain}.contract")
        for word in vocabulary.__all__:
            assert getattr(module, word, getattr(vocabulary, word)) is getattr(vocabulary, word), (
                f"workers.{domain}.contract spells {word} again"
            )


# Each stored state and kind, and the contract enum that is its one spelling.
STATES: list[tuple[type[models.Model], str, type[StrEnum]]] = [
    (orders_models.Order, "state", OrderState),
    (orders_models.Step, "name", StepName),
    (inventory_models.OrderHold, "state", HoldState),
    (inventory_models.Reservation, "state", ReservationState),
    (payments_models.OrderCharge, "state", ChargeState),
    (payments_models.LedgerEntry, "kind", LedgerKind),
]


def test_each_state_is_declared_once_in_its_contract_and_is_its_models_choices() -> None:
    for model, field, enum in STATES:
        stored = getattr(model._meta.get_field(field), "choices", None)
        assert stored == vocabulary.choices(enum), f"{model.__name__}.{field}"
        nested = [name for name, value in vars(model).items() if isinstance(value, type(models.Choices))]
        assert nested == [], f"{model.__name__} spells its states again"
    with_choices = {
        (model.__name__, field.name)
        for module in (orders_models, inventory_models, payments_models)
        for model in vars(module).values()
        if isinstance(model, type) and issubclass(model, models.Model) and not model._meta.abstract
        for field in model._meta.get_fields()
        if getattr(field, "choices", None)
    }
    assert with_choices == {(model.__name__, field) for model, field, _ in STATES}
    assert set(TERMINAL_STATES) == {OrderState.CONFIRMED, OrderState.FAILED}
