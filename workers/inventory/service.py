"""The inventory domain's implementation, served by `manage.py runworker inventory`."""

from __future__ import annotations

from django.db import transaction

from bus import Service, every, wakeups
from bus.databases import alias_for
from bus.outbox import emit, relay

from . import models
from .contract import (
    Inventory,
    OutOfStock,
    Product,
    Reservation,
    ReservationClosed,
    Stock,
    UnknownProduct,
)


def _stock(product: models.Product) -> Stock:
    return Stock(
        sku=product.sku,
        name=product.name,
        price_cents=product.price_cents,
        on_hand=product.on_hand,
        reserved=product.reserved,
        available=product.available,
        version=product.version,
    )


def _reservation(reservation: models.Reservation) -> Reservation:
    return Reservation(
        order_id=reservation.hold_id,
        sku=reservation.product_id,
        quantity=reservation.quantity,
        state=reservation.state,  # type: ignore[arg-type]
    )


def _save_stock(product: models.Product, *fields: str) -> None:
    """Save changed stock figures with a new version, so readers can order the figures they get."""
    product.version += 1
    product.save(update_fields=[*fields, "version"])


def _announce(products: list[models.Product]) -> None:
    """Write stock_changed events to the outbox, in the transaction that changed the stock."""
    for product in products:
        emit(
            models.Outbox,
            "inventory.stock_changed",
            sku=product.sku,
            on_hand=product.on_hand,
            reserved=product.reserved,
            available=product.available,
            version=product.version,
        )


class InventoryService(Service, contract=Inventory):
    @property
    def database(self) -> str:
        """The primary: for writes, and for reads inside a write's transaction."""
        return alias_for("inventory", write=True)

    def add_product(self, *, sku: str, name: str, price_cents: int) -> Product:
        models.Product.objects.using(self.database).update_or_create(
            sku=sku, defaults={"name": name, "price_cents": price_cents}
        )
        return Product(sku=sku, name=name, price_cents=price_cents)

    def products(self) -> list[Stock]:
        products = models.Product.objects.using(alias_for("inventory", write=False))
        return [_stock(product) for product in products.order_by("sku")]

    def stock(self, *, sku: str) -> Stock:
        return _stock(self._product(sku, lock=False))

    def restock(self, *, sku: str, quantity: int) -> Stock:
        with transaction.atomic(using=self.database):
            product = self._product(sku, lock=True)
            product.on_hand += quantity
            _save_stock(product, "on_hand")
            _announce([product])
        return _stock(product)

    def reserve(self, *, order_id: str, sku: str, quantity: int) -> Reservation:
        with transaction.atomic(using=self.database):
            hold = self._hold(order_id)
            if hold.state != models.OrderHold.State.OPEN:
                raise ReservationClosed(
                    f"Order {order_id} was already {hold.state}; it cannot reserve more stock.",
                    order_id=order_id,
                    state=hold.state,
                )
            existing = hold.reservations.filter(product_id=sku).first()
            if existing is not None:
                return _reservation(existing)
            product = self._product(sku, lock=True)
            if product.available < quantity:
                raise OutOfStock(
                    f"Only {product.available} of {sku} available, {quantity} asked for.",
                    sku=sku,
                    available=product.available,
                    requested=quantity,
                )
            product.reserved += quantity
            _save_stock(product, "reserved")
            reservation = hold.reservations.create(product=product, quantity=quantity)
            _announce([product])
        return _reservation(reservation)

    def release(self, *, order_id: str) -> list[Reservation]:
        with transaction.atomic(using=self.database):
            hold = self._hold(order_id)
            if hold.state == models.OrderHold.State.OPEN:
                hold.state = models.OrderHold.State.RELEASED
                hold.save(update_fields=["state", "updated_at"])
                self._settle(hold, models.Reservation.State.RELEASED)
            return [_reservation(reservation) for reservation in hold.reservations.order_by("id")]

    def commit(self, *, order_id: str) -> list[Reservation]:
        with transaction.atomic(using=self.database):
            hold = self._hold(order_id)
            if hold.state == models.OrderHold.State.RELEASED:
                raise ReservationClosed(
                    f"Order {order_id} was released; its stock cannot be committed.",
                    order_id=order_id,
                    state=hold.state,
                )
            if hold.state == models.OrderHold.State.OPEN:
                hold.state = models.OrderHold.State.COMMITTED
                hold.save(update_fields=["state", "updated_at"])
                self._settle(hold, models.Reservation.State.COMMITTED)
            return [_reservation(reservation) for reservation in hold.reservations.order_by("id")]

    # -- helpers -------------------------------------------------------------

    def _product(self, sku: str, *, lock: bool) -> models.Product:
        """A product, locked on the primary for a write, or from a replica for a plain read."""
        if lock:
            products = models.Product.objects.using(self.database).select_for_update()
        else:
            products = models.Product.objects.using(alias_for("inventory", write=False))
        try:
            return products.get(sku=sku)  # not filter().first(): its ORDER BY costs 40 µs for nothing
        except models.Product.DoesNotExist:
            raise UnknownProduct(
                f"No product has SKU {sku!r}; add it with inventory.add_product.", sku=sku
            ) from None

    def _hold(self, order_id: str) -> models.OrderHold:
        hold, _ = (
            models.OrderHold.objects.using(self.database).select_for_update().get_or_create(order_id=order_id)
        )
        return hold

    def _settle(self, hold: models.OrderHold, state: str) -> None:
        """Move every held reservation of an order to `state`, adjusting product counters."""
        touched = []
        # Products are locked in SKU order in every transaction, so two orders that share products
        # never each hold one that the other waits for (PostgreSQL's "deadlock detected").
        held = hold.reservations.select_for_update().filter(state=models.Reservation.State.HELD)
        for reservation in held.order_by("product_id"):
            product = (
                models.Product.objects.using(self.database)
                .select_for_update()
                .get(sku=reservation.product_id)
            )
            product.reserved -= reservation.quantity
            if state == models.Reservation.State.COMMITTED:
                product.on_hand -= reservation.quantity
            _save_stock(product, "reserved", "on_hand")
            reservation.state = state
            reservation.save(update_fields=["state"])
            touched.append(product)
        _announce(touched)

    @every(0.5, woken_by=wakeups.OUTBOX)
    def relay_outbox(self) -> None:
        """Deliver stock_changed events written by committed changes."""
        relay(models.Outbox)
