"""Declaring a service: its name, its methods with typed arguments and results, its errors and events.

    class Inventory(Contract, name="inventory"):
        stock_changed = Event(StockChanged)

        @rpc(read=True)
        async def stock(self, *, sku: str) -> Stock: ...

        @rpc(errors=[OutOfStock])
        async def reserve(self, *, order_id: str, sku: str, quantity: int) -> Reservation: ...

A contract holds no implementation (a `Service` does): it is what callers, workers and the
`bus services` command agree on. Arguments are checked on both sides against a pydantic model
built from each signature (bus/targets.py, where the client and the worker find them by name),
the whole contract exports JSON Schema, and `Inventory.client()` is a typed client on the bus.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from .client import Bus, default_bus
from .exceptions import ContractError
from .messages import check_name
from .targets import Event, Method, RpcOptions, lookup_event, lookup_method, register

__all__ = ["Contract", "Event", "Method", "Schema", "contracts", "lookup_event", "lookup_method", "rpc"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound="Contract")

_contracts: dict[str, type[Contract]] = {}


class Schema(BaseModel):
    """Base for the types a contract names: no unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def rpc(
    *, errors: Iterable[type[ContractError]] = (), read: bool = False, retries: int = 3
) -> Callable[[F], F]:
    """Mark a contract method as callable over the bus.

    `errors` are the ContractError subclasses it may raise (re-raised on callers as such);
    `read` marks a method that changes nothing (served in read-only mode); `retries` is how many
    times a `send` of it that fails with an undeclared error is tried again, with exponential
    backoff, before it becomes a dead letter. Calls are never retried: the caller decides.
    """
    options = RpcOptions(tuple(errors), read, retries)
    for error in options.errors:
        if not (isinstance(error, type) and issubclass(error, ContractError)):
            raise TypeError(f"rpc(errors=...) takes ContractError subclasses, not {error!r}.")

    def mark(func: F) -> F:
        func.__bus_rpc__ = options  # type: ignore[attr-defined]
        return func

    return mark


class Contract:
    """Base of a service's contract; subclass it with `name=` and `@rpc` method stubs."""

    name: ClassVar[str]
    methods: ClassVar[dict[str, Method]]
    events: ClassVar[dict[str, Event]]

    def __init_subclass__(cls, *, name: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_name(name, "service name")
        if "." in name:
            raise TypeError(f"Service name {name!r} may not contain '.': it separates service and method.")
        cls.name = name
        cls.methods = {}
        cls.events = {}
        for attribute, value in list(vars(cls).items()):
            options = getattr(value, "__bus_rpc__", None)
            if options is not None:
                cls.methods[attribute] = Method(name, value, options)
                for error in options.errors:
                    error.register(f"{name}.{error.__name__}")
            elif isinstance(value, Event):
                value.target = f"{name}.{attribute}"
                cls.events[attribute] = value
        existing = _contracts.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"Service name {name!r} is already used by {existing.__module__}.{existing.__qualname__}."
            )
        _contracts[name] = cls
        register(name, cls.methods, cls.events)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The whole contract as JSON Schema documents, for `bus services` and other languages."""
        return {
            "service": cls.name,
            "description": inspect.getdoc(cls) or "",
            "methods": {name: method.json_schema() for name, method in cls.methods.items()},
            "events": {
                name: {"description": event.doc, "payload": event.payload.model_json_schema()}
                for name, event in cls.events.items()
            },
        }

    @classmethod
    def client(cls: type[C], bus: Bus | None = None) -> C:
        """A typed client: the contract's own methods, each an `acall` that returns the declared type."""
        target_bus = bus or default_bus
        proxy = cls.__new__(cls)
        for name, method in cls.methods.items():
            setattr(proxy, name, _remote(target_bus, method))
        return proxy


def _remote(bus: Bus, method: Method) -> Callable[..., Any]:
    async def call(*, timeout: float | None = None, **arguments: Any) -> Any:
        return method.load_result(await bus.acall(method.target, timeout=timeout, **arguments))

    call.__name__ = method.name
    call.__doc__ = method.doc
    return call


def contracts() -> dict[str, type[Contract]]:
    """Every contract declared in this process, by service name."""
    return dict(_contracts)
