"""Errors as RFC 9457 problem details (application/problem+json), each with a message a person can act on."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

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
    if isinstance(error, bus.InvalidResult):
        return problem(
            502,
            "A service answered in an unexpected shape",
            f"{error.message} The web process and the worker disagree on the contract: "
            "retry once the deploy is done.",
        )
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
    return defaults.page_not_found(request, exception or Http404())


def under_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _bad_request_detail(exception: Exception | None) -> str:
    if isinstance(exception, DisallowedHost):
        return "The Host header names a host this server does not answer to; use the site's own address."
    if isinstance(exception, RequestDataTooBig):
        return "The request body is too large; the API takes JSON bodies of a few kilobytes."
    if isinstance(exception, TooManyFieldsSent):
        return "The request has too many fields; the API takes a JSON body."
    return "The request could not be read; send JSON with Content-Type: application/json."


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (a bad Host header, an unreadable body): problem details under /api/."""
    if under_api(request):
        return problem(400, "Bad request", _bad_request_detail(exception))
    return defaults.bad_request(request, exception or ValueError())


def permission_denied_view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: problem details under /api/, Django's page elsewhere."""
    if under_api(request):
        return problem(403, "Forbidden", "This request is not allowed; sign in as the customer it is about.")
    return defaults.permission_denied(request, exception or PermissionError())


def server_error_view(request: HttpRequest) -> HttpResponse:
    """handler500: never a traceback; problem details under /api/."""
    if under_api(request):
        return internal_error()
    return defaults.server_error(request)


def internal_error() -> JsonResponse:
    return problem(500, "Internal error", "The server failed on this request; it was logged. Retry later.")
