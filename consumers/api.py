"""The JSON API under /api/: thin views that parse, call the bus, and shape the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from decimal import Decimal
from functools import wraps
from typing import Any

from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

import bus
from bus.cache import acall_cached
from bus.client import default_bus
from bus.status import astatus
from bus.threads import in_pool
from workers.payments.contract import Payments, UnknownAccount

from . import events
from .problems import from_bus_error, problem

View = Callable[..., Coroutine[Any, Any, HttpResponse]]
# Stock may be this old when served; when inventory is down, the last value is served marked stale.
STOCK_TTL = 2.0  # default of settings.EDGE_STOCK_TTL
MAX_BODY = 64 * 1024


def stock_ttl() -> float:
    ttl: float = getattr(settings, "EDGE_STOCK_TTL", STOCK_TTL)
    return ttl


def api(method: str) -> Callable[[View], View]:
    """An API view for one HTTP method (HEAD with GET): other methods get a 405 problem, and bus
    errors become problem details, so nothing reaches the client as HTML or a traceback."""
    allowed = {method, "HEAD"} if method == "GET" else {method}

    def decorate(view: View) -> View:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in allowed:
                response = problem(
                    405, "Method not allowed", f"{request.path} takes {method} only (see /api/openapi.json)."
                )
                response["Allow"] = ", ".join(sorted(allowed))
                return response
            try:
                return await view(request, *args, **kwargs)
            except bus.BusError as error:
                return from_bus_error(error)

        return wrapper

    return decorate


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


@api("GET")
async def products(request: HttpRequest) -> HttpResponse:
    listing = await acall_cached("inventory.products", ttl=stock_ttl())
    return JsonResponse({"products": listing.value, "stale": listing.stale, "age": round(listing.age, 3)})


@api("GET")
async def product(request: HttpRequest, sku: str) -> HttpResponse:
    try:
        stock = await acall_cached("inventory.stock", ttl=stock_ttl(), sku=sku)
    except bus.ContractError as error:
        return problem(404, "Not found", error.message)
    return JsonResponse({**stock.value, "stale": stock.stale, "age": round(stock.age, 3)})


@api("POST")
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
    placed = await bus.acall(
        "orders.place", customer_id=user.get_username(), items=body["items"], idempotency_key=key
    )
    response = JsonResponse(placed, status=202)
    response["Location"] = f"/api/orders/{placed['order_id']}"
    return response


@api("GET")
async def order(request: HttpRequest, order_id: str) -> HttpResponse:
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    found = await bus.acall("orders.get", order_id=order_id)
    if found["customer_id"] != user.get_username():
        # Another customer's order: as if it did not exist.
        return problem(404, "Not found", f"No order has id {order_id!r}.")
    return JsonResponse(found)


@api("GET")
async def customer_orders(request: HttpRequest, customer_id: str) -> HttpResponse:
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    if customer_id != user.get_username():
        return problem(403, "Not your orders", "Customers can list only their own orders.")
    limit = request.GET.get("limit", "20")
    if not re.fullmatch(r"[0-9]{1,3}", limit):
        return problem(
            400,
            "Invalid limit",
            "limit must be a whole number from 1 to 100.",
            errors=[{"field": "limit", "message": "not a number"}],
        )
    page = await bus.acall(
        "orders.list", customer_id=customer_id, limit=int(limit), cursor=request.GET.get("cursor", "")
    )
    return JsonResponse(page)


@api("GET")
async def balance(request: HttpRequest, customer_id: str) -> HttpResponse:
    """The signed-in customer's own balance, as payments has it now (the page shows it)."""
    user = await signed_in(request)
    if user is None:
        return _sign_in_first()
    if customer_id != user.get_username():
        return problem(403, "Not your account", "Customers can see only their own balance.")
    try:
        found = await Payments.client().balance(customer_id=customer_id)
    except UnknownAccount as error:
        return problem(404, "No account", error.message)
    return JsonResponse(found.model_dump(mode="json"))


async def topics_for(request: HttpRequest) -> list[str]:
    """What a page may follow: stock for everyone, and the signed-in customer's own orders."""
    user = await signed_in(request)
    topics = [events.STOCK]
    if user is not None:
        topics.append(events.orders_topic(user.get_username()))
    return topics


@api("GET")
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


@api("GET")
async def system(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await astatus())


@api("GET")
async def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and serving HTTP; whether it can do its work is /readyz."""
    return JsonResponse({"status": "ok"})


@api("GET")
async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready when Redis answers and every domain has a live worker; the body says what is missing."""
    try:
        report = await astatus()
    except bus.BusError as error:
        return problem(503, "Not ready", error.message, retry_after=5)
    missing = [row["domain"] for row in report["domains"] if not row["workers"]]
    if missing:
        return problem(503, "Not ready", _start_workers(missing), retry_after=5, missing=missing)
    return JsonResponse(
        {"status": "ready", "domains": {row["domain"]: len(row["workers"]) for row in report["domains"]}}
    )


def _start_workers(missing: list[str]) -> str:
    """What to do when no worker serves `missing`: `runworker` helps only when the layer is shared."""
    names, command = ", ".join(missing), f"manage.py runworker {' '.join(missing)}"
    if isinstance(default_bus.layer, InMemoryChannelLayer):
        return (
            f"No worker serves {names} in this process. The channel layer is in memory (REDIS_URL is "
            f"not set), so a `{command}` in another process cannot reach this one: serve the site with "
            f"`manage.py up`, which runs every domain's worker in the web process (runserver and daphne "
            f"alone run none), or set REDIS_URL for every process and start `{command}`."
        )
    return f"No live worker serves {names}: start `{command}`."
