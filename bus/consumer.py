"""Serving one message: the Channels consumer that runs a Service for a request, command or event.

The worker makes one consumer instance per message, so a slow handler holds one of the worker's
slots, never a whole channel. Unlike `AsyncConsumer.dispatch`, it does not hop to a thread before
every message to close old database connections: sync handlers run in the worker's thread pool
and close stale connections in that very thread, where Django keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from . import databases, deadletters, messages, metrics, modes, tracing, verification
from .conf import bus_setting
from .context import MessageContext, handling
from .contracts import Contract
from .exceptions import (
    BadMessage,
    BusError,
    ContractError,
    MessageTooLarge,
    ReadOnly,
    RemoteError,
    Unauthenticated,
    UnknownTarget,
    ValidationError,
)
from .inbox import ALREADY_PROCESSED, once
from .receipts import Receipt
from .targets import Method, contract_version, lookup_event, lookup_method
from .threads import in_pool

if TYPE_CHECKING:
    from django.db.models import Model

logger = logging.getLogger(__name__)

# Retries of consumers that no bus Worker runs (the Worker passes its own in the scope, and hands
# them on when it stops).
_unattended = deadletters.Retries()


@dataclass(frozen=True)
class Subscription:
    """A service's handler for an event, and how often a failed delivery is tried again."""

    handler: str
    retries: int


class Served(Protocol):
    """What a consumer runs: a `bus.Service` class, named by what this module uses of it.

    bus.services builds on this module (`Service.as_asgi` hands the class to a ServiceConsumer),
    so this module does not import it back.
    """

    @property
    def contract(self) -> type[Contract]: ...

    @property
    def subscriptions(self) -> Mapping[str, Subscription]: ...

    @property
    def inbox(self) -> type[Model] | None: ...

    def __call__(self, context: MessageContext) -> Any: ...


def _context(envelope: messages.Envelope, receipt: Receipt | None) -> MessageContext:
    return MessageContext(
        message_id=envelope["id"],
        correlation_id=envelope["correlation_id"],
        target=envelope["target"],
        deadline=envelope["deadline"],
        headers=envelope["headers"],
        delivery=receipt.number if receipt is not None else 1,
    )


class ServiceConsumer(AsyncConsumer):  # type: ignore[misc]  # channels ships no type hints
    """Runs the Service of one domain for a single bus message, and replies to requests."""

    #: The service that signed the message; None when this process does not verify signatures.
    sender: str | None = None

    def __init__(self, service: Served) -> None:
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
        retries = scope.get("retries")
        self.retries = retries if isinstance(retries, deadletters.Retries) else _unattended
        # A durable message (bus/receipts.py): it leaves the bus once the worker settles it.
        receipt = scope.get("receipt")
        self.receipt = receipt if isinstance(receipt, Receipt) else None
        with contextlib.suppress(StopConsumer):
            await self.dispatch(await receive())

    async def dispatch(self, message: Any) -> None:
        try:
            envelope = messages.parse_envelope(message)
        except BadMessage as exc:
            await self.reject(message, exc)
            return
        if not await self._admitted(envelope):
            return
        deadline = envelope["deadline"]
        if deadline is not None and deadline < time.time():
            logger.warning(
                "Dropped %s %s: its deadline passed %.3f s ago, so its caller has given up.",
                envelope["type"],
                messages.clip(envelope["target"]),
                time.time() - deadline,
                extra={"message_id": envelope["id"], "correlation_id": envelope["correlation_id"]},
            )
            return
        due = deadletters.not_before(envelope["headers"])
        if due is not None:
            # A retry handed on by a worker that stopped: it is tried when it is due, not before.
            self.retries.later(self.channel_layer, str(self.scope["channel"]), dict(envelope), due)
            return
        self.message_context = _context(envelope, self.receipt)
        started = time.perf_counter()
        self.outcome = "ok"
        with (
            handling(self.message_context),
            databases.consistency_scope(envelope["headers"].get("pins")),
            tracing.span(
                f"{envelope['type']} {envelope['target']}", "consumer", envelope["headers"].get("trace")
            ),
        ):
            handler = getattr(self, envelope["type"].replace(".", "_"))
            await handler(envelope)
        elapsed = time.perf_counter() - started
        # A target nobody serves is any string a sender made up: one label for all, not one each.
        label = "(unknown)" if self.outcome == UnknownTarget.kind else envelope["target"]
        metrics.handled.labels(label, envelope["type"], self.outcome).inc()
        metrics.handle_duration.labels(label, envelope["type"]).observe(elapsed)
        logger.debug(
            "%s %s: %s in %.1f ms",
            envelope["type"],
            messages.clip(envelope["target"]),
            self.outcome,
            elapsed * 1000,
            extra={"message_id": envelope["id"], "correlation_id": envelope["correlation_id"]},
        )

    async def _admitted(self, envelope: messages.Envelope) -> bool:
        """Whether the message may go on: its signature checked first when this process verifies
        (bus/verification.py); a refused one is answered (a request) or logged, and nothing runs."""
        if not verification.verifying():
            return True
        try:
            self.sender = verification.verify(envelope, str(self.scope["channel"]))
        except Unauthenticated as exc:
            logger.error(
                "Refused %s: %s",
                envelope["type"],
                _said(exc),
                extra={"message_id": envelope["id"], "correlation_id": envelope["correlation_id"]},
            )
            await self.reply(envelope, error=exc)
            return False
        return True

    async def bus_request(self, envelope: messages.Envelope) -> None:
        try:
            result = await self.execute(envelope)
        except BusError as exc:
            await self.reply(envelope, error=exc)
        else:
            await self.reply(envelope, result=result)

    async def bus_command(self, envelope: messages.Envelope) -> None:
        try:
            await self.execute(envelope)
        except RemoteError as exc:
            self.outcome = exc.kind
            await self.retry_or_bury(envelope, exc, lookup_method(envelope["target"]).retries)
        except BusError as exc:
            # Refused for what it is (invalid, declared error, read-only): trying again changes nothing.
            self.outcome = exc.kind
            logger.error("Command %s refused: %s", messages.clip(envelope["target"]), _said(exc))

    async def bus_event(self, envelope: messages.Envelope) -> None:
        """Run the subscription's handler; a failure is retried here, then dead-lettered (an
        event someone sent as a request, with a reply channel, is answered instead)."""
        subscription = self.service.subscriptions.get(envelope["target"])
        try:
            if subscription is None:
                raise UnknownTarget(
                    f"{self.service.contract.name} does not subscribe to {envelope['target']}.",
                    target=envelope["target"],
                )
            event = lookup_event(envelope["target"])
            verification.authorise_event(event, self.sender, str(self.scope["channel"]))
            payload = event.load(envelope["body"])
            handler = getattr(self.service(self.message_context), subscription.handler)
            await in_pool(self._exactly_once(handler), event=payload)
        except BusError as exc:
            logger.error("Event %s refused: %s", messages.clip(envelope["target"]), _said(exc))
            await self.reply(envelope, error=exc)
        except Exception as exc:
            logger.exception("Handler for event %s failed.", envelope["target"])
            if envelope["reply_to"] is not None or subscription is None:
                await self.reply(envelope, error=_remote(exc))
            else:
                self.outcome = "remote"
                await self.retry_or_bury(envelope, _remote(exc, cause=exc), subscription.retries)
        else:
            await self.reply(envelope)

    def _method(self, target: str, caller_version: str) -> Method:
        """The method `target` names; one this worker's contract lacks is UnknownTarget naming
        both versions (a newer caller, during a rolling deploy)."""
        try:
            return lookup_method(target)
        except UnknownTarget as exc:
            service = self.service.contract.name
            if not target.startswith(f"{service}.") or not caller_version:
                raise
            raise UnknownTarget(
                f"{exc.message} This worker runs {service}'s contract version {contract_version(service)}, "
                f"the caller's is {caller_version}: deploy {service}'s new workers before callers use it.",
                target=target,
                version=contract_version(service),
                caller_version=caller_version,
            ) from None

    def _exactly_once(self, handler: Any) -> Any:
        """A durable message's sync handler, run through the domain's inbox when it has one."""
        inbox = self.service.inbox
        if self.receipt is None or inbox is None or asyncio.iscoroutinefunction(handler):
            return handler
        run = once(handler, inbox, self.message_context.message_id)

        def logged(**arguments: Any) -> Any:
            result = run(**arguments)
            if result is ALREADY_PROCESSED:
                logger.info(
                    "%s was processed before (delivery %d): its effects are stored; not run again.",
                    self.message_context.target,
                    self.message_context.delivery,
                )
            return result

        return logged

    async def retry_or_bury(self, envelope: messages.Envelope, error: RemoteError, retries: int) -> None:
        """Send a failed command or event again later, or keep it as a dead letter after the last try."""
        attempt = int(envelope["headers"].get("attempt", 1))
        channel = str(self.scope["channel"])
        if attempt <= retries:
            delay = deadletters.retry_delay(attempt)
            logger.warning(
                "%s failed (try %d of %d): %s; trying again in %.1f s.",
                envelope["target"],
                attempt,
                retries + 1,
                error.message,
                delay,
            )
            again = {**envelope, "headers": {**envelope["headers"], "attempt": attempt + 1}}
            if self.receipt is not None:
                await self.receipt.retry(again, time.time() + delay)
            else:
                self.retries.later(self.channel_layer, channel, again, time.time() + delay)
            return
        cause = error.__cause__
        trace = "".join(traceback.format_exception(cause)) if cause is not None else ""
        await in_pool(deadletters.bury, channel, dict(envelope), error.message, trace, attempt)
        metrics.dead_letters.labels(envelope["target"]).inc()
        logger.error(
            "%s failed %d time(s); kept as a dead letter: %s", envelope["target"], attempt, error.message
        )

    async def execute(self, envelope: messages.Envelope) -> Any:
        """Run the method the envelope names; every failure comes out as a BusError."""
        method: Method | None = None
        caller_version = str(envelope["headers"].get("contract") or "")
        try:
            method = self._method(envelope["target"], caller_version)
            if method.service != self.service.contract.name:
                raise BadMessage(
                    f"{envelope['target']} was sent to the {self.service.contract.name!r} channel; "
                    f"send it to {method.service!r}."
                )
            verification.authorise_call(method, self.sender)
            arguments = method.validate_arguments(envelope["body"], caller_version=caller_version)
            if not method.read:
                reason = await modes.aread_only_reason(method.service)
                if reason is not None:
                    raise ReadOnly(
                        f"{method.service} is in read-only mode ({reason or 'no reason given'}): "
                        f"{method.target} changes data and is refused; reads go on. Retry later.",
                        service=method.service,
                        reason=reason,
                    )
            handler = self._exactly_once(getattr(self.service(self.message_context), method.name))
            result = await in_pool(handler, **{name: getattr(arguments, name) for name in method.parameters})
            if result is ALREADY_PROCESSED:
                return None
        except ContractError as exc:
            if method is not None and isinstance(exc, method.errors):
                return_error: BusError = exc
            else:
                return_error = _remote(exc)
            raise return_error from exc
        except BusError:
            raise
        except Exception as exc:
            logger.exception("%s failed.", envelope["target"])
            raise _remote(exc) from exc
        try:
            return method.dump_result(result)
        except ValidationError as exc:
            # The handler broke its own contract: the caller's input was fine, so it is a remote fault.
            logger.error(
                "%s returned a result its contract does not allow: %s", envelope["target"], exc.message
            )
            raise _remote(exc) from exc

    async def reply(
        self, envelope: messages.Envelope, *, result: Any = None, error: BusError | None = None
    ) -> None:
        if error is not None:
            self.outcome = error.kind
        reply_to = envelope["reply_to"]
        if reply_to is None:
            return
        layer = self.channel_layer
        if not (layer.match_type_and_length(reply_to) and layer.channel_name_regex.match(reply_to)):
            # Said here, bounded: the layer's own refusal would quote the whole name in a traceback.
            logger.warning(
                "Could not reply to %s: its reply channel %s is not a valid channel name.",
                messages.clip(envelope["target"]),
                messages.quote(reply_to),
            )
            return
        pins = databases.current_pins()
        answer = messages.reply(
            envelope, result=result, error=error, headers={"pins": pins} if pins else None
        )
        try:
            messages.check_size(dict(answer), bus_setting("MAX_MESSAGE_BYTES"))
        except (BadMessage, MessageTooLarge) as exc:
            answer = messages.reply(
                envelope,
                error=RemoteError(f"The result of {envelope['target']} could not be sent: {exc.message}"),
            )
        try:
            await self.channel_layer.send(reply_to, answer)
        except Exception:
            logger.exception("Could not reply to %s on %s.", envelope["target"], reply_to)

    async def reject(self, message: Any, error: BusError) -> None:
        await reject(self.channel_layer, message, error)


def _said(error: BusError) -> str:
    """An error's message for a log line: bounded, since it may quote what a sender wrote."""
    return messages.clip(error.message, 4 * messages.QUOTE_LIMIT)


def _remote(exc: BaseException, *, cause: BaseException | None = None) -> RemoteError:
    text = exc.message if isinstance(exc, BusError) else str(exc) or "(no message)"
    error = RemoteError(f"{type(exc).__name__}: {text}", remote_type=type(exc).__name__)
    error.__cause__ = cause
    return error


async def reject(layer: Any, message: Any, error: BusError) -> None:
    """Log a malformed message and, when it names a reply channel and an id, tell its sender."""
    logger.warning("Rejected a malformed message: %s", _said(error))
    if (
        isinstance(message, dict)
        and isinstance(message.get("reply_to"), str)
        and isinstance(message.get("id"), str)
    ):
        answer = messages.reply(message, error=error)  # type: ignore[arg-type]
        try:
            await layer.send(message["reply_to"], answer)
        except Exception:
            logger.warning(
                "Could not tell the sender of the malformed message on %s.",
                messages.quote(message["reply_to"]),
            )
