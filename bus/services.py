"""Implementing a contract: a Service class whose methods do the work.

    class InventoryService(Service, contract=Inventory):
        def stock(self, *, sku: str) -> Stock:
            ...

        @subscribe("payments.refunded")
        def on_refund(self, event: Refunded) -> None:
            ...

        @every(5.0)
        def sweep(self) -> None:
            ...

Methods may be plain functions (run in the worker's thread pool, where the Django ORM belongs)
or coroutines (run on the worker's event loop). A new instance serves each message, with that
message's context in `self.context`. The class is checked against its contract when it is
defined, so a missing method, a renamed argument or an argument annotated with another type than
the contract's fails at import, not at the first call.

Commands and events are delivered at least once (bus.Delivery): `inbox=` names the domain's
processed-message model (bus/inbox.py), and its plain methods then run each durable message
once, in one transaction with the record that it ran.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .consumer import Served, ServiceConsumer, Subscription
from .context import MessageContext
from .contracts import Contract
from .targets import Method, lookup_event

if TYPE_CHECKING:
    from django.db.models import Model

F = TypeVar("F", bound=Callable[..., Any])

_services: dict[str, type[Service]] = {}


@dataclass(frozen=True)
class Periodic:
    """How often an `@every` method runs, and the `bus.wakeups` signal that runs it sooner."""

    seconds: float
    woken_by: str | None = None


def every(seconds: float, *, woken_by: str | None = None) -> Callable[[F], F]:
    """Mark a service method to run every `seconds` in each worker that serves the service.

    For sweeps and relays that must go on when no message arrives: resuming stuck work,
    re-sending an outbox. Every worker of the domain runs it, so it must be safe to run
    concurrently (claim rows before working on them). With `woken_by`, it also runs as soon
    as `bus.wakeups.wake(woken_by)` is called in this process (an outbox row committed).
    """
    if seconds <= 0:
        raise ValueError(f"every() takes a positive number of seconds, not {seconds!r}.")

    def mark(func: F) -> F:
        func.__bus_every__ = Periodic(seconds, woken_by)  # type: ignore[attr-defined]
        return func

    return mark


def subscribe(event: str, *, retries: int = 3) -> Callable[[F], F]:
    """Mark a service method as the handler of another (or its own) domain's event.

    A published event whose handler fails is tried again `retries` times with exponential
    backoff, then kept as a dead letter (`manage.py bus deadletters`).
    """

    def mark(func: F) -> F:
        func.__bus_subscribe__ = (event, retries)  # type: ignore[attr-defined]
        return func

    return mark


class Service:
    """Base of a contract's implementation; one is made for every message it serves."""

    contract: ClassVar[type[Contract]]
    subscriptions: ClassVar[dict[str, Subscription]]
    periodic: ClassVar[dict[str, Periodic]]
    #: The domain's processed-message model (bus/inbox.py): durable messages run exactly once.
    inbox: ClassVar[type[Model] | None]

    def __init__(self, context: MessageContext) -> None:
        self.context = context

    def __init_subclass__(
        cls, *, contract: type[Contract], inbox: type[Model] | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if isinstance(cls, type) and issubclass(cls, Contract):
            raise TypeError(f"{cls.__qualname__} must not inherit from its contract; name it with contract=.")
        cls.contract = contract
        cls.inbox = inbox
        for method in contract.methods.values():
            _check_implementation(cls, method)
        cls.subscriptions = {}
        cls.periodic = {}
        for attribute, value in vars(cls).items():
            subscribed = getattr(value, "__bus_subscribe__", None)
            if subscribed is not None:
                event, retries = subscribed
                cls.subscriptions[lookup_event(event).target] = Subscription(attribute, retries)
            periodic = getattr(value, "__bus_every__", None)
            if periodic is not None:
                cls.periodic[attribute] = periodic
        _services[contract.name] = cls

    @classmethod
    def as_asgi(cls) -> Any:
        """The ASGI application that serves this service's channel, for routing.py."""
        served: Served = cls  # mypy checks here that a Service class is what the consumer runs
        return ServiceConsumer.as_asgi(service=served)


def _check_implementation(cls: type[Service], method: Method) -> None:
    """`cls` implements `method` with the contract's argument names and, where it annotates them,
    the contract's argument types (an `Annotated` alias counts as the type under it: the contract
    checks the constraints before the method runs)."""
    implementation = getattr(cls, method.name, None)
    if implementation is None or not callable(implementation):
        raise TypeError(f"{cls.__qualname__} does not implement {method.target}.")
    where = f"{cls.__qualname__}.{method.name}"
    parameters = set(inspect.signature(implementation).parameters) - {"self"}
    if parameters != set(method.parameters):
        raise TypeError(
            f"{where} takes {sorted(parameters)} but the contract "
            f"{method.target} declares {sorted(method.parameters)}."
        )
    try:
        hints = typing.get_type_hints(implementation)
    except Exception as exc:  # a name the annotations use that the module does not define
        raise TypeError(
            f"{where}: its annotations cannot be read ({type(exc).__name__}: {exc}); import the types "
            "they name at the top of its module."
        ) from exc
    for argument, declared in method.argument_types.items():
        given = hints.get(argument, declared)
        if given != declared:
            raise TypeError(
                f"{where} annotates argument {argument!r} as {_shown(given)}, but the contract "
                f"{method.target} declares {_shown(declared)}: use the contract's type."
            )


def _shown(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def subscribers(event: str) -> list[str]:
    """The services (domains) whose implementation subscribes to `event`, by name."""
    return sorted(name for name, service in _services.items() if event in service.subscriptions)


def implementation(service: str) -> type[Service] | None:
    """The Service class registered for a service name, if this process imported one."""
    return _services.get(service)
