"""One HTTP request as the bus sees it: a correlation id for its log lines and calls, and its own
read-your-writes scope.

The id comes from the X-Correlation-ID (or X-Request-ID) header when a proxy set one, else it is
new; it is sent back in X-Correlation-ID, every bus call the request makes carries it, and so does
every log line about those calls in every worker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
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


class CorrelationMiddleware:
    """Give each request a correlation id and a consistency scope (works for sync and async views)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        context = _context(request)
        with handling(context), databases.consistency_scope(), tracing.span(_name(request), "server"):
            response: HttpResponseBase = self.get_response(request)
            _log(request, response)
        response["X-Correlation-ID"] = context.correlation_id
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        context = _context(request)
        with handling(context), databases.consistency_scope(), tracing.span(_name(request), "server"):
            call: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            response = await call(request)
            _log(request, response)
        response["X-Correlation-ID"] = context.correlation_id
        return response


def _name(request: HttpRequest) -> str:
    return f"{request.method} {request.path}"


def _log(request: HttpRequest, response: HttpResponseBase) -> None:
    logger.debug("%s %s -> %s", request.method, request.path, response.status_code)
