"""Products and stock under /api/products: inventory's reads through the edge's cache.

Within EDGE_STOCK_TTL seconds a reading is served from the cache; when inventory is down or slow
the last value is served marked stale instead of an error (bus/cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from bus.cache import acall_cached
from bus.contracts import RemoteMethod
from workers.inventory.contract import Inventory, UnknownProduct

from .api import as_json
from .problems import problem
from .routes import ANYONE, BUS_FAILURES, Ok, Operation, argument, in_path, link, usual
from .schemas import ProductListing, StockReading

P = ParamSpec("P")
R = TypeVar("R")
# Stock may be this old when served; when inventory is down, the last value is served marked stale.
STOCK_TTL = 2.0  # default of settings.EDGE_STOCK_TTL


def stock_ttl() -> float:
    ttl: float = getattr(settings, "EDGE_STOCK_TTL", STOCK_TTL)
    return ttl


@dataclass(frozen=True)
class Fresh(Generic[R]):
    """A read through the edge's cache, as the contract's type, and how fresh it is."""

    value: R
    stale: bool
    age: float


async def through_cache(read: RemoteMethod[P, R], *positional: P.args, **arguments: P.kwargs) -> Fresh[R]:
    """A contract's read method through bus.cache (`through_cache(Inventory.stock, sku=...)`): mypy
    checks the arguments and knows the result's type, where `acall_cached("inventory.stock", ...)`
    takes any keywords and returns untyped JSON."""
    method = read.method
    if positional:
        raise TypeError(f"{method.target} takes keyword arguments only, not {len(positional)} positional.")
    values: dict[str, Any] = dict(arguments)  # the contract's arguments, not acall_cached's own
    cached = await acall_cached(method.target, ttl=stock_ttl(), **values)
    # A clock stepped back must not make the age negative (the description says it is not).
    return Fresh(method.load_result(cached.value), cached.stale, round(max(cached.age, 0.0), 3))


@Operation(
    "GET",
    "/api/products",
    "listProducts",
    tag="stock",
    summary="Every product with its stock, through the edge's cache",
    description=(
        "Stock may be EDGE_STOCK_TTL seconds old. When inventory is down or slow, the last "
        "value is served with `stale: true` instead of an error (503 only when none is known)."
    ),
    security=ANYONE,
    ok=Ok(
        "The catalogue with stock figures.",
        ProductListing,
        links={"getProduct": link("getProduct", sku="$response.body#/products/0/sku")},
    ),
    errors=usual(*BUS_FAILURES),
)
async def products(request: HttpRequest) -> HttpResponse:
    listing = await through_cache(Inventory.products)
    return as_json(ProductListing(products=listing.value, stale=listing.stale, age=listing.age))


@Operation(
    "GET",
    "/api/products/{sku}",
    "getProduct",
    tag="stock",
    summary="One product's stock, through the edge's cache",
    security=ANYONE,
    parameters=[in_path("sku", "The product's SKU.", argument(Inventory.stock, "sku"), example="ANVIL-1")],
    ok=Ok("The product's stock figures.", StockReading),
    errors={
        400: "The SKU is not a valid SKU (`errors` names it).",
        404: "No product has this SKU.",
        **usual(*BUS_FAILURES),
    },
)
async def product(request: HttpRequest, sku: str) -> HttpResponse:
    try:
        stock = await through_cache(Inventory.stock, sku=sku)
    except UnknownProduct as error:
        return problem(404, "Not found", error.message)
    return as_json(StockReading(**stock.value.model_dump(), stale=stock.stale, age=stock.age))
