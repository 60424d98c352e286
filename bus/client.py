"""Calling a domain: `call`/`acall` (request, reply), `send`/`asend` (command), `publish`/`apublish` (event).

    bus.call("inventory.stock", sku="A-1")                  # from sync code: a view, the shell
    await bus.acall("inventory.stock", sku="A-1")           # from async code: a consumer, a worker

Results are plain JSON-compatible data; `Contract.client()` gives typed results on top. Each
process keeps one reply channel per event loop and matches replies to calls by message id, so a
call costs one send and one shared receive, not a new channel per call (bus/replies.py). Sync
calls run on the caller's ASGI event loop when there is one, and otherwise on one background
loop that every thread of the process shares (bus/threads.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from channels.exceptions import ChannelFull as LayerChannelFull
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from . import context, databases, identity, messages, metrics, tracing
from .conf import bus_setting
from .exceptions import (
    BrokerUnreachable,
    BusError,
    ChannelFull,
    DeadlineExceeded,
    NoWorker,
    error_from_wire,
)
from .replies import BROKER_ERRORS, ReplyListener
from .targets import Delivery, contract_version, lookup_event, lookup_method
from .threads import run_sync

__all__ = ["Bus", "default_bus", "run_sync", "translate_broker_errors"]

logger = logging.getLogger(__name__)

# How long a positive "a worker is alive" answer is trusted before asking again.
_PRESENCE_CACHE_SECONDS = 1.0


class Bus:
    """A handle on the service bus through one channel layer alias (settings.BUS['CHANNEL_LAYER'])."""

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias
        self._listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReplyListener] = (
            weakref.WeakKeyDictionary()
        )
        self._alive_until: dict[str, float] = {}
        self._lookups: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}

    @property
    def layer(self) -> BaseChannelLayer:
        alias = self.alias or bus_setting("CHANNEL_LAYER")
        layer = get_channel_layer(alias)
        if layer is None:
            raise ImproperlyConfigured(f"CHANNEL_LAYERS has no {alias!r} layer; the bus needs one.")
        return layer

    # -- request and reply -------------------------------------------------

    async def acall(self, target: str, /, *, timeout: float | None = None, **arguments: Any) -> Any:
        """Call `service.method` and return its JSON result, or raise the error it answered with."""
        method = lookup_method(target)
        body = method.dump_arguments(arguments)
        return await self._request(method.service, messages.REQUEST, target, body, timeout)

    async def adeliver(
        self,
        target: str,
        body: dict[str, Any],
        *,
        message_id: str,
        correlation_id: str,
        subscribers: Iterable[str] = (),
    ) -> None:
        """Queue event `target`, written earlier (an outbox row), on the durable channel of each
        subscriber domain: those given, and those whose workers subscribed on the layer.

        The outbox relay's hand-over to the bus: the same `message_id` on every attempt lets
        subscribers deduplicate. Raises if the layer did not take it for every subscriber.
        """
        event = lookup_event(target)
        envelope = self._envelope(
            messages.EVENT,
            target,
            body,
            None,
            reply_to=None,
            message_id=message_id,
            correlation_id=correlation_id,
        )
        with translate_broker_errors():
            registered = await self.layer.durable_subscribers(event.group) if self.durable else []
        for channel in sorted({*subscribers, *registered}):
            await self._send(channel, envelope, durable=self.durable)

    async def _request(
        self, channel: str, type: str, target: str, body: dict[str, Any], timeout: float | None
    ) -> Any:
        """Send an envelope that asks for a reply, and wait for the reply until the deadline."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            with tracing.span(f"call {target}", "client"):
                return await self._exchange(channel, type, target, body, timeout)
        except BusError as error:
            outcome = error.kind
            raise
        finally:
            metrics.calls.labels(target, outcome).inc()
            metrics.call_duration.labels(target).observe(time.perf_counter() - started)

    async def _exchange(
        self, channel: str, type: str, target: str, body: dict[str, Any], timeout: float | None
    ) -> Any:
        await self._require_worker(channel)
        listener = self._listener()
        request = self._envelope(type, target, body, timeout, reply_to=listener.channel)
        answer = listener.expect(request["id"])
        try:
            await self._send(channel, request)
            async with asyncio.timeout_at(
                asyncio.get_running_loop().time() + (request["deadline"] or 0) - time.time()
            ):
                reply = await answer
        except TimeoutError:
            raise DeadlineExceeded(
                f"{target} did not answer within {request['deadline'] - request['sent_at']:.1f} s "  # type: ignore[operator]
                f"(message {request['id']}); it may or may not have run. Is a {channel} worker "
                "keeping up? `manage.py bus status` shows workers and queues.",
                target=target,
                message_id=request["id"],
            ) from None
        finally:
            listener.forget(request["id"])
        databases.absorb((reply.get("headers") or {}).get("pins"))
        if reply.get("ok"):
            return reply.get("result")
        raise error_from_wire(reply.get("error") or {})

    def call(self, target: str, /, *, timeout: float | None = None, **arguments: Any) -> Any:
        """The sync twin of `acall`, for views, management commands and the shell."""
        return run_sync(self.acall, target, timeout=timeout, **arguments)

    # -- commands and events -----------------------------------------------

    async def asend(self, target: str, /, **arguments: Any) -> str:
        """Send `service.method` as a command: no reply, no waiting. Returns the message id.

        At-least-once (the default, see bus.Delivery): queued durably, even while no worker of
        the service is alive. At-most-once: NoWorker at once when none is.
        """
        method = lookup_method(target)
        body = method.dump_arguments(arguments)
        command = self._envelope(messages.COMMAND, target, body, None, reply_to=None)
        durable = method.delivery is Delivery.AT_LEAST_ONCE and self.durable
        if not durable:
            await self._require_worker(method.service)
        await self._send(method.service, command, durable=durable)
        return command["id"]

    def send(self, target: str, /, **arguments: Any) -> str:
        """The sync twin of `asend`."""
        result: str = run_sync(self.asend, target, **arguments)
        return result

    async def apublish(self, target: str, /, **payload: Any) -> str:
        """Publish `service.event` to every subscriber (domains and WebSocket groups)."""
        event = lookup_event(target)
        envelope = self._envelope(messages.EVENT, target, event.validate(payload), None, reply_to=None)
        messages.check_size(dict(envelope), bus_setting("MAX_MESSAGE_BYTES"))
        with translate_broker_errors():
            # WebSocket groups, and domains that subscribe at-most-once.
            await self.layer.group_send(event.group, envelope)
            durable = event.delivery is Delivery.AT_LEAST_ONCE and self.durable
            subscribers = await self.layer.durable_subscribers(event.group) if durable else []
        for channel in subscribers:
            await self._send(channel, envelope, durable=True)
        return envelope["id"]

    def publish(self, target: str, /, **payload: Any) -> str:
        """The sync twin of `apublish`."""
        result: str = run_sync(self.apublish, target, **payload)
        return result

    # -- plumbing ----------------------------------------------------------

    async def aclose(self) -> None:
        """Stop this event loop's reply listener and forget cached worker presence."""
        self._alive_until.clear()
        listener = self._listeners.pop(asyncio.get_running_loop(), None)
        if listener is not None:
            await listener.close()

    def _envelope(
        self,
        type: str,
        target: str,
        body: dict[str, Any],
        timeout: float | None,
        *,
        reply_to: str | None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> messages.Envelope:
        handling = context.current()
        deadline = None
        if reply_to is not None:
            deadline = time.time() + (timeout if timeout is not None else bus_setting("TIMEOUT"))
            if handling is not None and handling.deadline is not None:
                deadline = min(deadline, handling.deadline)
        # The contract version this side speaks (bus.contracts.Contract.version), for errors that
        # name both sides' versions during a rolling deploy.
        headers: dict[str, Any] = {"contract": contract_version(target.partition(".")[0])}
        pins = databases.current_pins()
        if pins:
            headers["pins"] = pins
        trace = tracing.carrier()
        if trace:
            headers["trace"] = trace
        envelope = messages.envelope(
            type,
            target,
            body,
            correlation_id=correlation_id or (handling.correlation_id if handling else None),
            deadline=deadline,
            reply_to=reply_to,
            headers=headers,
            message_id=message_id,
        )
        # Signed last, over the finished envelope, when this process has an identity (bus/identity.py).
        signer = identity.signer()
        if signer is not None:
            signer.sign(envelope)
        return envelope

    @property
    def durable(self) -> bool:
        """Whether the layer has durable channels (bus.layers.durable): both bus layers do."""
        return hasattr(self.layer, "durable_send")

    async def _send(self, channel: str, envelope: messages.Envelope, *, durable: bool = False) -> None:
        messages.check_size(dict(envelope), bus_setting("MAX_MESSAGE_BYTES"))
        try:
            with translate_broker_errors():
                if durable:
                    await self.layer.durable_send(channel, envelope)
                else:
                    await self.layer.send(channel, envelope)
        except LayerChannelFull:
            raise ChannelFull(
                f"The {channel!r} {'queue' if durable else 'channel'} is full: its workers are "
                f"behind. Retry later, or start more `manage.py runworker {channel}` processes.",
                channel=channel,
            ) from None

    async def _require_worker(self, service: str) -> None:
        """Fail at once when no worker serves `service`, instead of waiting out the deadline."""
        if self._alive_until.get(service, 0.0) > time.monotonic():
            return
        presence = getattr(self.layer, "presence", None)
        if presence is None:
            return
        # One look-up per service at a time: the calls that arrive meanwhile share its answer.
        key = (asyncio.get_running_loop(), service)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = self._lookups[key] = asyncio.ensure_future(presence(service))
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        with translate_broker_errors():
            members = await asyncio.shield(lookup)
        if members:
            self._alive_until[service] = time.monotonic() + _PRESENCE_CACHE_SECONDS
            return
        if isinstance(self.layer, InMemoryChannelLayer):
            raise NoWorker(
                f"No worker serves {service!r} in this process: the in-memory channel layer "
                "(REDIS_URL is not set) reaches only workers in the same process. Set REDIS_URL and "
                f"run `manage.py runworker {service}`, or run everything in one process.",
                service=service,
            )
        raise NoWorker(
            f"No live worker serves {service!r}: start one with `python manage.py runworker "
            f"{service}`; `manage.py bus status` shows the workers that are alive.",
            service=service,
        )

    def _listener(self) -> ReplyListener:
        loop = asyncio.get_running_loop()
        layer = self.layer
        listener = self._listeners.get(loop)
        if listener is None or listener.layer is not layer:
            # CHANNEL_LAYERS changed (a test, a reconfigured process): replies now come over the new layer.
            if listener is not None and listener.task is not None:
                listener.task.cancel()
            listener = self._listeners[loop] = ReplyListener(layer)
        return listener


@contextlib.contextmanager
def translate_broker_errors() -> Iterator[None]:
    """Turn the layer's connection errors into BrokerUnreachable, saying what to check."""
    try:
        yield
    except BROKER_ERRORS as exc:
        raise _unreachable(exc) from exc


def _unreachable(exc: BaseException) -> BrokerUnreachable:
    return BrokerUnreachable(
        f"The channel layer's server does not answer ({type(exc).__name__}: {exc}). Is Redis "
        "running at REDIS_URL? The call was not sent.",
    )


default_bus = Bus()
