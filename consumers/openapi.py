"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json.

Nothing here names a route: the paths are the operations declared above the views
(consumers/routes.py), rendered as they are, so a route cannot be served without being described
or described without being served. Bodies are the JSON Schema of the types those declarations
name: mostly the contracts' own pydantic models (consumers/schemas.py has what the edge adds), and
parameters take their limits from the contract arguments they end up in. Every error is one
ProblemDetails schema, listed with the status codes each operation declares.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from typing import Any

from django.http import HttpRequest, HttpResponse
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from .routes import ANYONE, Argument, Ok, Operation, Parameter, registry
from .schemas import ProblemDetails

OPENAPI_VERSION = "3.1.0"
REFS = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
CORRELATION_ID = {"$ref": "#/components/headers/X-Correlation-ID"}

INFO = {
    "title": "django-distributed shop API",
    "version": "1",
    "description": (
        "The JSON API of the shop's edge. Errors are RFC 9457 problem details "
        "(application/problem+json). Every response carries X-Correlation-ID. Sign in with "
        "the form at /accounts/login/ (Django's session cookie); unsafe methods also need "
        "Django's CSRF token: the csrftoken cookie's value in the X-CSRFToken header. "
        "Examples name the demo data of `manage.py seed`."
    ),
}
TAGS = [
    {"name": "stock", "description": "Products and stock (inventory), cached at the edge."},
    {"name": "orders", "description": "Placing and following orders (orders)."},
    {"name": "accounts", "description": "The signed-in customer's account (payments)."},
    {"name": "events", "description": "The event log the pages follow."},
    {"name": "operations", "description": "Health, readiness, status and this description."},
]
SECURITY_SCHEMES = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "sessionid",
        "description": "Django's session cookie, set by signing in at /accounts/login/.",
    },
    "csrfCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "csrftoken",
        "description": "Django's CSRF cookie, set by any page (GET /accounts/login/).",
    },
    "csrfHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRFToken",
        "description": "The csrftoken cookie's value again, which a foreign page cannot read.",
    },
}
HEADERS = {
    "X-Correlation-ID": {
        "description": (
            "The request's correlation id: the X-Correlation-ID (or X-Request-ID) sent, "
            "when valid, else a new one. Every log line and bus call of the request carries it."
        ),
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
}
# Every operation takes it: bus.middleware reads it on every request.
PARAMETERS = {
    "X-Correlation-ID": {
        "name": "X-Correlation-ID",
        "in": "header",
        "required": False,
        "description": (
            "Follow the request through every log under this id: 1 to 64 of A-Z a-z 0-9 . _ -; "
            "any other value is ignored and a new id made."
        ),
        "schema": {"type": "string"},
    }
}


class Schemas:
    """The JSON Schema of every body the operations name, with the definitions they refer to.

    Validation mode for what clients send, serialization mode for what the API answers (the JSON
    the models dump to); a model used both ways and differing would get two names.
    """

    def __init__(self, operations: Iterable[Operation]) -> None:
        kinds: dict[tuple[Any, JsonSchemaMode], None] = {(ProblemDetails, "serialization"): None}
        for operation in operations:
            if operation.body is not None:
                kinds[operation.body.model, "validation"] = None
            kinds[operation.ok.body, "serialization"] = None
        self.bodies, definitions = TypeAdapter.json_schemas(
            [(key, key[1], TypeAdapter(key[0])) for key in kinds], ref_template=REFS
        )
        self.definitions: dict[str, Any] = dict(sorted(definitions.get("$defs", {}).items()))

    def of(self, kind: Any, mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        """A body's schema: mostly a $ref to the model's definition in components/schemas."""
        return self.bodies[(kind, mode), mode]


def _parameter(parameter: Parameter) -> dict[str, Any]:
    schema = parameter.schema
    rendered = {
        "name": parameter.name,
        "in": parameter.where,
        "required": parameter.required,
        "description": parameter.description,
        "schema": schema.json_schema() if isinstance(schema, Argument) else dict(schema),
    }
    if parameter.example is not None:
        rendered["example"] = parameter.example
    return rendered


def _ok(ok: Ok, schemas: Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ok.description,
        "headers": {"X-Correlation-ID": CORRELATION_ID, **ok.headers},
        "content": {"application/json": {"schema": schemas.of(ok.body)}},
    }
    if ok.links:
        response["links"] = {
            name: {"operationId": link.operation_id, "parameters": dict(link.parameters)}
            for name, link in ok.links.items()
        }
    return response


def _problem(description: str, status: int, schemas: Schemas) -> dict[str, Any]:
    """A problem-details answer; a 503 says when to retry."""
    headers: dict[str, Any] = {"X-Correlation-ID": CORRELATION_ID}
    if status == 503:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return {
        "description": description,
        "headers": headers,
        "content": {PROBLEM: {"schema": schemas.of(ProblemDetails)}},
    }


def _operation(operation: Operation, schemas: Schemas) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": operation.summary,
    }
    if operation.description:
        rendered["description"] = operation.description
    rendered["security"] = [
        {name: list(scopes) for name, scopes in each.items()} for each in operation.security
    ]
    rendered["parameters"] = [
        *map(_parameter, operation.parameters),
        {"$ref": "#/components/parameters/X-Correlation-ID"},
    ]
    if operation.body is not None:
        content = {"schema": schemas.of(operation.body.model, "validation")}
        if operation.body.example is not None:
            content["example"] = operation.body.example
        rendered["requestBody"] = {"required": True, "content": {"application/json": content}}
    rendered["responses"] = {
        str(operation.ok.status): _ok(operation.ok, schemas),
        **{
            str(status): _problem(operation.errors[status], status, schemas)
            for status in sorted(operation.errors)
        },
    }
    return rendered


@cache
def document() -> dict[str, Any]:
    """The description, built once: nothing in it changes while the process runs."""
    operations = [route.operation for route in registry.routes()]
    schemas = Schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": INFO,
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas.definitions,
            "securitySchemes": SECURITY_SCHEMES,
            "headers": HEADERS,
            "parameters": PARAMETERS,
        },
    }


@cache
def _encoded() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


@Operation(
    "GET",
    "/api/openapi.json",
    "getOpenApi",
    tag="operations",
    summary="This description",
    security=ANYONE,
    ok=Ok("The OpenAPI 3.1 document.", dict[str, Any]),
)
async def openapi_json(request: HttpRequest) -> HttpResponse:
    """GET /api/openapi.json: the description, encoded once per process."""
    return HttpResponse(_encoded(), content_type="application/json")
