"""The AsyncAPI 3.0 description of the service bus, served at /api/asyncapi.json next to the OpenAPI one.

/api/openapi.json says what the edge answers over HTTP; this says what travels on the bus behind
it: each domain's channel, every call, command and event with its payload and error replies
(bus/asyncapi.py builds it from the contracts; `manage.py bus asyncapi` prints the same document).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from django.http import HttpRequest, HttpResponse

from bus import asyncapi

from .routes import ANYONE, Ok, Operation


@cache
def document() -> dict[str, Any]:
    """The document, built once: the contracts and the routing table do not change while the process runs."""
    return asyncapi.document()


@cache
def _encoded() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


@Operation(
    "GET",
    "/api/asyncapi.json",
    "getAsyncApi",
    tag="operations",
    summary="The AsyncAPI 3.0 description of the service bus",
    description=(
        "Channels, operations and messages of the bus behind this API: every contract method as a "
        "call (request and reply) and a command, every event as published and as each subscribing "
        "domain receives it, with the JSON Schema of arguments, results, payloads and error replies."
    ),
    security=ANYONE,
    ok=Ok("The AsyncAPI 3.0 document.", dict[str, Any]),
)
async def asyncapi_json(request: HttpRequest) -> HttpResponse:
    """GET /api/asyncapi.json: the description, encoded once per process."""
    return HttpResponse(_encoded(), content_type="application/json")
