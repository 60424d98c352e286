"""Everything the bus raises, in one tree.

    BusError
    ├── BadMessage                 a message is malformed: missing fields, bad names
    │   └── MessageTooLarge        the encoded message exceeds BUS["MAX_MESSAGE_BYTES"]
    ├── ValidationError            arguments or a payload do not match the contract
    │   └── InvalidResult          a worker's result does not match the caller's contract
    ├── UnknownTarget              no such service, method or event in any contract
    ├── Unavailable                the message cannot be delivered now; retry later
    │   ├── BrokerUnreachable      Redis (or the configured layer) does not answer
    │   ├── ChannelFull            the domain's queue is at capacity
    │   ├── NoWorker               no live worker serves the domain
    │   └── ReadOnly               the domain is in read-only mode: writes refused, reads served
    ├── DeadlineExceeded           no reply before the call's deadline (also a TimeoutError)
    ├── RemoteError                the handler failed with an error its contract does not declare
    ├── Unauthenticated            unsigned, badly signed, from an unknown service or key, or too old
    ├── Forbidden                  its signer may not call that method or publish that event
    └── ContractError              base of the errors a contract declares (inventory.OutOfStock)

Every error can travel: `to_wire()` gives a small dict that crosses the bus and `from_wire()`
rebuilds the same type on the caller, so an `OutOfStock` raised by a worker is an `OutOfStock`
where `bus.call` was made.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadMessage",
    "BrokerUnreachable",
    "BusError",
    "ChannelFull",
    "ContractError",
    "DeadlineExceeded",
    "Forbidden",
    "InvalidResult",
    "MessageTooLarge",
    "NoWorker",
    "ReadOnly",
    "RemoteError",
    "Unauthenticated",
    "Unavailable",
    "UnknownTarget",
    "ValidationError",
    "error_from_wire",
]

# Declared domain errors by qualified code ("inventory.OutOfStock"), filled by contracts.
_declared: dict[str, type[ContractError]] = {}


class BusError(Exception):
    """Base of every error the bus raises; carries a message and JSON-compatible details."""

    kind: ClassVar[str] = "bus"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def code(self) -> str:
        return type(self).__name__

    def to_wire(self) -> dict[str, Any]:
        """The error as a JSON-compatible dict, ready to cross the bus."""
        return {"kind": self.kind, "code": self.code, "message": self.message, "details": self.details}


class BadMessage(BusError):
    """A message on the bus is malformed; nothing was executed."""

    kind = "bad_message"


class MessageTooLarge(BadMessage):
    """The encoded message is larger than the configured limit."""


class ValidationError(BusError):
    """Arguments or a result do not match the contract; `errors` names each field."""

    kind = "validation"

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = self.details.get("errors", [])
        return errors


class InvalidResult(ValidationError):
    """A worker answered with a result its caller's contract does not accept: the caller's
    arguments were fine, the two sides disagree (say, a worker of another contract version)."""

    kind = "invalid_result"


class UnknownTarget(BusError):
    """No contract declares the service, method or event that was named."""

    kind = "unknown"


class Unavailable(BusError):
    """The message could not be delivered now; the same call may work later."""

    kind = "unavailable"


class BrokerUnreachable(Unavailable):
    """The channel layer's server (Redis) did not answer."""


class ChannelFull(Unavailable):
    """The domain's channel is at capacity: its workers are behind."""


class NoWorker(Unavailable):
    """No live worker serves the domain, so a call would only wait for its deadline."""


class ReadOnly(Unavailable):
    """The domain is in read-only mode: its write methods are refused, its reads go on."""


class DeadlineExceeded(BusError, TimeoutError):
    """No reply arrived before the deadline; the request may or may not have run."""

    kind = "deadline"


class RemoteError(BusError):
    """The remote handler failed with an error its contract does not declare."""

    kind = "remote"

    @property
    def remote_type(self) -> str:
        return str(self.details.get("remote_type", "Exception"))


class Unauthenticated(BusError):
    """A worker refused a message before running anything: it was unsigned, its signature did not
    match, its signer or key is not trusted there, or it came too late. `reason` says which."""

    kind = "unauthenticated"

    @property
    def reason(self) -> str:
        return str(self.details.get("reason", ""))


class Forbidden(BusError):
    """The service that signed the message may not call the method (or publish the event) it names;
    `callers` (or `publishers`) lists who may, `sender` who tried."""

    kind = "forbidden"


class ContractError(BusError):
    """Base of the errors a contract declares; re-raised on the caller as the same type.

    Subclasses get their qualified code ("inventory.OutOfStock") from the contract whose
    methods declare them.
    """

    kind = "contract"
    qualified_code: ClassVar[str | None] = None

    @property
    def code(self) -> str:
        return self.qualified_code or type(self).__name__

    @classmethod
    def register(cls, code: str) -> None:
        """Make `code` travel as this class; one code names one class."""
        existing = _declared.get(code)
        if existing is not None and existing is not cls:
            raise TypeError(f"Error code {code!r} is already declared by {existing.__qualname__}.")
        if cls.qualified_code is not None and cls.qualified_code != code:
            return  # shared by several contracts: keep the code of the first one
        cls.qualified_code = code
        _declared[code] = cls


_by_kind: dict[str, type[BusError]] = {
    error.kind: error
    for error in (
        BadMessage,
        ValidationError,
        InvalidResult,
        UnknownTarget,
        DeadlineExceeded,
        RemoteError,
        Unauthenticated,
        Forbidden,
    )
}
_by_code: dict[str, type[BusError]] = {
    error.__name__: error
    for error in (MessageTooLarge, BrokerUnreachable, ChannelFull, NoWorker, ReadOnly, Unavailable)
}


def error_from_wire(wire: dict[str, Any]) -> BusError:
    """Rebuild the error a worker sent; an unknown shape becomes a RemoteError."""
    kind = str(wire.get("kind", "remote"))
    code = str(wire.get("code", ""))
    message = str(wire.get("message", "The remote side failed without a message."))
    details = wire.get("details")
    details = details if isinstance(details, dict) else {}
    if kind == "contract":
        declared = _declared.get(code)
        if declared is not None:
            return declared(message, **details)
        return RemoteError(f"{code}: {message}", remote_type=code, **details)
    error_class = _by_code.get(code) or _by_kind.get(kind, RemoteError)
    return error_class(message, **details)
