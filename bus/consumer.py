"""Serving one message: the Channels consumer that runs a Service for a request, command or event.

The worker makes one consumer instance per message, so a slow handler holds one of the worker's
slots, never a whole channel. Unlike `AsyncConsumer.dispatch`, it does not hop to a thread before
every message to close old database connections: sync handlers run in the worker's thread pool
and close stale connections in that very thread, where Django keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from . import databases, messages, modes
from .conf import bus_setting
from .context import MessageContext, handling
from .contracts import Method, lookup_event, lookup_method
from .exceptions import (
    BadMessage,
    BusError,
    ContractError,
    MessageTooLarge,
    ReadOnly,
    RemoteError,
    UnknownTarget,
    ValidationError,
)
from .services import Service
from .threads import in_pool

logger = logging.getLogger(__name__)


def _context(envelope: messages.Envelope) -> MessageContext:
    return MessageContext(
        message_id=envelope["id"],
        correlation_id=envelope["correlation_id"],
        target=envelope["target"],
        deadline=envelope["deadline"],
        headers=envelope["headers"],
    )


class ServiceConsumer(AsyncConsumer):  # type: ignore[misc]  # channels ships no type hints
    """Runs the Service of one domain for a single bus message, and replies to requests."""

    def __init__(self, service: type[Service]) -> None:
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
        with contextlib.suppress(StopConsumer):
            await self.dispatch(await receive())

    async def dispatch(self, message: Any) -> None:
        try:
            envelope = messages.parse_envelope(message)
        except BadMessage as exc:
            await self.reject(message, exc)
            return
        deadline = envelope["deadline"]
        if deadline is not None and deadline < time.time():
            logger.warning(
                "Dropped %s %s: its deadline passed %.3f s ago, so its caller has given up.",
                envelope["type"],
                envelope["target"],
                time.time() - deadline,
                extra={"message_id": envelope["id"], "correlation_id": envelope["correlation_id"]},
            )
            return
        self.message_context = _context(envelope)
        with handling(self.message_context), databases.consistency_scope(envelope["headers"].get("pins")):
            handler = getattr(self, envelope["type"].replace(".", "_"))
            await handler(envelope)

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
        except BusError as exc:
            logger.error("Command %s failed: %s", envelope["target"], exc.message)

    async def bus_event(self, envelope: messages.Envelope) -> None:
        """Run the subscription's handler; acknowledge it when the sender asked (an outbox relay)."""
        handler_name = self.service.subscriptions.get(envelope["target"])
        try:
            if handler_name is None:
                raise UnknownTarget(
                    f"{self.service.contract.name} does not subscribe to {envelope['target']}.",
                    target=envelope["target"],
                )
            payload = lookup_event(envelope["target"]).load(envelope["body"])
            handler = getattr(self.service(self.message_context), handler_name)
            await in_pool(handler, event=payload)
        except BusError as exc:
            logger.error("Event %s refused: %s", envelope["target"], exc.message)
            await self.reply(envelope, error=exc)
        except Exception as exc:
            logger.exception("Handler for event %s failed.", envelope["target"])
            await self.reply(envelope, error=_remote(exc))
        else:
            await self.reply(envelope)

    async def execute(self, envelope: messages.Envelope) -> Any:
        """Run the method the envelope names; every failure comes out as a BusError."""
        method: Method | None = None
        try:
            method = lookup_method(envelope["target"])
            if method.service != self.service.contract.name:
                raise BadMessage(
                    f"{envelope['target']} was sent to the {self.service.contract.name!r} channel; "
                    f"send it to {method.service!r}."
                )
            arguments = method.validate_arguments(envelope["body"])
            if not method.read:
                reason = await modes.aread_only_reason(method.service)
                if reason is not None:
                    raise ReadOnly(
                        f"{method.service} is in read-only mode ({reason or 'no reason given'}): "
                        f"{method.target} changes data and is refused; reads go on. Retry later.",
                        service=method.service,
                        reason=reason,
                    )
            handler = getattr(self.service(self.message_context), method.name)
            result = await in_pool(handler, **{name: getattr(arguments, name) for name in method.parameters})
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
        reply_to = envelope["reply_to"]
        if reply_to is None:
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
        """Log a malformed message and, when it names a reply channel, tell its sender."""
        logger.warning("Rejected a malformed message: %s", error.message)
        if (
            isinstance(message, dict)
            and isinstance(message.get("reply_to"), str)
            and isinstance(message.get("id"), str)
        ):
            answer = messages.reply(message, error=error)  # type: ignore[arg-type]
            try:
                await self.channel_layer.send(message["reply_to"], answer)
            except Exception:
                logger.warning(
                    "Could not tell the sender of the malformed message on %s.", message["reply_to"]
                )


def _remote(exc: BaseException) -> RemoteError:
    text = exc.message if isinstance(exc, BusError) else str(exc) or "(no message)"
    return RemoteError(f"{type(exc).__name__}: {text}", remote_type=type(exc).__name__)
