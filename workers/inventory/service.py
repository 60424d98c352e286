"""The inventory domain's implementation, served by `manage.py runworker inventory`.

A hold (an order's reservations) lasts INVENTORY_HOLD_SECONDS (default 900): an order whose saga
has not committed by then loses it, so stock never stays held for a saga that stopped for good;
its commit is then refused, and the orders saga refunds the charge.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bus import Service, every, wakeups
from bus.databases import alias_for
from bus.modes import read_only_reason
from bus.outbox import emit, relay

from . import models
from .contract import (
    HoldState,
    Inventory,
    OutOfStock,
    Product,
    Reservation,
    ReservationClosed,
    ReservationState,
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
        state=ReservationState(reservation.state),
    )


# A closed hold's lines follow it: all sold, or all given back.
_LINE_STATE = {HoldState.COMMITTED: ReservationState.COMMITTED, HoldState.RELEASED: ReservationState.RELEASED}


def _save_stock(product: models.Product, *fields: str) -> None:
    """Save changed stock figures with a new version, so readers can order the figures they get."""
    product.version += 1
    product.save(update_fields=[*fields, "version"])


def _hold_lasts() -> datetime.timedelta:
    return datetime.timedelta(seconds=getattr(settings, "INVENTORY_HOLD_SECONDS", 900))


def _expired(hold: models.OrderHold) -> bool:
    """An open hold is saved once, when it opens: its updated_at is when it began."""
    return hold.state == HoldState.OPEN and timezone.now() - hold.updated_at >= _hold_lasts()


def _announce(products: list[models.Product]) -> None:
    """Write stock_changed events to the outbox, in the transaction that changed the stock."""
    for product in products:
        emit(
            models.Outbox,
            Inventory.stock_changed.target,
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
            if hold.state != HoldState.OPEN:
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
            if hold.state != HoldState.RELEASED:
                # A committed hold is given back too: the saga releases only an order that failed,
                # and its commit may have landed unseen (the reply lost, or past the saga's patience).
                self._close(hold, HoldState.RELEASED)
            return [_reservation(reservation) for reservation in hold.reservations.order_by("id")]

    def commit(self, *, order_id: str) -> list[Reservation]:
        with transaction.atomic(using=self.database):
            hold = self._hold(order_id)
            expired = _expired(hold)
            if expired:
                self._close(hold, HoldState.RELEASED)
            elif hold.state == HoldState.OPEN:
                self._close(hold, HoldState.COMMITTED)
            reservations = [_reservation(reservation) for reservation in hold.reservations.order_by("id")]
        # Raised after the transaction, so that an expired hold's release is kept.
        if expired:
            raise ReservationClosed(
                f"The stock held for order {order_id} was released after "
                f"{_hold_lasts().total_seconds():.0f} s without a commit (INVENTORY_HOLD_SECONDS); "
                "it cannot be committed.",
                order_id=order_id,
                state=HoldState.RELEASED,
            )
        if hold.state == HoldState.RELEASED:
            raise ReservationClosed(
                f"Order {order_id} was released; its stock cannot be committed.",
                order_id=order_id,
                state=hold.state,
            )
        return reservations

    @every(5.0)
    def release_expired(self) -> None:
        """Give back the stock of holds that outlived INVENTORY_HOLD_SECONDS (their saga stopped)."""
        if read_only_reason("inventory") is not None:
            return  # a deliberate pause of inventory's writes holds for the sweep too
        cutoff = timezone.now() - _hold_lasts()
        holds = models.OrderHold.objects.using(self.database).filter(
            state=HoldState.OPEN, updated_at__lte=cutoff
        )
        for order_id in holds.values_list("order_id", flat=True)[:100]:
            with transaction.atomic(using=self.database):
                hold = self._hold(order_id)
                if _expired(hold):
                    self._close(hold, HoldState.RELEASED)

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

    def _close(self, hold: models.OrderHold, state: HoldState) -> None:
        """Commit or release an order's hold: its units become sold, or available again."""
        undo_sale = hold.state == HoldState.COMMITTED
        hold.state = state
        hold.save(update_fields=["state", "updated_at"])
        touched = []
        # Products are locked in SKU order in every transaction, so two orders that share products
        # never each hold one that the other waits for (PostgreSQL's "deadlock detected").
        reservations = hold.reservations.select_for_update()
        was = ReservationState.COMMITTED if undo_sale else ReservationState.HELD
        for reservation in reservations.filter(state=was).order_by("product_id"):
            product = (
                models.Product.objects.using(self.database)
                .select_for_update()
                .get(sku=reservation.product_id)
            )
            if undo_sale:
                product.on_hand += reservation.quantity  # a sale undone: the units are back on hand
            else:
                product.reserved -= reservation.quantity
                if state == HoldState.COMMITTED:
                    product.on_hand -= reservation.quantity
            _save_stock(product, "reserved", "on_hand")
            reservation.state = _LINE_STATE[state]
            reservation.save(update_fields=["state"])
            touched.append(product)
        _announce(touched)

    @every(0.5, woken_by=wakeups.OUTBOX)
    def relay_outbox(self) -> None:
        """Deliver stock_changed events written by committed changes."""
        relay(models.Outbox)
