"""One HTTP request as the bus sees it: a correlation id for its log lines and calls, and its own
read-your-writes scope.

The id comes from the X-Correlation-ID (or X-Request-ID) header when a proxy set one, else it is
new; it is sent back in X-Correlation-ID, every bus call the request makes carries it, and so does
every log line about those calls in every worker.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from . import databases, messages, tracing
from .context import MessageContext, handling

logger = logging.getLogger(__name__)

_VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _context(request: HttpRequest) -> MessageContext:
    offered = request.headers.get("X-Correlation-ID") or request.headers.get("X-Request-ID") or ""
    request_id = messages.new_id()
    correlation = offered if _VALID.fullmatch(offered) else request_id
    return MessageContext(message_id=request_id, correlation_id=correlation, target=f"http {request.path}")


class InlineMiddleware:
    """A base for middleware whose steps are quick and never block, for sync and async views alike.

    Django's MiddlewareMixin runs each hook of an async request in a thread (sync_to_async);
    these run inline. Subclasses override any of: `scope` (a context around the whole request),
    `before` (a response here ends the request), `after`, and `failed` (a response for an
    exception the inner layers raised; None re-raises it).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def scope(self, request: HttpRequest) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return response

    def failed(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        return None

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        with self.scope(request):
            early = self.before(request)
            if early is not None:
                return early
            try:
                response: HttpResponseBase = self.get_response(request)
            except Exception as exc:
                return self._failed(request, exc)
            return self.after(request, response)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        with self.scope(request):
            early = self.before(request)
            if early is not None:
                return early
            call: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            try:
                response = await call(request)
            except Exception as exc:
                return self._failed(request, exc)
            return self.after(request, response)

    def _failed(self, request: HttpRequest, exception: Exception) -> HttpResponseBase:
        handled = self.failed(request, exception)
        if handled is None:
            raise exception
        return handled


class CorrelationMiddleware(InlineMiddleware):
    """Give each request a correlation id and a consistency scope (works for sync and async views)."""

    @contextlib.contextmanager
    def scope(self, request: HttpRequest) -> Iterator[object]:
        context = _context(request)
        request.bus_context = context  # type: ignore[attr-defined]  # read back in after()
        with handling(context), databases.consistency_scope(), tracing.span(_name(request), "server"):
            yield context

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        _log(request, response)
        response["X-Correlation-ID"] = request.bus_context.correlation_id  # type: ignore[attr-defined]
        return response


def _name(request: HttpRequest) -> str:
    return f"{request.method} {request.path}"


def _log(request: HttpRequest, response: HttpResponseBase) -> None:
    logger.debug("%s %s -> %s", request.method, request.path, response.status_code)
