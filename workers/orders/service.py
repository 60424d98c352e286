"""The orders domain: placing orders and running each one's checkout saga to an end.

The saga: reserve every line (inventory), charge the total (payments), commit the stock
(inventory): the order is confirmed. A refusal on the way (out of stock, short of funds) or a
domain that stays unreachable for ORDERS_GIVE_UP_SECONDS turns it to compensating: release the
stock, refund the charge, and the order fails with a reason a person can read. Every step is
idempotent per order id on the domain's side, and a release or refund also blocks a late reserve
or charge, so a step that ran twice, or ran after the saga gave up on it, changes nothing.

Progress is stored with each step; a worker that dies mid-saga leaves a lease that expires, and
the sweep in every orders worker picks the order up again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

import bus
from bus import Service, every, wakeups
from bus.context import handling
from bus.databases import alias_for
from bus.outbox import emit, relay
from workers.inventory.contract import OutOfStock, ReservationClosed, UnknownProduct
from workers.payments.contract import ChargeRefused, InsufficientFunds, UnknownAccount

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
    Step,
)

logger = logging.getLogger(__name__)

State = models.Order.State


def _snapshot(order: models.Order) -> Order:
    return Order(
        order_id=order.id,
        customer_id=order.customer_id,
        state=order.state,  # type: ignore[arg-type]
        reason=order.reason,
        total_cents=order.total_cents,
        lines=[OrderLine(**line) for line in order.lines],
        steps=[
            Step(name=step.name, at=step.at, detail=step.detail)  # type: ignore[arg-type]
            for step in order.steps.order_by("at", "id")
        ],
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def _fingerprint(items: list[OrderItem]) -> str:
    canonical = json.dumps(sorted((item.sku, item.quantity) for item in items))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _give_up_after() -> datetime.timedelta:
    return datetime.timedelta(seconds=getattr(settings, "ORDERS_GIVE_UP_SECONDS", 60))


def _lease() -> datetime.timedelta:
    """A worker's claim on a saga; renewed with each stored step, so only a dead worker's claim runs out."""
    return datetime.timedelta(seconds=getattr(settings, "ORDERS_LEASE_SECONDS", 20))


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
                self._record(order, "placed", f"{len(lines)} line(s), {order.total_cents} cents")
        except IntegrityError:
            # The same key placed concurrently: the other request won, and this is its order.
            return self._same_order(self._by_key(customer_id, idempotency_key), fingerprint)
        transaction.on_commit(lambda: self._kick(order.id), using=alias)
        return _snapshot(order)

    def get(self, *, order_id: str) -> Order:
        return _snapshot(self._order(order_id, write=False))

    def list(self, *, customer_id: str, limit: int = 20, cursor: str = "") -> OrderPage:
        orders = models.Order.objects.using(alias_for("orders", write=False)).filter(customer_id=customer_id)
        if cursor:
            orders = orders.filter(id__lt=cursor)
        page = list(orders.order_by("-id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return OrderPage(orders=[_snapshot(order) for order in page], next_cursor=page[-1].id if more else "")

    def advance(self, *, order_id: str) -> Order:
        order = self._order(order_id, write=True)
        if order.state in (State.CONFIRMED, State.FAILED) or not self._claim(order_id):
            return _snapshot(order)
        try:
            # Whichever worker runs it (a kick, the sweep), the saga speaks for the original request.
            with handling(dataclasses.replace(self.context, correlation_id=order.correlation_id or order.id)):
                self._run(order)
        except bus.BusError as exc:
            self._postpone(order, exc)
        finally:
            models.Saga.objects.using(order._state.db).filter(order_id=order_id).update(lease_until=None)
        return _snapshot(self._order(order_id, write=True))

    # -- periodic work in every orders worker ------------------------------

    @every(1.0)
    def sweep(self) -> None:
        """Resume sagas that are due: new ones whose kick was lost, retries, and dead workers' claims."""
        now = timezone.now()
        due = (
            models.Saga.objects.using(alias_for("orders", write=True))
            .filter(finished_at=None, next_attempt_at__lte=now)
            .filter(Q(lease_until=None) | Q(lease_until__lt=now))
            .order_by("next_attempt_at")
            .values_list("order_id", flat=True)[:20]
        )
        for order_id in due:
            self.advance(order_id=order_id)

    @every(0.5, woken_by=wakeups.OUTBOX)
    def relay_outbox(self) -> None:
        """Deliver orders.updated events written by committed changes."""
        relay(models.Outbox)

    # -- the saga -------------------------------------------------------------

    def _run(self, order: models.Order) -> None:
        """Take the order from its current state to the end, one stored step at a time."""
        while order.state not in (State.CONFIRMED, State.FAILED):
            if order.state == State.PENDING:
                try:
                    for line in order.lines:
                        bus.call(
                            "inventory.reserve", order_id=order.id, sku=line["sku"], quantity=line["quantity"]
                        )
                except (OutOfStock, UnknownProduct, ReservationClosed) as exc:
                    self._compensate(order, f"Not enough stock: {exc.message}")
                    continue
                self._move(order, State.RESERVED, "reserved", f"{len(order.lines)} line(s) held")
            elif order.state == State.RESERVED:
                try:
                    bus.call(
                        "payments.charge",
                        order_id=order.id,
                        customer_id=order.customer_id,
                        amount_cents=order.total_cents,
                    )
                except (InsufficientFunds, UnknownAccount, ChargeRefused) as exc:
                    self._compensate(order, f"Payment refused: {exc.message}")
                    continue
                self._move(order, State.CHARGED, "charged", f"{order.total_cents} cents")
            elif order.state == State.CHARGED:
                try:
                    bus.call("inventory.commit", order_id=order.id)
                except ReservationClosed as exc:
                    self._compensate(order, f"The stock hold was lost: {exc.message}")
                    continue
                self._move(order, State.CONFIRMED, "confirmed", "", finished=True)
            elif order.state == State.COMPENSATING:
                released = bus.call("inventory.release", order_id=order.id)
                if released and not order.steps.filter(name="released").exists():
                    self._record(order, "released", f"{len(released)} line(s) given back")
                refund = bus.call("payments.refund", order_id=order.id, customer_id=order.customer_id)
                if refund["amount_cents"] and not order.steps.filter(name="refunded").exists():
                    self._record(order, "refunded", f"{refund['amount_cents']} cents")
                self._move(order, State.FAILED, "failed", order.reason, finished=True)

    def _compensate(self, order: models.Order, reason: str) -> None:
        logger.info("Order %s fails: %s", order.id, reason)
        self._move(order, State.COMPENSATING, None, "", reason=reason)

    def _postpone(self, order: models.Order, error: bus.BusError) -> None:
        """A domain did not answer: try again later, or give up and compensate if it stays away."""
        order.refresh_from_db()
        saga = models.Saga.objects.using(order._state.db).get(order_id=order.id)
        saga.attempts += 1
        saga.last_error = f"{type(error).__name__}: {error.message}"[:2000]
        saga.next_attempt_at = timezone.now() + datetime.timedelta(seconds=min(0.25 * 2**saga.attempts, 10.0))
        saga.save(update_fields=["attempts", "last_error", "next_attempt_at"])
        logger.warning("Order %s waits (attempt %d): %s", order.id, saga.attempts, saga.last_error)
        waited = timezone.now() - order.created_at
        if order.state in (State.PENDING, State.RESERVED) and waited > _give_up_after():
            self._compensate(order, f"Gave up after {waited.total_seconds():.0f} s: {error.message}")

    # -- storage ------------------------------------------------------------

    def _move(
        self,
        order: models.Order,
        state: str,
        step: str | None,
        detail: str,
        *,
        reason: str = "",
        finished: bool = False,
    ) -> None:
        """Store a state change, its step and its event in one transaction."""
        with transaction.atomic(using=order._state.db):
            order.state = state
            order.reason = reason or order.reason
            order.updated_at = timezone.now()
            order.save(update_fields=["state", "reason", "updated_at"])
            if finished:
                models.Saga.objects.using(order._state.db).filter(order_id=order.id).update(
                    finished_at=timezone.now()
                )
            else:
                # The lease is renewed here, not in a write of its own before each step: every step
                # starts from a stored one (or the claim), and on SQLite each write waits its turn.
                models.Saga.objects.using(order._state.db).filter(order_id=order.id).update(
                    lease_until=timezone.now() + _lease()
                )
            self._record(order, step, detail)

    def _record(self, order: models.Order, step: str | None, detail: str) -> None:
        with transaction.atomic(using=order._state.db):
            if step is not None:
                models.Step.objects.using(order._state.db).create(order=order, name=step, detail=detail[:300])
            emit(models.Outbox, "orders.updated", order=_snapshot(order))

    def _claim(self, order_id: str) -> bool:
        now = timezone.now()
        return bool(
            models.Saga.objects.using(alias_for("orders", write=True))
            .filter(order_id=order_id, finished_at=None)
            .filter(Q(lease_until=None) | Q(lease_until__lt=now))
            .update(lease_until=now + _lease())
        )

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
        return _snapshot(order)

    def _priced(self, item: OrderItem) -> OrderLine:
        try:
            stock: dict[str, Any] = bus.call("inventory.stock", sku=item.sku)
        except UnknownProduct as exc:
            raise InvalidOrder(f"No product has SKU {item.sku!r}.", sku=item.sku) from exc
        except (bus.Unavailable, bus.DeadlineExceeded, bus.RemoteError) as exc:
            raise CatalogueUnavailable(
                f"Prices could not be read from inventory ({exc.message}); nothing was placed. "
                "Retry shortly.",
            ) from exc
        return OrderLine(
            sku=item.sku, name=stock["name"], quantity=item.quantity, price_cents=stock["price_cents"]
        )

    def _kick(self, order_id: str) -> None:
        """Start the saga now rather than at the next sweep; if the send fails, the sweep still will."""
        try:
            bus.send("orders.advance", order_id=order_id)
        except bus.BusError as exc:
            logger.warning("Could not start the saga of %s now (%s); the sweep will.", order_id, exc.message)
