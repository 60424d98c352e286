"""The orders domain's contract: place an order, follow its saga, list a customer's orders."""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from bus import Contract, ContractError, Event, Schema, rpc
from workers.vocabulary import CustomerId, OrderId, Sku


class OrderState(StrEnum):
    """Where an order's checkout saga is: forward to confirmed, or through compensating to failed."""

    PENDING = "pending"
    RESERVED = "reserved"
    CHARGED = "charged"
    CONFIRMED = "confirmed"
    COMPENSATING = "compensating"
    FAILED = "failed"


# The states an order never leaves: the one place that names them.
TERMINAL_STATES: tuple[OrderState, ...] = (OrderState.CONFIRMED, OrderState.FAILED)


class StepName(StrEnum):
    """A step of the checkout saga, as the page lists them."""

    PLACED = "placed"
    RESERVED = "reserved"
    CHARGED = "charged"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    REFUNDED = "refunded"
    FAILED = "failed"


class InvalidOrder(ContractError):
    """The order cannot be placed as given (an unknown SKU, a SKU twice); details name the item."""


class IdempotencyConflict(ContractError):
    """The idempotency key was already used for a different order; use a new key for new items."""


class OrderNotFound(ContractError):
    """No order has this id."""


class CatalogueUnavailable(ContractError):
    """Prices could not be read from inventory just now; nothing was placed. Retry shortly."""


class OrderItem(Schema):
    sku: Sku
    quantity: Annotated[int, Field(gt=0, le=1000)]


class OrderLine(Schema):
    sku: str
    name: str
    quantity: int
    price_cents: int


class Step(Schema):
    """One step of the checkout saga, as the page shows it."""

    name: StepName
    at: datetime.datetime
    detail: str = ""


class Order(Schema):
    order_id: str
    customer_id: str
    state: OrderState
    reason: str
    waiting: str = Field(
        "",
        description="what the saga waits for now, as a person reads it "
        "('payments: read-only (ledger migration)'); empty when it is not held up",
    )
    total_cents: int
    lines: list[OrderLine]
    steps: list[Step]
    created_at: datetime.datetime
    updated_at: datetime.datetime


class OrderPage(Schema):
    orders: list[Order]
    next_cursor: str = Field(description="pass it as `cursor` for the next page; empty on the last page")


class OrderUpdated(Schema):
    """An order changed state; the payload is the whole order as it is now."""

    order: Order


class Orders(Contract, name="orders"):
    """Orders and their checkout saga: reserve stock, charge, confirm; or release, refund, fail."""

    updated = Event(OrderUpdated)

    @rpc(errors=[InvalidOrder, IdempotencyConflict, CatalogueUnavailable])
    async def place(
        self,
        *,
        customer_id: CustomerId,
        items: Annotated[list[OrderItem], Field(min_length=1, max_length=50)],
        idempotency_key: Annotated[str, Field(min_length=1, max_length=100)],
    ) -> Order:
        """Place an order: it comes back at once as pending, and its saga runs on without the caller.

        Placing again with the same idempotency key returns the same order.
        """

    @rpc(read=True, errors=[OrderNotFound])
    async def get(self, *, order_id: OrderId) -> Order:
        """One order with its saga steps."""

    @rpc(read=True)
    async def list(
        self,
        *,
        customer_id: CustomerId,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
        cursor: Annotated[str, Field(max_length=32)] = "",
    ) -> OrderPage:
        """A customer's orders, newest first, a page at a time."""

    @rpc(errors=[OrderNotFound])
    async def advance(self, *, order_id: OrderId) -> Order:
        """Run an order's saga as far as it can go now; safe to repeat (the sweep calls it too)."""
