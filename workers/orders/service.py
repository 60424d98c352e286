"""The orders domain: placing orders and running each one's checkout saga to an end.

The saga: reserve every line (inventory), charge the total (payments), commit the stock
(inventory): the order is confirmed. A refusal on the way (out of stock, short of funds, a hold
that expired before its commit) or a domain that stays unreachable for ORDERS_GIVE_UP_SECONDS
after the saga's last step turns it to compensating: release the stock (a commit that landed
unseen is undone too), refund the charge, each as soon as its domain answers, and the order fails
with a reason a person can read. While it waits, the order says for what (`waiting`). Every step
is idempotent per order id on the domain's side, and a release or refund also blocks a late
reserve or charge, so a step that ran twice, or ran after the saga gave up on it, changes nothing.

Payments in read-only mode cannot write that block. If nothing was charged (a read tells), the
order fails at once with nothing to refund, and its saga stays open until payments takes writes
again and the refund is written: it blocks a late charge from then on, and gives back one that
slipped in at the moment read-only ended. No charge stays on a failed order.

Progress is stored with each step; a worker that dies mid-saga leaves a lease that expires, and
the sweep in every orders worker picks the order up again. While a domain is away, the saga tries
again at the pace of ORDERS_RETRY_BACKOFF (bus/backoff.py: up to 0.5 s, 1 s, 2 s ... 10 s, with
full jitter, so sagas that failed together do not come back together).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

import bus
from bus import Service, every, wakeups
from bus.backoff import Backoff
from bus.context import handling
from bus.databases import alias_for
from bus.outbox import emit, relay
from workers.inventory.contract import Inventory, OutOfStock, ReservationClosed, UnknownProduct
from workers.payments.contract import (
    ChargeRefused,
    InsufficientFunds,
    Payments,
    PaymentState,
    UnknownAccount,
    money,
)

from . import models
from .contract import (
    TERMINAL_STATES,
    CatalogueUnavailable,
    IdempotencyConflict,
    InvalidOrder,
    Order,
    OrderItem,
    OrderLine,
    OrderNotFound,
    OrderPage,
    Orders,
    OrderState,
    Step,
    StepName,
)

logger = logging.getLogger(__name__)

# The states in which the saga waits on a domain to go forward, and which domain that is.
_DOMAIN_OF_STATE: dict[str, str] = {
    OrderState.PENDING: "inventory",
    OrderState.RESERVED: "payments",
    OrderState.CHARGED: "inventory",
}
# A saga's retries while a domain is away: up to 0.5 s, 1 s, 2 s, ... 10 s, with full jitter.
_RETRY_BACKOFF = {"base": 0.5, "cap": 10.0, "jitter": 1.0}


def _snapshot(order: models.Order) -> Order:
    return Order(
        order_id=order.id,
        customer_id=order.customer_id,
        state=OrderState(order.state),
        reason=order.reason,
        waiting=order.waiting,
        total_cents=order.total_cents,
        lines=[OrderLine(**line) for line in order.lines],
        steps=[
            Step(name=StepName(step.name), at=step.at, detail=step.detail)
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


def _retry_backoff() -> Backoff:
    """ORDERS_RETRY_BACKOFF: the pace of a saga's retries while the domain it needs is away."""
    configured = getattr(settings, "ORDERS_RETRY_BACKOFF", {})
    try:
        return Backoff(**{**_RETRY_BACKOFF, **configured})
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"ORDERS_RETRY_BACKOFF must be a dict with some of the keys base, cap and jitter "
            f"(bus/backoff.py), not {configured!r}: {exc} The default is {_RETRY_BACKOFF!r}."
        ) from None


def _waiting_for(order: models.Order, error: bus.BusError) -> str:
    """The domain the saga waits for and why, as a person reads it: "payments: read-only (...)"."""
    target = str(error.details.get("target", ""))
    domain = error.details.get("service") or target.partition(".")[0] or _DOMAIN_OF_STATE.get(order.state)
    if isinstance(error, bus.ReadOnly):
        why = f"read-only ({error.details.get('reason') or 'no reason given'})"
    elif isinstance(error, bus.NoWorker):
        why = "no worker is running"
    elif isinstance(error, bus.DeadlineExceeded):
        why = "no answer in time"
    else:
        why = error.message
    return f"{domain or 'the bus'}: {why}"


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
                self._record(order, StepName.PLACED, f"{len(lines)} line(s), {money(order.total_cents)}")
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
        # A failed order's saga may still be open: its refund waits to be written (see above).
        if order.state == OrderState.CONFIRMED or not self._claim(order_id):
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
        while order.state not in TERMINAL_STATES:
            if order.state == OrderState.PENDING:
                try:
                    for line in order.lines:
                        Inventory.reserve.call(order_id=order.id, sku=line["sku"], quantity=line["quantity"])
                except (OutOfStock, UnknownProduct) as exc:
                    self._compensate(order, f"Not enough stock: {exc.message}")
                    continue
                except ReservationClosed as exc:
                    self._compensate(order, f"The stock hold was lost: {exc.message}")
                    continue
                self._move(order, OrderState.RESERVED, StepName.RESERVED, f"{len(order.lines)} line(s) held")
            elif order.state == OrderState.RESERVED:
                try:
                    Payments.charge.call(
                        order_id=order.id, customer_id=order.customer_id, amount_cents=order.total_cents
                    )
                except (InsufficientFunds, UnknownAccount, ChargeRefused) as exc:
                    self._compensate(order, f"Payment refused: {exc.message}")
                    continue
                self._move(order, OrderState.CHARGED, StepName.CHARGED, money(order.total_cents))
            elif order.state == OrderState.CHARGED:
                try:
                    Inventory.commit.call(order_id=order.id)
                except ReservationClosed as exc:
                    self._compensate(order, f"The stock hold was lost: {exc.message}")
                    continue
                self._move(order, OrderState.CONFIRMED, StepName.CONFIRMED, "", finished=True)
            elif order.state == OrderState.COMPENSATING:
                self._undo(order)
        if order.state == OrderState.FAILED:
            self._seal(order)

    # -- compensation ---------------------------------------------------------

    def _undo(self, order: models.Order) -> None:
        """Release and refund, each as soon as its domain answers; then the order has failed."""
        errors: list[bus.BusError] = []
        try:
            released = Inventory.release.call(order_id=order.id)
            if released and not order.steps.filter(name=StepName.RELEASED).exists():
                self._record(order, StepName.RELEASED, f"{len(released)} line(s) given back")
        except bus.BusError as exc:
            errors.append(exc)
        sealed = True
        try:
            self._refund(order)
        except bus.ReadOnly as exc:
            # Payments cannot write the refund now; if it is a refund of nothing, the order need
            # not wait for it: the saga stays open and writes it when read-only ends.
            paid = Payments.payment.call(order_id=order.id, customer_id=order.customer_id)
            if paid.state == PaymentState.CHARGED:
                errors.append(exc)  # money to give back: that needs the write, so the order waits
            sealed = paid.state == PaymentState.REFUNDED
        except bus.BusError as exc:
            errors.append(exc)
        if errors:
            raise errors[0]
        self._move(order, OrderState.FAILED, StepName.FAILED, order.reason, finished=sealed)

    def _refund(self, order: models.Order) -> None:
        refund = Payments.refund.call(order_id=order.id, customer_id=order.customer_id)
        if refund.amount_cents and not order.steps.filter(name=StepName.REFUNDED).exists():
            self._record(order, StepName.REFUNDED, money(refund.amount_cents))

    def _seal(self, order: models.Order) -> None:
        """Write a failed order's refund that read-only mode held back; the saga ends with it."""
        saga = models.Saga.objects.using(order._state.db).filter(order_id=order.id, finished_at=None)
        if not saga.exists():
            return
        self._refund(order)
        saga.update(finished_at=timezone.now())

    def _compensate(self, order: models.Order, reason: str) -> None:
        logger.info("Order %s fails: %s", order.id, reason)
        self._move(order, OrderState.COMPENSATING, None, "", reason=reason)

    def _postpone(self, order: models.Order, error: bus.BusError) -> None:
        """A domain did not answer: try again later, or give up and compensate if it stays away."""
        order.refresh_from_db()
        why = _waiting_for(order, error)
        # Patience counts from the saga's last step: how long the domain it needs has been away.
        last_step = order.steps.order_by("-at", "-id").values_list("at", flat=True).first()
        waited = timezone.now() - (last_step or order.created_at)
        gives_up = order.state in _DOMAIN_OF_STATE and waited > _give_up_after()
        saga = models.Saga.objects.using(order._state.db).get(order_id=order.id)
        # Giving up starts the compensation at the next sweep, with its own backoff.
        saga.attempts = 0 if gives_up else saga.attempts + 1
        saga.last_error = f"{type(error).__name__}: {error.message}"[:2000]
        wait = 0.0 if gives_up else _retry_backoff().delay(saga.attempts)
        saga.next_attempt_at = timezone.now() + datetime.timedelta(seconds=wait)
        saga.save(update_fields=["attempts", "last_error", "next_attempt_at"])
        logger.warning("Order %s waits (attempt %d): %s", order.id, saga.attempts, saga.last_error)
        if gives_up:
            self._compensate(order, f"Gave up after {waited.total_seconds():.0f} s waiting for {why}.")
        elif order.state != OrderState.FAILED:
            self._set_waiting(order, f"Waiting for {why}.")

    # -- storage ------------------------------------------------------------

    def _move(
        self,
        order: models.Order,
        state: OrderState,
        step: StepName | None,
        detail: str,
        *,
        reason: str = "",
        finished: bool = False,
    ) -> None:
        """Store a state change, its step and its event in one transaction."""
        with transaction.atomic(using=order._state.db):
            order.state = state
            order.reason = reason or order.reason
            order.waiting = ""
            order.updated_at = timezone.now()
            order.save(update_fields=["state", "reason", "waiting", "updated_at"])
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

    def _set_waiting(self, order: models.Order, waiting: str) -> None:
        """Say why the saga is held up (announced only when that changes)."""
        waiting = waiting[:300]
        if order.waiting == waiting:
            return
        with transaction.atomic(using=order._state.db):
            order.waiting = waiting
            order.updated_at = timezone.now()
            order.save(update_fields=["waiting", "updated_at"])
            self._record(order, None, "")

    def _record(self, order: models.Order, step: StepName | None, detail: str) -> None:
        with transaction.atomic(using=order._state.db):
            if step is not None:
                models.Step.objects.using(order._state.db).create(order=order, name=step, detail=detail[:300])
            emit(models.Outbox, Orders.updated.target, order=_snapshot(order))

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
