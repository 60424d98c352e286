"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json.

Bodies are not copied by hand: the place-order body, orders, order pages and stock are the JSON
Schema of the very pydantic models the contracts validate and serialise with (workers/*/contract.py),
and parameters take their limits from the contract arguments they end up in. So a contract change
shows up here by itself. Only what the edge adds around those results (the staleness of cached
stock, the event log page, the status report, problem details) is declared in this module, as
pydantic models too. Every error is one ProblemDetails schema (consumers/problems.py), listed with
the status codes each view really answers.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Annotated, Any, Literal, NotRequired

from django.http import HttpRequest, HttpResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, with_config
from pydantic.json_schema import JsonSchemaMode
from typing_extensions import TypedDict  # pydantic refuses typing's on Python < 3.12

from bus.contracts import Method
from workers.inventory.contract import Inventory, StockChanged
from workers.orders.contract import Order, Orders
from workers.payments.contract import Payments

from .api import MAX_BODY, api

OPENAPI_VERSION = "3.1.0"
REFS = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"


# --- what the edge adds around the contracts' results -------------------------------------------


@with_config(ConfigDict(extra="forbid"))
class FieldError(TypedDict):
    """One refused input: a field path like `items.0.quantity`, or a header name."""

    field: str
    message: str


@with_config(ConfigDict(extra="allow"))
class ProblemDetails(TypedDict):
    """An error as RFC 9457 problem details; `detail` says what to do about it.

    Extension members: `errors` names each refused field, `code` a domain's refusal,
    `missing` the domains without a live worker (/readyz).
    """

    type: str
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: Annotated[str, Field(min_length=1)]
    errors: NotRequired[list[FieldError]]
    code: NotRequired[str]
    missing: NotRequired[list[str]]


Stale = Annotated[
    bool, Field(description="true: inventory is down or slow, and this is the last value read from it")
]
Age = Annotated[float, Field(ge=0, description="seconds since the value was read from inventory")]

# inventory.products' and inventory.stock's own results, with how fresh the edge's cache says they are.
_PRODUCTS: Any = Inventory.methods["products"].result_type
ProductListing = create_model(
    "ProductListing",
    __config__=ConfigDict(extra="forbid"),
    products=(_PRODUCTS, ...),
    stale=(Stale, ...),
    age=(Age, ...),
)
StockReading = create_model(
    "StockReading",
    __base__=Inventory.methods["stock"].result_type,
    stale=(Stale, ...),
    age=(Age, ...),
)

Cursor = Annotated[str, Field(pattern=r"^[^:]+:[0-9]+$", description='"epoch:offset" in the event log')]


class StockEvent(BaseModel):
    """inventory.stock_changed as the presentation worker logs it: on the public `stock` topic."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["event"]
    cursor: Cursor
    topic: Literal["stock"]
    kind: Literal["inventory.stock_changed"]
    data: StockChanged


class OrderEvent(BaseModel):
    """orders.updated as the presentation worker logs it: the whole order, on its customer's topic."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["event"]
    cursor: Cursor
    topic: Annotated[str, Field(pattern=r"^orders:.+$")]
    kind: Literal["orders.updated"]
    data: Order


class EventPage(BaseModel):
    """The events after `since` that the caller may see, oldest first; resume from `cursor`."""

    model_config = ConfigDict(extra="forbid")
    events: list[Annotated[StockEvent | OrderEvent, Field(discriminator="kind")]]
    cursor: Cursor


class DomainStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: str
    workers: dict[str, dict[str, Any]] = Field(description="live workers by id, with what each reports")
    queued: int
    read_only: str | None = Field(description="why the domain is read-only; null when it takes writes")


class SystemStatus(BaseModel):
    """bus.status.astatus(): what `manage.py bus status` shows."""

    model_config = ConfigDict(extra="forbid")
    layer: str
    domains: list[DomainStatus]
    dead_letters: int


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ready"]
    domains: dict[str, int] = Field(description="live workers per domain")


_ITEMS = Orders.methods["place"].arguments.model_fields["items"]  # with its limits (1 to 50 items)
_ITEMS_TYPE: Any = _ITEMS.annotation
PlaceOrder = create_model(
    "PlaceOrder",
    __config__=ConfigDict(extra="forbid"),
    __doc__='The body of POST /api/orders: exactly one member, "items", as orders.place takes it.',
    items=(_ITEMS_TYPE, _ITEMS),
)


# --- the document -------------------------------------------------------------------------------

# Each body schema by name: (type, mode). Validation mode for what clients send, serialization
# mode for what the API answers (the JSON the models dump to).
BODIES: dict[str, tuple[Any, JsonSchemaMode]] = {
    "PlaceOrder": (PlaceOrder, "validation"),
    "PlacedOrder": (Orders.methods["place"].result_type, "serialization"),
    "FoundOrder": (Orders.methods["get"].result_type, "serialization"),
    "OrderPage": (Orders.methods["list"].result_type, "serialization"),
    "Balance": (Payments.methods["balance"].result_type, "serialization"),
    "ProductListing": (ProductListing, "serialization"),
    "StockReading": (StockReading, "serialization"),
    "EventPage": (EventPage, "serialization"),
    "SystemStatus": (SystemStatus, "serialization"),
    "Health": (Health, "serialization"),
    "Readiness": (Readiness, "serialization"),
    "ProblemDetails": (ProblemDetails, "serialization"),
}

# What each error status means, unless an operation says more precisely.
ERRORS = {
    400: "The request is malformed; `detail` (and `errors`) name the field.",
    401: "Not signed in: sign in at /accounts/login/ first.",
    403: "Forbidden.",
    404: "Not found.",
    409: "Refused by the domain.",
    410: "Gone.",
    413: f"The body is over {MAX_BODY} bytes.",
    502: "A domain failed in a way it does not declare; the failure was logged. Retry later.",
    503: (
        "A domain cannot take the request now: read-only mode, a full queue, no live worker, or "
        "Redis unreachable. Retry after `Retry-After` seconds."
    ),
    504: "A domain did not answer within the deadline. Retry shortly.",
}
# Every call to a domain can end in these (consumers/problems.py from_bus_error).
BUS_FAILURES = (502, 503, 504)


def _argument(method: Method, name: str) -> dict[str, Any]:
    """A contract argument's JSON Schema: a parameter the view passes straight to the domain."""
    schema = dict(method.arguments.model_json_schema()["properties"][name])
    schema.pop("title", None)
    return schema


@cache
def _bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schema of each body in BODIES by name, and the definitions they refer to."""
    keyed, definitions = TypeAdapter.json_schemas(
        [(name, mode, TypeAdapter(kind)) for name, (kind, mode) in BODIES.items()], ref_template=REFS
    )
    return {name: schema for (name, _), schema in keyed.items()}, definitions.get("$defs", {})


def _body(name: str) -> dict[str, Any]:
    """A body's schema: mostly a $ref to the model's definition in components/schemas."""
    schema: dict[str, Any] = _bodies()[0][name]
    return schema


def _ok(
    description: str, schema: str, *, links: dict[str, Any] | None = None, **headers: dict[str, Any]
) -> dict[str, Any]:
    response = {
        "description": description,
        "headers": {"X-Correlation-ID": {"$ref": "#/components/headers/X-Correlation-ID"}, **headers},
        "content": {"application/json": {"schema": _body(schema)}},
    }
    if links:
        response["links"] = links
    return response


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """What a client can do next with an answer (and schemathesis's stateful phase follows)."""
    return {"operationId": operation_id, "parameters": parameters}


def _errors(*statuses: int, **descriptions: str) -> dict[str, Any]:
    """Problem-details responses; `descriptions` (`e404="..."`) say what a status means here."""
    responses = {}
    for status in sorted(statuses):
        headers: dict[str, Any] = {"X-Correlation-ID": {"$ref": "#/components/headers/X-Correlation-ID"}}
        if status == 503:
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        responses[str(status)] = {
            "description": descriptions.get(f"e{status}", ERRORS[status]),
            "headers": headers,
            "content": {PROBLEM: {"schema": _body("ProblemDetails")}},
        }
    return responses


def _path_parameter(name: str, schema: dict[str, Any], description: str, example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


# Security requirements: the names of components/securitySchemes that must all be sent.
SIGNED_IN: list[dict[str, list[str]]] = [{"session": []}]
SIGNED_IN_WITH_CSRF: list[dict[str, list[str]]] = [{"session": [], "csrfCookie": [], "csrfHeader": []}]
ANYONE: list[dict[str, list[str]]] = [{}]


def _paths() -> dict[str, Any]:
    place, get, listing = Orders.methods["place"], Orders.methods["get"], Orders.methods["list"]
    stock = Inventory.methods["stock"]
    return {
        "/api/products": {
            "get": {
                "operationId": "listProducts",
                "tags": ["stock"],
                "summary": "Every product with its stock, through the edge's cache",
                "description": (
                    "Stock may be EDGE_STOCK_TTL seconds old. When inventory is down or slow, the last "
                    "value is served with `stale: true` instead of an error (503 only when none is known)."
                ),
                "security": ANYONE,
                "responses": {
                    "200": _ok(
                        "The catalogue with stock figures.",
                        "ProductListing",
                        links={"getProduct": _link("getProduct", sku="$response.body#/products/0/sku")},
                    ),
                    **_errors(*BUS_FAILURES),
                },
            }
        },
        "/api/products/{sku}": {
            "get": {
                "operationId": "getProduct",
                "tags": ["stock"],
                "summary": "One product's stock, through the edge's cache",
                "security": ANYONE,
                "parameters": [
                    _path_parameter("sku", _argument(stock, "sku"), "The product's SKU.", example="ANVIL-1")
                ],
                "responses": {
                    "200": _ok("The product's stock figures.", "StockReading"),
                    **_errors(
                        400,
                        404,
                        *BUS_FAILURES,
                        e400="The SKU is not a valid SKU (`errors` names it).",
                        e404="No product has this SKU.",
                    ),
                },
            }
        },
        "/api/orders": {
            "post": {
                "operationId": "placeOrder",
                "tags": ["orders"],
                "summary": "Place an order for the signed-in customer",
                "description": (
                    "Answers 202 at once with the pending order; its checkout saga (reserve, charge, "
                    "confirm) runs on, and /api/orders/{order_id}, /api/events or the WebSocket follow "
                    "it. A retry with the same Idempotency-Key returns the same order."
                ),
                "security": SIGNED_IN_WITH_CSRF,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "description": "A new random value per order, the same on a retry of it.",
                        "schema": _argument(place, "idempotency_key"),
                        "example": "0b6f1c4e-8d0a-4f57-9a3e-5c2d7e1f4b90",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _body("PlaceOrder"),
                            "example": {"items": [{"sku": "ANVIL-1", "quantity": 1}]},
                        }
                    },
                },
                "responses": {
                    "202": _ok(
                        "Placed (or placed before with this key): the order as it is now.",
                        "PlacedOrder",
                        links={
                            "getOrder": _link("getOrder", order_id="$response.body#/order_id"),
                            "listCustomerOrders": _link(
                                "listCustomerOrders", customer_id="$response.body#/customer_id"
                            ),
                        },
                        Location={
                            "description": "Where to follow the order: /api/orders/{order_id}.",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^/api/orders/[^/]+$"},
                        },
                    ),
                    **_errors(
                        400,
                        401,
                        403,
                        409,
                        413,
                        *BUS_FAILURES,
                        e400=(
                            'No Idempotency-Key, a body that is not JSON or not exactly {"items": ...}, '
                            "an invalid item, or an unknown SKU; `errors` names the field."
                        ),
                        e403="The CSRF check failed: send the csrftoken cookie's value in X-CSRFToken.",
                        e409="This Idempotency-Key was used for an order with other items.",
                        e503=(
                            "orders is read-only or unavailable, or prices could not be read from "
                            "inventory; nothing was placed. Retry after `Retry-After` seconds."
                        ),
                    ),
                },
            }
        },
        "/api/orders/{order_id}": {
            "get": {
                "operationId": "getOrder",
                "tags": ["orders"],
                "summary": "One of the signed-in customer's orders, with its saga steps",
                "security": SIGNED_IN,
                "parameters": [
                    _path_parameter(
                        "order_id",
                        _argument(get, "order_id"),
                        "The order's id.",
                        example="179570914220993ca366eaf",
                    )
                ],
                "responses": {
                    "200": _ok("The order as it is now.", "FoundOrder"),
                    **_errors(
                        400,
                        401,
                        404,
                        *BUS_FAILURES,
                        e400="The id is not a valid order id.",
                        e404="No order of the signed-in customer has this id (another's is not shown).",
                    ),
                },
            }
        },
        "/api/customers/{customer_id}/orders": {
            "get": {
                "operationId": "listCustomerOrders",
                "tags": ["orders"],
                "summary": "The signed-in customer's own orders, newest first, a page at a time",
                "security": SIGNED_IN,
                "parameters": [
                    _path_parameter(
                        "customer_id",
                        _argument(listing, "customer_id"),
                        "The signed-in customer's username; another's is 403.",
                        example="ada",
                    ),
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Orders per page.",
                        "schema": _argument(listing, "limit"),
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The `next_cursor` of the page before; empty or absent for the first.",
                        "schema": _argument(listing, "cursor"),
                    },
                ],
                "responses": {
                    "200": _ok(
                        "A page of orders.",
                        "OrderPage",
                        links={
                            "nextPage": _link(
                                "listCustomerOrders",
                                customer_id="$request.path.customer_id",
                                cursor="$response.body#/next_cursor",
                            ),
                            "getOrder": _link("getOrder", order_id="$response.body#/orders/0/order_id"),
                        },
                    ),
                    **_errors(
                        400,
                        401,
                        403,
                        *BUS_FAILURES,
                        e400="`limit` is not a whole number from 1 to 100, or `cursor` is not a cursor.",
                        e403="Customers can list only their own orders.",
                    ),
                },
            }
        },
        "/api/events": {
            "get": {
                "operationId": "listEvents",
                "tags": ["events"],
                "summary": "The events a page missed: the polling fallback of the WebSocket",
                "description": (
                    "Stock events for everyone, and the signed-in customer's own order events. "
                    "Without `since`: no events, and the cursor of the newest one (where to start)."
                ),
                "security": [*ANYONE, *SIGNED_IN],
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": 'A cursor "epoch:offset" from this log (an event, or a page before).',
                        "schema": {"type": "string"},
                        "example": "5e0c1a2b:42",
                    }
                ],
                "responses": {
                    "200": _ok(
                        "Events after `since`, oldest first (at most 500).",
                        "EventPage",
                        links={"resume": _link("listEvents", since="$response.body#/cursor")},
                    ),
                    **_errors(
                        410,
                        e410=(
                            "The cursor is from another epoch of the log or already cleaned up: "
                            "GET /api/products and your orders again, then resume from GET /api/events."
                        ),
                    ),
                },
            }
        },
        "/api/system": {
            "get": {
                "operationId": "getSystemStatus",
                "tags": ["operations"],
                "summary": "Live workers, queue depth and read-only reason per domain",
                "security": ANYONE,
                "responses": {
                    "200": _ok("The bus as it is now.", "SystemStatus"),
                    **_errors(503, e503="Redis cannot be reached."),
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "tags": ["operations"],
                "summary": "This description",
                "security": ANYONE,
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "headers": {"X-Correlation-ID": {"$ref": "#/components/headers/X-Correlation-ID"}},
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "The process is up and serving HTTP",
                "security": ANYONE,
                "responses": {"200": _ok("Up.", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "tags": ["operations"],
                "summary": "Redis answers and every domain has a live worker",
                "security": ANYONE,
                "responses": {
                    "200": _ok("Ready: live workers per domain.", "Readiness"),
                    **_errors(
                        503,
                        e503="Not ready: Redis is unreachable, or `missing` names domains with no worker.",
                    ),
                },
            }
        },
    }


def _account_paths() -> dict[str, Any]:
    return {
        "/api/customers/{customer_id}/balance": {
            "get": {
                "operationId": "getBalance",
                "tags": ["accounts"],
                "summary": "The signed-in customer's own balance, as payments has it now",
                "description": "The page reads it on load and again after each update of an order.",
                "security": SIGNED_IN,
                "parameters": [
                    _path_parameter(
                        "customer_id",
                        _argument(Payments.methods["balance"], "customer_id"),
                        "The signed-in customer's username; another's is 403.",
                        example="ada",
                    )
                ],
                "responses": {
                    "200": _ok("The balance, in cents.", "Balance"),
                    **_errors(
                        400,
                        401,
                        403,
                        404,
                        *BUS_FAILURES,
                        e400="The customer id is not a valid customer id.",
                        e403="Customers can see only their own balance.",
                        e404="The customer has no account yet.",
                    ),
                },
            }
        }
    }


def _with_correlation_ids(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation takes X-Correlation-ID (bus.middleware reads it on every request)."""
    for operations in paths.values():
        for operation in operations.values():
            operation["parameters"] = [
                *operation.get("parameters", []),
                {"$ref": "#/components/parameters/X-Correlation-ID"},
            ]
    return paths


@cache
def document() -> dict[str, Any]:
    """The description, built once: nothing in it changes while the process runs."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "django-distributed shop API",
            "version": "1",
            "description": (
                "The JSON API of the shop's edge. Errors are RFC 9457 problem details "
                "(application/problem+json). Every response carries X-Correlation-ID. Sign in with "
                "the form at /accounts/login/ (Django's session cookie); unsafe methods also need "
                "Django's CSRF token: the csrftoken cookie's value in the X-CSRFToken header. "
                "Examples name the demo data of `manage.py seed`."
            ),
        },
        "tags": [
            {"name": "stock", "description": "Products and stock (inventory), cached at the edge."},
            {"name": "orders", "description": "Placing and following orders (orders)."},
            {"name": "accounts", "description": "The signed-in customer's account (payments)."},
            {"name": "events", "description": "The event log the pages follow."},
            {"name": "operations", "description": "Health, readiness, status and this description."},
        ],
        "paths": _with_correlation_ids({**_paths(), **_account_paths()}),
        "components": {
            "schemas": dict(sorted(_bodies()[1].items())),
            "securitySchemes": {
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
            },
            "headers": {
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
            },
            "parameters": {
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
            },
        },
    }


@cache
def _encoded() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


@api("GET")
async def openapi_json(request: HttpRequest) -> HttpResponse:
    """GET /api/openapi.json: the description, encoded once per process."""
    return HttpResponse(_encoded(), content_type="application/json")
