"""The orders domain: placing orders, and running each one's checkout saga (saga.py) to an end.

Whichever worker runs a saga (the kick right after the order is placed, or the sweep in every
orders worker that resumes retries and dead workers' sagas), it claims it first (see saga.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

from django.db import IntegrityError, transaction

import bus
from bus import Service, every, wakeups
from bus.context import handling
from bus.databases import alias_for
from bus.outbox import relay
from workers.inventory.contract import Inventory, UnknownProduct
from workers.payments.contract import money

from . import models
from .contract import (
    CatalogueUnavailable,
    IdempotencyConflict,
    InvalidOrder,
    Order,
    OrderItem,
    OrderLine,
    OrderNotFound,
    OrderPage,
    Orders,
    StepName,
)
from .saga import Overtaken, SagaRun, due, record, snapshot

logger = logging.getLogger(__name__)


def _fingerprint(items: list[OrderItem]) -> str:
    canonical = json.dumps(sorted((item.sku, item.quantity) for item in items))
    return hashlib.sha256(canonical.encode()).hexdigest()


class OrdersService(Service, contract=Orders):
    # -- the contract ------------------------------------------------------

    def place(self, *, customer_id: str, items: list[OrderItem], idempotency_key: str) -> Order:
        fingerprint = _fingerprint(items)
        existing = self._by_key(customer_id, idempotency_key)
        if existing is not None:
            return self._same_order(existing, fingerprint)
        skus = [item.sku for item in items]
        if len(set(skus)) != len(skus):
            raise InvalidOrder("Each SKU may appear once per order; add up the quantities.", skus=skus)
        lines = [self._priced(item) for item in items]
        alias = alias_for("orders", write=True)
        try:
            with transaction.atomic(using=alias):
                order = models.Order.objects.using(alias).create(
                    correlation_id=self.context.correlation_id,
                    customer_id=customer_id,
                    idempotency_key=idempotency_key,
                    fingerprint=fingerprint,
                    lines=[line.model_dump() for line in lines],
                    total_cents=sum(line.price_cents * line.quantity for line in lines),
                )
                models.Saga.objects.using(alias).create(order=order)
                record(order, StepName.PLACED, f"{len(lines)} line(s), {money(order.total_cents)}")
        except IntegrityError:
            # The same key placed concurrently: the other request won, and this is its order.
            return self._same_order(self._by_key(customer_id, idempotency_key), fingerprint)
        transaction.on_commit(lambda: self._kick(order.id), using=alias)
        return snapshot(order)

    def get(self, *, order_id: str) -> Order:
        return snapshot(self._order(order_id, write=False))

    def list(self, *, customer_id: str, limit: int = 20, cursor: str = "") -> OrderPage:
        orders = models.Order.objects.using(alias_for("orders", write=False)).filter(customer_id=customer_id)
        if cursor:
            orders = orders.filter(id__lt=cursor)
        page = list(orders.order_by("-id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return OrderPage(orders=[snapshot(order) for order in page], next_cursor=page[-1].id if more else "")

    def advance(self, *, order_id: str) -> Order:
        order = self._order(order_id, write=True)
        run = SagaRun.claim(order_id)
        if run is None:  # finished, or another runner holds it
            return snapshot(order)
        try:
            # Whichever worker runs it (a kick, the sweep), the saga speaks for the original request.
            with handling(dataclasses.replace(self.context, correlation_id=order.correlation_id or order.id)):
                run.run()
        except Overtaken as late:
            logger.warning("Order %s: %s while this worker was slow; leaving it to that one.", order_id, late)
        finally:
            run.let_go()
        return snapshot(self._order(order_id, write=True))

    # -- periodic work in every orders worker ------------------------------

    @every(1.0)
    def sweep(self) -> None:
        """Resume sagas that are due: new ones whose kick was lost, retries, and dead workers' claims."""
        for order_id in due():
            self.advance(order_id=order_id)

    @every(0.5, woken_by=wakeups.OUTBOX)
    def relay_outbox(self) -> None:
        """Deliver orders.updated events written by committed changes."""
        relay(models.Outbox)

    # -- storage ------------------------------------------------------------

    def _order(self, order_id: str, *, write: bool) -> models.Order:
        order = models.Order.objects.using(alias_for("orders", write=write)).filter(id=order_id).first()
        if order is None:
            raise OrderNotFound(f"No order has id {order_id!r}.", order_id=order_id)
        return order

    def _by_key(self, customer_id: str, key: str) -> models.Order | None:
        return (
            models.Order.objects.using(alias_for("orders", write=True))
            .filter(customer_id=customer_id, idempotency_key=key)
            .first()
        )

    def _same_order(self, order: models.Order | None, fingerprint: str) -> Order:
        assert order is not None
        if order.fingerprint != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency key {order.idempotency_key!r} was used for order {order.id} with other items; "
                "use a new key for a new order.",
                order_id=order.id,
            )
        return snapshot(order)

    def _priced(self, item: OrderItem) -> OrderLine:
        try:
            stock = Inventory.stock.call(sku=item.sku)
        except UnknownProduct as exc:
            raise InvalidOrder(f"No product has SKU {item.sku!r}.", sku=item.sku) from exc
        except (bus.Unavailable, bus.DeadlineExceeded, bus.RemoteError) as exc:
            raise CatalogueUnavailable(
                f"Prices could not be read from inventory ({exc.message}); nothing was placed. "
                "Retry shortly.",
            ) from exc
        return OrderLine(sku=item.sku, name=stock.name, quantity=item.quantity, price_cents=stock.price_cents)

    def _kick(self, order_id: str) -> None:
        """Start the saga now rather than at the next sweep; if the send fails, the sweep still will."""
        try:
            Orders.advance.send(order_id=order_id)
        except bus.BusError as exc:
            logger.warning("Could not start the saga of %s now (%s); the sweep will.", order_id, exc.message)
