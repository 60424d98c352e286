"""Declaring a service: its name, its methods with typed arguments and results, its errors and events.

    class Inventory(Contract, name="inventory"):
        stock_changed = Event(StockChanged)

        @rpc(read=True)
        async def stock(self, *, sku: str) -> Stock: ...

        @rpc(errors=[OutOfStock])
        async def reserve(self, *, order_id: str, sku: str, quantity: int) -> Reservation: ...

A contract holds no implementation (a `Service` does): it is what callers, workers and the
`bus services` command agree on. Arguments are checked on both sides against a pydantic model
built from each signature, and the whole contract exports JSON Schema.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from .exceptions import ContractError, UnknownTarget, ValidationError
from .messages import check_name

__all__ = ["Contract", "Event", "Method", "Schema", "contracts", "lookup_event", "lookup_method", "rpc"]

# Keywords of bus.call itself; a contract argument with one of these names could never be passed.
RESERVED_ARGUMENTS = frozenset({"timeout"})

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound="Contract")
M = TypeVar("M", bound=BaseModel)

_contracts: dict[str, type[Contract]] = {}


class Schema(BaseModel):
    """Base for the types a contract names: no unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _validation_error(what: str, exc: pydantic.ValidationError) -> ValidationError:
    errors = [
        {"field": ".".join(str(part) for part in error["loc"]) or "(root)", "message": error["msg"]}
        for error in exc.errors(include_url=False)
    ]
    listed = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    return ValidationError(f"Invalid {what}: {listed}.", errors=errors)


def _strict_json(model: type[M], data: dict[str, Any], what: str) -> M:
    """Validate as JSON, strictly: "2" is not an int, but an ISO string is a datetime.

    The same rule on both sides of the bus: a caller may pass Python values (datetimes, models)
    or their JSON forms (from the shell, from the wire), and a worker sees the wire's JSON.
    """
    try:
        encoded = pydantic_core.to_json(data)
    except pydantic_core.PydanticSerializationError as exc:
        raise ValidationError(f"Invalid {what}: a value cannot be encoded as JSON ({exc}).") from None
    try:
        return model.model_validate_json(encoded, strict=True)
    except pydantic.ValidationError as exc:
        raise _validation_error(what, exc) from None


@dataclass(frozen=True)
class _RpcOptions:
    errors: tuple[type[ContractError], ...]
    read: bool
    retries: int


def rpc(
    *, errors: Iterable[type[ContractError]] = (), read: bool = False, retries: int = 3
) -> Callable[[F], F]:
    """Mark a contract method as callable over the bus.

    `errors` are the ContractError subclasses it may raise (re-raised on callers as such);
    `read` marks a method that changes nothing (served in read-only mode); `retries` is how many
    times a `send` of it that fails with an undeclared error is tried again, with exponential
    backoff, before it becomes a dead letter. Calls are never retried: the caller decides.
    """
    options = _RpcOptions(tuple(errors), read, retries)
    for error in options.errors:
        if not (isinstance(error, type) and issubclass(error, ContractError)):
            raise TypeError(f"rpc(errors=...) takes ContractError subclasses, not {error!r}.")

    def mark(func: F) -> F:
        func.__bus_rpc__ = options  # type: ignore[attr-defined]
        return func

    return mark


class Method:
    """One method of a contract: its argument model, result type and declared errors."""

    def __init__(self, service: str, func: Callable[..., Any], options: _RpcOptions) -> None:
        self.service = service
        self.name = func.__name__
        self.target = f"{service}.{self.name}"
        self.doc = inspect.getdoc(func) or ""
        self.errors = options.errors
        self.read = options.read
        self.retries = options.retries
        self.parameters = _parameters(self.target, func)
        hints = typing.get_type_hints(func, include_extras=True)
        fields: dict[str, Any] = {
            name: (hints.get(name, Any), ... if default is inspect.Parameter.empty else default)
            for name, default in self.parameters.items()
        }
        self.arguments: type[BaseModel] = create_model(
            f"{self.target}.arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        self.result_type: Any = hints.get("return", Any)
        self._result = TypeAdapter(self.result_type)

    def validate_arguments(self, arguments: dict[str, Any]) -> BaseModel:
        """The arguments as the contract's model, or a ValidationError naming each bad field."""
        return _strict_json(self.arguments, arguments, f"arguments for {self.target}")

    def dump_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validated arguments in their JSON form, ready for the wire."""
        dumped: dict[str, Any] = self.validate_arguments(arguments).model_dump(mode="json")
        return dumped

    def dump_result(self, value: Any) -> Any:
        """The handler's return value in JSON form, checked against the declared result type."""
        try:
            return self._result.dump_python(self._result.validate_python(value), mode="json")
        except pydantic.ValidationError as exc:
            raise _validation_error(f"result from {self.target}", exc) from None

    def load_result(self, data: Any) -> Any:
        """A JSON result turned back into the declared type, for typed clients."""
        try:
            return self._result.validate_python(data)
        except pydantic.ValidationError as exc:
            raise _validation_error(f"result from {self.target}", exc) from None

    def json_schema(self) -> dict[str, Any]:
        return {
            "description": self.doc,
            "read": self.read,
            "arguments": self.arguments.model_json_schema(),
            "result": self._result.json_schema(),
            "errors": [error.qualified_code or error.__name__ for error in self.errors],
        }


def _parameters(target: str, func: Callable[..., Any]) -> dict[str, Any]:
    """Parameter names and defaults of a contract method, refusing what the bus cannot carry."""
    parameters = list(inspect.signature(func).parameters.values())[1:]  # drop self
    result = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise TypeError(f"{target}: parameter {parameter.name!r} must be a plain keyword argument.")
        if parameter.name in RESERVED_ARGUMENTS:
            raise TypeError(
                f"{target}: argument name {parameter.name!r} clashes with bus.call's own keyword; rename it."
            )
        result[parameter.name] = parameter.default
    return result


class Event:
    """An event a contract publishes, with the type of its payload."""

    def __init__(self, payload: type[BaseModel], doc: str = "") -> None:
        self.payload = payload
        self.doc = doc or inspect.getdoc(payload) or ""
        self.name = ""
        self.target = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def load(self, payload: dict[str, Any]) -> BaseModel:
        """The payload as its model, or a ValidationError naming each bad field."""
        return _strict_json(self.payload, payload, f"payload for event {self.target}")

    def validate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload in JSON form, ready for the wire."""
        dumped: dict[str, Any] = self.load(payload).model_dump(mode="json")
        return dumped

    @property
    def group(self) -> str:
        """The Channels group its subscribers (domains, WebSockets) join."""
        return f"bus.events.{self.target}"


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
    def client(cls: type[C], bus: Any = None) -> C:
        """A typed client: the contract's own methods, each an `acall` that returns the declared type."""
        from .client import default_bus

        target_bus = bus or default_bus
        proxy = cls.__new__(cls)
        for name, method in cls.methods.items():
            setattr(proxy, name, _remote(target_bus, method))
        return proxy


def _remote(bus: Any, method: Method) -> Callable[..., Any]:
    async def call(*, timeout: float | None = None, **arguments: Any) -> Any:
        return method.load_result(await bus.acall(method.target, timeout=timeout, **arguments))

    call.__name__ = method.name
    call.__doc__ = method.doc
    return call


def contracts() -> dict[str, type[Contract]]:
    """Every contract declared in this process, by service name."""
    return dict(_contracts)


def _split(target: str, what: str) -> tuple[type[Contract], str]:
    service, _, member = target.partition(".") if isinstance(target, str) else ("", "", "")
    contract = _contracts.get(service)
    if contract is None or not member:
        known = ", ".join(sorted(_contracts)) or "none"
        raise UnknownTarget(
            f"Unknown {what} {target!r}: name it as 'service.{what}' with a known service ({known}). "
            "`manage.py bus services` lists them.",
            target=str(target),
        )
    return contract, member


def lookup_method(target: str) -> Method:
    """The contract method named 'service.method', or UnknownTarget listing what exists."""
    contract, member = _split(target, "method")
    method = contract.methods.get(member)
    if method is None:
        raise UnknownTarget(
            f"Service {contract.name!r} has no method {member!r}; "
            f"it has: {', '.join(sorted(contract.methods))}.",
            target=target,
        )
    return method


def lookup_event(target: str) -> Event:
    """The contract event named 'service.event', or UnknownTarget listing what exists."""
    contract, member = _split(target, "event")
    event = contract.events.get(member)
    if event is None:
        raise UnknownTarget(
            f"Service {contract.name!r} publishes no event {member!r}; it publishes: "
            f"{', '.join(sorted(contract.events)) or 'none'}.",
            target=target,
        )
    return event
