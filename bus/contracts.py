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
and the whole contract exports JSON Schema. Calls by the contract's own names are typed, so mypy
checks the arguments and knows what comes back:

    await Inventory.client().reserve(order_id="o-1", sku="A-1", quantity=2)   # async -> Reservation
    Inventory.reserve.call(order_id="o-1", sku="A-1", quantity=2)             # sync  -> Reservation
    Orders.advance.send(order_id="o-1")                                       # a command: its id
"""

from __future__ import annotations

import hashlib
import inspect
import json
import types
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from .client import Bus, default_bus
from .exceptions import ContractError
from .messages import check_name
from .targets import Delivery, Event, Method, RpcOptions, lookup_event, lookup_method, register

__all__ = [
    "Contract",
    "Delivery",
    "Event",
    "Method",
    "RemoteMethod",
    "Schema",
    "contracts",
    "lookup_event",
    "lookup_method",
    "rpc",
]

C = TypeVar("C", bound="Contract")
P = ParamSpec("P")
R = TypeVar("R")

_contracts: dict[str, type[Contract]] = {}


class Schema(BaseModel):
    """Base for the types a contract names: no unknown fields, immutable once built.

    Readers (a caller reading a result, a subscriber reading an event) validate with
    `extra="ignore"` (bus/targets.py): there, fields their contract does not know are dropped, so
    a newer worker or publisher may add fields while older readers still run (a rolling deploy).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def rpc(
    *,
    errors: Iterable[type[ContractError]] = (),
    read: bool = False,
    retries: int = 3,
    delivery: Delivery | None = None,
    callers: Iterable[str] | None = None,
) -> Callable[[Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]], RemoteMethod[P, R]]:
    """Mark a contract method as callable over the bus.

    `errors` are the ContractError subclasses it may raise (re-raised on callers as such);
    `read` marks a method that changes nothing (served in read-only mode); `retries` is how many
    times a `send` of it that fails with an undeclared error is tried again, with exponential
    backoff, before it becomes a dead letter. Calls are never retried: the caller decides.
    `delivery` is how a `send` of it is delivered (see Delivery; by default its contract's).
    `callers` are the services (BUS["IDENTITY"]) whose signed messages may call or send it (by
    default its contract's; without either, any); workers that verify signatures refuse others
    with Forbidden.
    """
    options = RpcOptions(tuple(errors), read, retries, delivery, _services(callers, "rpc(callers=...)"))
    for error in options.errors:
        if not (isinstance(error, type) and issubclass(error, ContractError)):
            raise TypeError(f"rpc(errors=...) takes ContractError subclasses, not {error!r}.")

    def mark(func: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> RemoteMethod[P, R]:
        return RemoteMethod(func, options)

    return mark


class RemoteMethod(Generic[P, R]):
    """An `@rpc` method of a contract, called by its declared name and types from sync code.

    `Inventory.reserve.call(...)` is the sync twin of `await Inventory.client().reserve(...)`:
    mypy checks the arguments against the declaration and knows the result's type, where
    `bus.call("inventory.reserve", ...)` takes any keywords and returns untyped JSON. Both go
    through the default bus; `Contract.client(bus)` reaches another one.
    """

    def __init__(self, func: Callable[..., Any], options: RpcOptions) -> None:
        self.func = func
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.options = options
        self._method: Method | None = None

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Self: ...

    @overload
    def __get__(self, instance: Contract, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, instance: Contract | None, owner: type[Any]) -> Any:
        # On a client (Contract.client()) its own remote callables shadow this: they are instance attributes.
        return self if instance is None else types.MethodType(self.func, instance)

    @property
    def method(self) -> Method:
        """What the bus knows of it: target, argument model, result type (set by its Contract)."""
        if self._method is None:
            raise TypeError(
                f"{self.func.__qualname__} is not part of a contract: declare it with @rpc() in a "
                "`class ...(Contract, name=...)` body, and call it through that class."
            )
        return self._method

    def call(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call it and wait for the result, as the declared type; from sync code (bus.call's rules)."""
        method = self.method
        result: R = method.load_result(default_bus.call(method.target, **_keywords(method, args, kwargs)))
        return result

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Send it as a command (no reply) from sync code; the message id."""
        method = self.method
        return default_bus.send(method.target, **_keywords(method, args, kwargs))

    async def asend(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Send it as a command (no reply) from async code; the message id."""
        method = self.method
        return await default_bus.asend(method.target, **_keywords(method, args, kwargs))


def _services(names: Iterable[str] | None, where: str) -> tuple[str, ...] | None:
    """Service identities as a contract names them (callers, publishers); None stays None."""
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError(f"{where} takes a list of service names, not the string {names!r}.")
    listed = tuple(names)
    for name in listed:
        check_name(name, f"service name in {where}")
    return listed


def _keywords(method: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise TypeError(f"{method.target} takes keyword arguments only, not {len(args)} positional.")
    return kwargs


class Contract:
    """Base of a service's contract; subclass it with `name=` and `@rpc` method stubs."""

    name: ClassVar[str]
    methods: ClassVar[dict[str, Method]]
    events: ClassVar[dict[str, Event]]

    def __init_subclass__(
        cls,
        *,
        name: str,
        delivery: Delivery = Delivery.AT_LEAST_ONCE,
        callers: Iterable[str] | None = None,
        publishers: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """`delivery` is the default of its sends and events (see Delivery); each may say its own.
        `callers` is the default of its methods' `@rpc(callers=...)`; `publishers` the services
        whose signed events subscribers accept (by default the service itself)."""
        super().__init_subclass__(**kwargs)
        check_name(name, "service name")
        if "." in name:
            raise TypeError(f"Service name {name!r} may not contain '.': it separates service and method.")
        cls.name = name
        cls.methods = {}
        cls.events = {}
        default_callers = _services(callers, f"{name}'s callers=")
        for attribute, value in list(vars(cls).items()):
            if isinstance(value, RemoteMethod):
                value._method = cls.methods[attribute] = Method(
                    name, value.func, value.options, delivery, default_callers
                )
                for error in value.options.errors:
                    error.register(f"{name}.{error.__name__}")
            elif isinstance(value, Event):
                value.target = f"{name}.{attribute}"
                value.delivery = value.delivery or delivery
                value.publishers = _services(publishers, f"{name}'s publishers=") or (name,)
                cls.events[attribute] = value
        existing = _contracts.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"Service name {name!r} is already used by {existing.__module__}.{existing.__qualname__}."
            )
        _contracts[name] = cls
        register(name, cls.methods, cls.events, version=cls.version())

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The whole contract as JSON Schema documents, for `bus services` and other languages."""
        return {
            "service": cls.name,
            "description": inspect.getdoc(cls) or "",
            "methods": {name: method.json_schema() for name, method in cls.methods.items()},
            "events": {
                name: {
                    "description": event.doc,
                    "delivery": str(event.delivery),
                    "payload": event.payload.model_json_schema(),
                }
                for name, event in cls.events.items()
            },
        }

    @classmethod
    def version(cls) -> str:
        """A fingerprint of what the contract promises (its schema without descriptions): workers
        announce it with their heartbeat, callers send it with every message, so `bus status`
        shows a domain that runs two versions, and errors name both."""
        canonical = json.dumps(
            _without_descriptions(cls.json_schema()), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @classmethod
    def client(cls: type[C], bus: Bus | None = None) -> C:
        """A typed client: the contract's own methods, each an `acall` that returns the declared type.

        Its sync twin needs no client: `Inventory.reserve.call(...)` (see RemoteMethod).
        """
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


def _without_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_descriptions(value) for key, value in schema.items() if key != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(value) for value in schema]
    return schema


def contracts() -> dict[str, type[Contract]]:
    """Every contract declared in this process, by service name."""
    return dict(_contracts)
