"""The JSON API under /api/: thin views that parse, call the domains' typed clients, and shape the answer.

Each view is declared once, by the `Operation` above it (consumers/routes.py): its path, method,
parameters, body and every status it answers. The URL table and /api/openapi.json come from those.
Orders, accounts and events are here; stock, read through the edge's cache, is consumers/stock.py;
health, readiness and status are consumers/health.py.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from pydantic import BaseModel

from bus.contracts import RemoteMethod
from bus.threads import in_pool
from workers.orders.contract import Order, OrderPage, Orders
from workers.payments.contract import Balance, Payments, UnknownAccount

from . import events
from .problems import problem
from .routes import (
    ANYONE_OR_SIGNED_IN,
    BUS_FAILURES,
    MAX_BODY,
    SIGNED_IN,
    SIGNED_IN_WITH_CSRF,
    Body,
    Ok,
    Operation,
    Parameter,
    argument,
    in_path,
    in_query,
    link,
    usual,
)
from .schemas import EventPage, PlaceOrder


def as_json(value: BaseModel, status: int = 200) -> JsonResponse:
    """A contract's model as the JSON it dumps to (what the worker sent, datetimes as ISO 8601)."""
    return JsonResponse(value.model_dump(mode="json"), status=status)


def integral(text: str) -> int | float:
    """JSON has one number type: 2.0 is the integer 2 (as in JSON Schema), 2.5 stays a float.

    Decided on the exact decimal, so 1.0000000000000001 is not taken for 1; past 18 digits
    (no quantity is that large) it stays a float rather than become a huge int (1e999999999).
    """
    number = Decimal(text)
    whole = number.is_finite() and number.adjusted() < 18 and number == number.to_integral_value()
    return int(number) if whole else float(text)


async def signed_in(request: HttpRequest) -> AbstractBaseUser | None:
    user = await request.auser()
    return None if isinstance(user, AnonymousUser) else user


def _sign_in_first() -> JsonResponse:
    return problem(401, "Sign in first", "This needs a signed-in customer: sign in at /accounts/login/.")


async def _unless_own(request: HttpRequest, customer_id: str, title: str, detail: str) -> JsonResponse | None:
    """A 401 when nobody is signed in, a 403 when `customer_id` is another customer; else None."""
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    if customer_id != user.get_username():
        return problem(403, title, detail)
    return None


# --- orders ---------------------------------------------------------------------------------------

IDEMPOTENCY_KEY = Parameter(
    "Idempotency-Key",
    "header",
    "A new random value per order, the same on a retry of it.",
    argument(Orders.place, "idempotency_key"),
    required=True,
    example="0b6f1c4e-8d0a-4f57-9a3e-5c2d7e1f4b90",
)
LOCATION = {
    "description": "Where to follow the order: /api/orders/{order_id}.",
    "required": True,
    "schema": {"type": "string", "pattern": "^/api/orders/[^/]+$"},
}


@Operation(
    "POST",
    "/api/orders",
    "placeOrder",
    tag="orders",
    summary="Place an order for the signed-in customer",
    description=(
        "Answers 202 at once with the pending order; its checkout saga (reserve, charge, "
        "confirm) runs on, and /api/orders/{order_id}, /api/events or the WebSocket follow "
        "it. A retry with the same Idempotency-Key returns the same order."
    ),
    security=SIGNED_IN_WITH_CSRF,
    parameters=[IDEMPOTENCY_KEY],
    body=Body(PlaceOrder, example={"items": [{"sku": "ANVIL-1", "quantity": 1}]}),
    ok=Ok(
        "Placed (or placed before with this key): the order as it is now.",
        Order,
        status=202,
        links={
            "getOrder": link("getOrder", order_id="$response.body#/order_id"),
            "listCustomerOrders": link("listCustomerOrders", customer_id="$response.body#/customer_id"),
        },
        headers={"Location": LOCATION},
    ),
    errors={
        400: (
            'No Idempotency-Key, a body that is not JSON or not exactly {"items": ...}, '
            "an invalid item, or an unknown SKU; `errors` names the field."
        ),
        **usual(401, 413, 502, 504),
        403: "The CSRF check failed: send the csrftoken cookie's value in X-CSRFToken.",
        409: "This Idempotency-Key was used for an order with other items.",
        503: (
            "orders is read-only or unavailable, or prices could not be read from "
            "inventory; nothing was placed. Retry after `Retry-After` seconds."
        ),
    },
)
async def place_order(request: HttpRequest) -> HttpResponse:
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return problem(
            400,
            "Idempotency-Key missing",
            "Send an Idempotency-Key header (a new random value per order, the same on a retry).",
            errors=[{"field": "Idempotency-Key", "message": "required"}],
        )
    body = _order_items(request)
    if isinstance(body, HttpResponse):
        return body
    placed = await Orders.client().place(customer_id=user.get_username(), items=body, idempotency_key=key)
    response = as_json(placed, status=202)
    response["Location"] = f"/api/orders/{placed.order_id}"
    return response


def _order_items(request: HttpRequest) -> Any:
    """The "items" of an order's JSON body (checked by orders.place), or the problem with the body."""
    try:
        too_big = len(request.body) > MAX_BODY
    except RequestDataTooBig:  # over Django's DATA_UPLOAD_MAX_MEMORY_SIZE, so over ours too
        too_big = True
    if too_big:
        return problem(413, "Body too large", f"The body is over {MAX_BODY} bytes; an order is much smaller.")
    try:
        body = json.loads(request.body, parse_float=integral)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return problem(
            400,
            "Body is not JSON",
            f"The body is not valid JSON ({str(error)[:200] or 'too deeply nested'}).",
        )
    if not isinstance(body, dict) or set(body) != {"items"}:
        return problem(
            400,
            "Invalid order",
            'The body must be a JSON object with exactly one member, "items".',
            errors=[{"field": "items", "message": "required, and nothing else"}],
        )
    return body["items"]


@Operation(
    "GET",
    "/api/orders/{order_id}",
    "getOrder",
    tag="orders",
    summary="One of the signed-in customer's orders, with its saga steps",
    security=SIGNED_IN,
    parameters=[
        in_path(
            "order_id",
            "The order's id.",
            argument(Orders.get, "order_id"),
            example="179570914220993ca366eaf",
        )
    ],
    ok=Ok("The order as it is now.", Order),
    errors={
        400: "The id is not a valid order id.",
        **usual(401, *BUS_FAILURES),
        404: "No order of the signed-in customer has this id (another's is not shown).",
    },
)
async def order(request: HttpRequest, order_id: str) -> HttpResponse:
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    found = await Orders.client().get(order_id=order_id)
    if found.customer_id != user.get_username():
        # Another customer's order: as if it did not exist.
        return problem(404, "Not found", f"No order has id {order_id!r}.")
    return as_json(found)


def _customer(remote: RemoteMethod[..., Any]) -> Parameter:
    """The {customer_id} of a customer's own resource, with the limits of `remote`'s argument."""
    description = "The signed-in customer's username; another's is 403."
    return in_path("customer_id", description, argument(remote, "customer_id"), example="ada")


@Operation(
    "GET",
    "/api/customers/{customer_id}/orders",
    "listCustomerOrders",
    tag="orders",
    summary="The signed-in customer's own orders, newest first, a page at a time",
    security=SIGNED_IN,
    parameters=[
        _customer(Orders.list),
        in_query("limit", "Orders per page.", argument(Orders.list, "limit")),
        in_query(
            "cursor",
            "The `next_cursor` of the page before; empty or absent for the first.",
            argument(Orders.list, "cursor"),
        ),
    ],
    ok=Ok(
        "A page of orders.",
        OrderPage,
        links={
            "nextPage": link(
                "listCustomerOrders",
                customer_id="$request.path.customer_id",
                cursor="$response.body#/next_cursor",
            ),
            "getOrder": link("getOrder", order_id="$response.body#/orders/0/order_id"),
        },
    ),
    errors={
        400: "`limit` is not a whole number from 1 to 100, or `cursor` is not a cursor.",
        **usual(401, *BUS_FAILURES),
        403: "Customers can list only their own orders.",
    },
)
async def customer_orders(request: HttpRequest, customer_id: str) -> HttpResponse:
    refused = await _unless_own(
        request, customer_id, "Not your orders", "Customers can list only their own orders."
    )
    if refused is not None:
        return refused
    limit = request.GET.get("limit", "20")
    if not re.fullmatch(r"[0-9]{1,3}", limit):
        return problem(
            400,
            "Invalid limit",
            "limit must be a whole number from 1 to 100.",
            errors=[{"field": "limit", "message": "not a number"}],
        )
    page = await Orders.client().list(
        customer_id=customer_id, limit=int(limit), cursor=request.GET.get("cursor", "")
    )
    return as_json(page)


# --- accounts -------------------------------------------------------------------------------------


@Operation(
    "GET",
    "/api/customers/{customer_id}/balance",
    "getBalance",
    tag="accounts",
    summary="The signed-in customer's own balance, as payments has it now",
    description="The page reads it on load and again after each update of an order.",
    security=SIGNED_IN,
    parameters=[_customer(Payments.balance)],
    ok=Ok("The balance, in cents.", Balance),
    errors={
        400: "The customer id is not a valid customer id.",
        **usual(401, *BUS_FAILURES),
        403: "Customers can see only their own balance.",
        404: "The customer has no account yet.",
    },
)
async def balance(request: HttpRequest, customer_id: str) -> HttpResponse:
    """The signed-in customer's own balance, as payments has it now (the page shows it)."""
    refused = await _unless_own(
        request, customer_id, "Not your account", "Customers can see only their own balance."
    )
    if refused is not None:
        return refused
    try:
        found = await Payments.client().balance(customer_id=customer_id)
    except UnknownAccount as error:
        return problem(404, "No account", error.message)
    return as_json(found)


# --- events ---------------------------------------------------------------------------------------


async def topics_for(request: HttpRequest) -> list[str]:
    """What a page may follow: stock for everyone, and the signed-in customer's own orders."""
    user = await signed_in(request)
    topics = [events.STOCK]
    if user is not None:
        topics.append(events.orders_topic(user.get_username()))
    return topics


@Operation(
    "GET",
    "/api/events",
    "listEvents",
    tag="events",
    summary="The events a page missed: the polling fallback of the WebSocket",
    description=(
        "Stock events for everyone, and the signed-in customer's own order events. "
        "Without `since`: no events, and the cursor of the newest one (where to start)."
    ),
    security=ANYONE_OR_SIGNED_IN,
    parameters=[
        in_query(
            "since",
            'A cursor "epoch:offset" from this log (an event, or a page before).',
            {"type": "string"},
            example="5e0c1a2b:42",
        )
    ],
    ok=Ok(
        "Events after `since`, oldest first (at most 500).",
        EventPage,
        links={"resume": link("listEvents", since="$response.body#/cursor")},
    ),
    errors={
        410: (
            "The cursor is from another epoch of the log or already cleaned up: "
            "GET /api/products and your orders again, then resume from GET /api/events."
        )
    },
)
async def event_log(request: HttpRequest) -> HttpResponse:
    since = request.GET.get("since")
    if not since:
        return JsonResponse({"events": [], "cursor": await in_pool(events.head)})
    try:
        entries = await in_pool(events.since, since, await topics_for(request))
    except events.CursorGone as gone:
        return problem(
            410, "Cursor gone", f"{gone} GET /api/products and your orders, then resume from /api/events."
        )
    return JsonResponse(
        {
            "events": [entry.as_message() for entry in entries],
            "cursor": entries[-1].cursor if entries else since,
        }
    )
