"""Under /api/, every answer is application/problem+json, whatever went wrong and where."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from bus.middleware import InlineMiddleware
from consumers.problems import internal_error, problem, under_api

logger = logging.getLogger(__name__)

#: What the API reads: JSON, and nothing Django would parse as a form.
_JSON_TYPES = ("application/json", "application/problem+json")


class ApiProblemsMiddleware(InlineMiddleware):
    """Under /api/, every answer is application/problem+json, whatever went wrong and where.

    Outermost in MIDDLEWARE. Before anything reads the body, a body that is not JSON (a form,
    multipart, anything else declared) is a 415: Django never parses it as a form, so its field count,
    size and encoding cannot fail deeper inside (the CSRF check reads forms). After the inner
    layers, an error answer that is not already a problem (a debug page, an HTML page from a
    handler, an exception) is replaced by one of the same status.
    """

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return _refuse_non_json(request) if under_api(request) else None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return _as_problem(response) if under_api(request) else response

    def failed(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if not under_api(request):
            return None
        logger.exception("unhandled error on %s %s", request.method, request.path[:200])
        return internal_error()


def _refuse_non_json(request: HttpRequest) -> JsonResponse | None:
    """A 415 for a body declared as anything but JSON, before anything parses it as a form."""
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if request.method in ("GET", "HEAD", "OPTIONS") or not content_type or content_type in _JSON_TYPES:
        return None
    return problem(
        415,
        "Unsupported media type",
        f"The API reads JSON bodies only, not {content_type[:100]}: send Content-Type: application/json.",
    )


def _as_problem(response: HttpResponseBase) -> HttpResponseBase:
    """An error answer that is not JSON already, as a problem of the same status."""
    status = response.status_code
    if status < 400 or response.get("Content-Type", "").split(";")[0] in _JSON_TYPES:
        return response
    problem_response = problem(
        status,
        response.reason_phrase or "Error",
        f"The request failed with status {status}; see the API description at /api/openapi.json.",
    )
    for header in ("Retry-After", "Allow", "WWW-Authenticate"):
        if header in response:
            problem_response[header] = response[header]
    return problem_response
