"""Errors as RFC 9457 problem details (application/problem+json), each with a message a person can act on."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found

import bus
from workers.orders.contract import CatalogueUnavailable, IdempotencyConflict, InvalidOrder, OrderNotFound

# Seconds a client should wait before retrying, by kind of unavailability.
RETRY_AFTER = {bus.ReadOnly: 30, bus.NoWorker: 5, bus.ChannelFull: 2, bus.BrokerUnreachable: 5}


def problem(
    status: int, title: str, detail: str, *, retry_after: int | None = None, **extra: Any
) -> JsonResponse:
    """A problem+json response; `extra` members (like `errors`) are added to the body."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    response = JsonResponse(body, status=status, content_type="application/problem+json")
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def from_bus_error(error: bus.BusError) -> JsonResponse:
    """The HTTP answer to an error from the bus: what happened, and what to do about it."""
    if isinstance(error, bus.ValidationError):
        return problem(400, "Invalid request", error.message, errors=error.errors)
    if isinstance(error, InvalidOrder):
        return problem(
            400, "Invalid order", error.message, errors=[{"field": "items", "message": error.message}]
        )
    if isinstance(error, OrderNotFound):
        return problem(404, "Not found", error.message)
    if isinstance(error, IdempotencyConflict):
        return problem(409, "Idempotency key reused", error.message)
    if isinstance(error, CatalogueUnavailable):
        return problem(503, "Catalogue unavailable", error.message, retry_after=5)
    if isinstance(error, bus.DeadlineExceeded):
        return problem(504, "A service did not answer in time", f"{error.message} Retry shortly.")
    if isinstance(error, bus.Unavailable):
        retry = next((seconds for kind, seconds in RETRY_AFTER.items() if isinstance(error, kind)), 5)
        return problem(503, "Service unavailable", error.message, retry_after=retry)
    if isinstance(error, bus.ContractError):
        return problem(409, "Refused", error.message, code=error.code)
    return problem(502, "A service failed", f"{error.message} The failure was logged; retry later.")


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    """settings.CSRF_FAILURE_VIEW: a missing or wrong CSRF token, said plainly."""
    return problem(
        403,
        "CSRF check failed",
        f"{reason.rstrip('.') or 'The CSRF token is missing or wrong'}. Send the csrftoken cookie's "
        "value in the X-CSRFToken header.",
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """settings' handler404: problem details under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return problem(
            404,
            "Not found",
            f"No API endpoint at {request.path[:200]!r}; the endpoints are listed in the README.",
        )
    return page_not_found(request, exception or Http404())
