"""The inventory domain's contract: the only module other domains and the edge import."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from bus import Contract, ContractError, Event, Schema, rpc
from workers.vocabulary import OrderId, Sku

Quantity = Annotated[int, Field(gt=0, le=1_000_000)]
Cents = Annotated[int, Field(ge=0, le=100_000_000_00)]


class ReservationState(StrEnum):
    """One reserved line: held for its order, then sold (committed) or given back (released)."""

    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"


class HoldState(StrEnum):
    """An order's hold, all its lines at once; ReservationClosed's `state` detail is one of these."""

    OPEN = "open"
    RELEASED = "released"
    COMMITTED = "committed"


class UnknownProduct(ContractError):
    """No product has this SKU; add it with inventory.add_product first."""


class OutOfStock(ContractError):
    """Fewer units are available than were asked for; nothing was reserved."""


class ReservationClosed(ContractError):
    """The order's hold is closed: released (by the saga, or on expiry) or committed; nothing more."""


class Product(Schema):
    sku: str
    name: str
    price_cents: int


class Stock(Schema):
    sku: str
    name: str
    price_cents: int
    on_hand: int
    reserved: int
    available: int
    version: int


class Reservation(Schema):
    order_id: str
    sku: str
    quantity: int
    state: ReservationState


class StockChanged(Schema):
    """The stock of one product changed; subscribers get its new figures."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    version: int = Field(description="grows with every change: of two figures, the higher version is newer")


class Inventory(Contract, name="inventory"):
    """The catalogue and the stock of every product. Every write is idempotent per order_id."""

    stock_changed = Event(StockChanged)

    @rpc()
    async def add_product(
        self, *, sku: Sku, name: Annotated[str, Field(min_length=1, max_length=200)], price_cents: Cents
    ) -> Product:
        """Create a product, or update its name and price; stock is left as it is."""

    @rpc(read=True)
    async def products(self) -> list[Stock]:
        """Every product with its stock, by SKU."""

    @rpc(read=True, errors=[UnknownProduct])
    async def stock(self, *, sku: Sku) -> Stock:
        """One product's stock: on hand, reserved for open orders, and available to reserve."""

    @rpc(errors=[UnknownProduct])
    async def restock(self, *, sku: Sku, quantity: Quantity) -> Stock:
        """Add units to the stock on hand."""

    @rpc(errors=[UnknownProduct, OutOfStock, ReservationClosed])
    async def reserve(self, *, order_id: OrderId, sku: Sku, quantity: Quantity) -> Reservation:
        """Hold units for an order; asking again for the same order and SKU returns the first hold."""

    @rpc()
    async def release(self, *, order_id: OrderId) -> list[Reservation]:
        """Give an order's units back, held or already committed (the order failed after all).

        Later reserves and commits for the order are refused.
        """

    @rpc(errors=[ReservationClosed])
    async def commit(self, *, order_id: OrderId) -> list[Reservation]:
        """Turn an order's held units into a sale; refused once released, or once the hold expired.

        A hold lasts INVENTORY_HOLD_SECONDS: a commit after that releases it and is refused.
        """
