"""What the edge adds around the contracts' results, as types the OpenAPI document describes.

Bodies are not copied by hand: orders, order pages, balances and stock are the contracts' own
pydantic models (workers/*/contract.py), and the place-order body takes its limits from the
argument of orders.place it becomes. Declared here is only what the edge itself adds: how fresh
cached stock is, the event log page, health and readiness, and problem details.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, create_model, with_config
from typing_extensions import TypedDict  # pydantic refuses typing's on Python < 3.12

from workers.inventory.contract import Stock, StockChanged
from workers.orders.contract import Order, Orders


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


class ProductListing(BaseModel):
    """inventory.products' result, with how fresh the edge's cache says it is."""

    model_config = ConfigDict(extra="forbid")
    products: list[Stock]
    stale: Stale
    age: Age


class StockReading(Stock):
    """inventory.stock's result, with how fresh the edge's cache says it is."""

    stale: Stale
    age: Age


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
