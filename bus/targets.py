"""What a message can name as its target: a contract's methods and events, found by 'service.member'.

A `Method` checks arguments and results against the types its contract method declares; an
`Event` checks its payload. `bus.contracts.Contract` builds them and registers them here, so the
client, the consumer and the outbox find them by name without knowing the Contract class, which
sits above the client (its `client()` hands out a typed client).
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from .exceptions import ContractError, InvalidResult, UnknownTarget, ValidationError

__all__ = [
    "READERS",
    "Delivery",
    "Event",
    "Method",
    "RpcOptions",
    "contract_version",
    "lookup_event",
    "lookup_method",
    "register",
]

# Keywords of bus.call itself; a contract argument with one of these names could never be passed.
RESERVED_ARGUMENTS = frozenset({"timeout"})

M = TypeVar("M", bound=BaseModel)


def _validation_error(
    what: str, exc: pydantic.ValidationError, kind: type[ValidationError] = ValidationError
) -> ValidationError:
    errors = [
        {"field": ".".join(str(part) for part in error["loc"]) or "(root)", "message": error["msg"]}
        for error in exc.errors(include_url=False)
    ]
    listed = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    return kind(f"Invalid {what}: {listed}.", errors=errors)


#: How readers (of a result, of an event) validate: fields their contract does not know are
#: dropped, so a newer writer may add some during a rolling deploy; the rest is checked as always.
READERS: Final = "ignore"


def _strict_json(
    model: type[M], data: dict[str, Any], what: str, extra: Literal["ignore"] | None = None
) -> M:
    """Validate as JSON, strictly: "2" is not an int, but an ISO string is a datetime.

    The same rule on both sides of the bus: a caller may pass Python values (datetimes, models)
    or their JSON forms (from the shell, from the wire), and a worker sees the wire's JSON.
    """
    try:
        encoded = pydantic_core.to_json(data)
    except pydantic_core.PydanticSerializationError as exc:
        raise ValidationError(f"Invalid {what}: a value cannot be encoded as JSON ({exc}).") from None
    try:
        return model.model_validate_json(encoded, strict=True, extra=extra)
    except pydantic.ValidationError as exc:
        raise _validation_error(what, exc) from None


class Delivery(enum.StrEnum):
    """What the bus promises a command (`send`) or an event on its way to a domain.

    AT_LEAST_ONCE (the default): it is queued even while no worker of its domain is alive, and
    it leaves the queue only once a worker has finished with it; a worker that dies holding it
    hands it to another. A handler may then see it twice; a Service with an inbox runs it once.
    AT_MOST_ONCE: for messages worthless after a crash. A send fails with NoWorker at once when
    no worker is alive, and a message held by a worker that dies is gone. Calls are always
    at-most-once: their caller waits, and decides.
    """

    AT_LEAST_ONCE = "at-least-once"
    AT_MOST_ONCE = "at-most-once"


@dataclass(frozen=True)
class RpcOptions:
    """What `@rpc(...)` said about a contract method."""

    errors: tuple[type[ContractError], ...]
    read: bool
    retries: int
    delivery: Delivery | None = None  # None: the contract's
    callers: tuple[str, ...] | None = None  # None: the contract's (and without one, anyone)


class Method:
    """One method of a contract: its argument model, result type and declared errors."""

    def __init__(
        self,
        service: str,
        func: Callable[..., Any],
        options: RpcOptions,
        delivery: Delivery = Delivery.AT_LEAST_ONCE,
        callers: tuple[str, ...] | None = None,
    ) -> None:
        self.service = service
        self.name = func.__name__
        self.target = f"{service}.{self.name}"
        self.doc = inspect.getdoc(func) or ""
        self.errors = options.errors
        self.read = options.read
        self.retries = options.retries
        #: How its `send` is delivered (the method's own choice, else its contract's).
        self.delivery = options.delivery or delivery
        #: The services whose signed messages may call it (the method's own list, else its
        #: contract's); None: any. Enforced by workers that verify signatures (bus/verification.py).
        self.callers = options.callers if options.callers is not None else callers
        self.parameters = _parameters(self.target, func)
        hints = typing.get_type_hints(func, include_extras=True)
        fields: dict[str, Any] = {
            name: (hints.get(name, Any), ... if default is inspect.Parameter.empty else default)
            for name, default in self.parameters.items()
        }
        self.arguments: type[BaseModel] = create_model(
            f"{self.target}.arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        # The declared type of each annotated argument, without `Annotated` constraints: what a
        # Service's implementation may annotate it as.
        plain = typing.get_type_hints(func)
        self.argument_types: dict[str, Any] = {name: plain[name] for name in self.parameters if name in plain}
        self.result_type: Any = hints.get("return", Any)
        self._result = TypeAdapter(self.result_type)

    def validate_arguments(
        self, arguments: dict[str, Any], *, caller_version: str | None = None
    ) -> BaseModel:
        """The arguments as the contract's model, or a ValidationError naming each bad field.

        On a worker (`caller_version` given: the caller's contract version, from the envelope), an
        argument this contract does not know is refused with both versions named, never ignored:
        during a rolling deploy it is one a newer caller set, and dropping it would do something
        else than asked.
        """
        known = set(self.parameters)
        unknown = sorted(set(arguments) - known) if isinstance(arguments, dict) else []
        if unknown and caller_version is not None:
            mine = contract_version(self.service)
            raise ValidationError(
                f"Unknown argument(s) {', '.join(map(repr, unknown))} for {self.target}: this side runs "
                f"{self.service}'s contract version {mine or '?'}, the caller's is {caller_version or '?'}. "
                f"A newer caller set an argument older workers do not know: deploy {self.service}'s new "
                "workers first, or do not pass it until they run.",
                errors=[{"field": name, "message": "unknown argument"} for name in unknown],
                unknown=unknown,
                version=mine,
                caller_version=caller_version,
            )
        return _strict_json(self.arguments, arguments, f"arguments for {self.target}")

    def dump_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validated arguments in their JSON form, ready for the wire: only those the caller set,
        so a worker of an older contract version is not sent a new optional argument's default."""
        model = self.validate_arguments(arguments)
        dumped: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
        return dumped

    def dump_result(self, value: Any) -> Any:
        """The handler's return value in JSON form, checked against the declared result type."""
        try:
            return self._result.dump_python(self._result.validate_python(value), mode="json")
        except pydantic.ValidationError as exc:
            raise _validation_error(f"result from {self.target}", exc, InvalidResult) from None

    def load_result(self, data: Any) -> Any:
        """A JSON result turned back into the declared type, for typed clients; fields a newer
        worker added are ignored."""
        try:
            return self._result.validate_python(data, extra=READERS)
        except pydantic.ValidationError as exc:
            raise _validation_error(f"result from {self.target}", exc, InvalidResult) from None

    def json_schema(self) -> dict[str, Any]:
        schema = {
            "description": self.doc,
            "read": self.read,
            "delivery": self.delivery.value,
            "arguments": self.arguments.model_json_schema(),
            "result": self._result.json_schema(),
            "errors": [error.qualified_code or error.__name__ for error in self.errors],
        }
        # Only where restricted: a method anyone may call keeps the fingerprint it had.
        if self.callers is not None:
            schema["callers"] = sorted(self.callers)
        return schema


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

    def __init__(self, payload: type[BaseModel], doc: str = "", *, delivery: Delivery | None = None) -> None:
        self.payload = payload
        self.doc = doc or inspect.getdoc(payload) or ""
        #: How it reaches subscriber domains (None until its contract sets its own default).
        self.delivery = delivery
        #: The services whose signature a subscriber accepts on it (set by its contract).
        self.publishers: tuple[str, ...] = ()
        self.name = ""
        self.target = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def load(self, payload: dict[str, Any]) -> BaseModel:
        """The payload as a subscriber reads it: fields a newer publisher added are ignored, the
        rest checked strictly; a ValidationError names each bad field."""
        return _strict_json(self.payload, payload, f"payload for event {self.target}", READERS)

    def validate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload as its publisher writes it (strictly: no unknown field), in JSON form."""
        model = _strict_json(self.payload, payload, f"payload for event {self.target}")
        dumped: dict[str, Any] = model.model_dump(mode="json")
        return dumped

    @property
    def group(self) -> str:
        """The Channels group its subscribers (domains, WebSockets) join."""
        return f"bus.events.{self.target}"


@dataclass(frozen=True)
class _Members:
    methods: dict[str, Method]
    events: dict[str, Event]
    version: str


# Every service declared in this process: its methods and events by name.
_services: dict[str, _Members] = {}


def register(service: str, methods: dict[str, Method], events: dict[str, Event], version: str = "") -> None:
    """Make a service's methods and events reachable by target (a Contract does it when declared)."""
    _services[service] = _Members(methods, events, version)


def contract_version(service: str) -> str:
    """The fingerprint of `service`'s contract as this process declares it ("" if unknown)."""
    members = _services.get(service)
    return members.version if members is not None else ""


def _split(target: str, what: str) -> tuple[str, _Members, str]:
    service, _, member = target.partition(".") if isinstance(target, str) else ("", "", "")
    members = _services.get(service)
    if members is None or not member:
        known = ", ".join(sorted(_services)) or "none"
        raise UnknownTarget(
            f"Unknown {what} {target!r}: name it as 'service.{what}' with a known service ({known}). "
            "`manage.py bus services` lists them.",
            target=str(target),
        )
    return service, members, member


def lookup_method(target: str) -> Method:
    """The contract method named 'service.method', or UnknownTarget listing what exists."""
    service, members, member = _split(target, "method")
    method = members.methods.get(member)
    if method is None:
        raise UnknownTarget(
            f"Service {service!r} has no method {member!r}; it has: {', '.join(sorted(members.methods))}.",
            target=target,
        )
    return method


def lookup_event(target: str) -> Event:
    """The contract event named 'service.event', or UnknownTarget listing what exists."""
    service, members, member = _split(target, "event")
    event = members.events.get(member)
    if event is None:
        raise UnknownTarget(
            f"Service {service!r} publishes no event {member!r}; it publishes: "
            f"{', '.join(sorted(members.events)) or 'none'}.",
            target=target,
        )
    return event
