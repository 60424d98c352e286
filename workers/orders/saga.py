"""One runner's turn at an order's checkout saga, fenced by its claim.

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

A runner holds the saga by a lease (ORDERS_LEASE_SECONDS) renewed with each stored step, so only
a dead or stuck runner's lease runs out, and then the sweep gives the saga to another. Each claim
carries a token, and every write of a runner checks, in its own transaction, that the token is
still its own (a fencing token): a runner that was slow or frozen past its lease finds itself
`Overtaken` at its next write and stops, so it cannot move on an order that the other runner has
meanwhile compensated (which once confirmed an order whose charge had been refunded).

While a domain is away, the saga tries again at the pace of ORDERS_RETRY_BACKOFF (bus/backoff.py:
up to 0.5 s, 1 s, 2 s ... 10 s, with full jitter, so sagas that failed together do not come back
together).
"""

from __future__ import annotations

import datetime
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

import bus
from bus.backoff import Backoff
from bus.databases import alias_for
from bus.outbox import emit
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
from .contract import TERMINAL_STATES, Order, OrderLine, Orders, OrderState, Step, StepName

logger = logging.getLogger(__name__)

# The states in which the saga waits on a domain to go forward, and which domain that is.
_DOMAIN_OF_STATE: dict[str, str] = {
    OrderState.PENDING: "inventory",
    OrderState.RESERVED: "payments",
    OrderState.CHARGED: "inventory",
}
# A saga's retries while a domain is away: up to 0.5 s, 1 s, 2 s, ... 10 s, with full jitter.
_RETRY_BACKOFF = {"base": 0.5, "cap": 10.0, "jitter": 1.0}


class Overtaken(Exception):
    """Another runner holds this saga now: this one's lease ran out while it was slow or frozen."""


def snapshot(order: models.Order) -> Order:
    """The order as the contract shows it."""
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


def record(order: models.Order, step: StepName | None, detail: str) -> None:
    """Store a step (if any) and announce the order as it is now, in one transaction."""
    with transaction.atomic(using=order._state.db):
        if step is not None:
            models.Step.objects.using(order._state.db).create(order=order, name=step, detail=detail[:300])
        emit(models.Outbox, Orders.updated.target, order=snapshot(order))


def _give_up_after() -> datetime.timedelta:
    return datetime.timedelta(seconds=getattr(settings, "ORDERS_GIVE_UP_SECONDS", 60))


def _lease() -> datetime.timedelta:
    return datetime.timedelta(seconds=getattr(settings, "ORDERS_LEASE_SECONDS", 20))


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


def due(limit: int = 20) -> list[str]:
    """Sagas the sweep resumes: new ones whose kick was lost, retries, and dead runners' claims."""
    now = timezone.now()
    return list(
        models.Saga.objects.using(alias_for("orders", write=True))
        .filter(finished_at=None, next_attempt_at__lte=now)
        .filter(Q(lease_until=None) | Q(lease_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("order_id", flat=True)[:limit]
    )


@dataclass
class SagaRun:
    """The runner holding an order's saga, and the token that proves it at each write."""

    order: models.Order
    token: str

    @classmethod
    def claim(cls, order_id: str) -> SagaRun | None:
        """Take the saga if it is open and nobody's lease runs; the order is read after the claim,
        so the run starts from what the previous runner stored last."""
        alias = alias_for("orders", write=True)
        now, token = timezone.now(), secrets.token_hex(8)
        claimed = (
            models.Saga.objects.using(alias)
            .filter(order_id=order_id, finished_at=None)
            .filter(Q(lease_until=None) | Q(lease_until__lt=now))
            .update(lease_until=now + _lease(), token=token)
        )
        if not claimed:
            return None
        return cls(models.Order.objects.using(alias).get(id=order_id), token)

    def run(self) -> None:
        """Take the order as far as the domains let it; `Overtaken` if another runner holds it."""
        try:
            self._run()
        except bus.BusError as exc:
            self._postpone(exc)

    def let_go(self) -> None:
        """End this runner's lease (if still its own): the sweep may resume the saga when due."""
        self._saga().filter(token=self.token).update(lease_until=None)

    # -- the steps --------------------------------------------------------------

    def _run(self) -> None:
        """Take the order from its current state to the end, one stored step at a time."""
        order = self.order
        while order.state not in TERMINAL_STATES:
            if order.state == OrderState.PENDING:
                try:
                    for line in order.lines:
                        Inventory.reserve.call(order_id=order.id, sku=line["sku"], quantity=line["quantity"])
                except (OutOfStock, UnknownProduct) as exc:
                    self._compensate(f"Not enough stock: {exc.message}")
                    continue
                except ReservationClosed as exc:
                    self._compensate(f"The stock hold was lost: {exc.message}")
                    continue
                self._move(OrderState.RESERVED, StepName.RESERVED, f"{len(order.lines)} line(s) held")
            elif order.state == OrderState.RESERVED:
                try:
                    Payments.charge.call(
                        order_id=order.id, customer_id=order.customer_id, amount_cents=order.total_cents
                    )
                except (InsufficientFunds, UnknownAccount, ChargeRefused) as exc:
                    self._compensate(f"Payment refused: {exc.message}")
                    continue
                self._move(OrderState.CHARGED, StepName.CHARGED, money(order.total_cents))
            elif order.state == OrderState.CHARGED:
                try:
                    Inventory.commit.call(order_id=order.id)
                except ReservationClosed as exc:
                    self._compensate(f"The stock hold was lost: {exc.message}")
                    continue
                self._move(OrderState.CONFIRMED, StepName.CONFIRMED, "", finished=True)
            elif order.state == OrderState.COMPENSATING:
                self._undo()
        if order.state == OrderState.FAILED:
            self._seal()

    def _undo(self) -> None:
        """Release and refund, each as soon as its domain answers; then the order has failed."""
        order = self.order
        errors: list[bus.BusError] = []
        try:
            released = Inventory.release.call(order_id=order.id)
            if released and not order.steps.filter(name=StepName.RELEASED).exists():
                self._step(StepName.RELEASED, f"{len(released)} line(s) given back")
        except bus.BusError as exc:
            errors.append(exc)
        sealed = True
        try:
            self._refund()
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
        self._move(OrderState.FAILED, StepName.FAILED, order.reason, finished=sealed)

    def _refund(self) -> None:
        order = self.order
        refund = Payments.refund.call(order_id=order.id, customer_id=order.customer_id)
        if refund.amount_cents and not order.steps.filter(name=StepName.REFUNDED).exists():
            self._step(StepName.REFUNDED, money(refund.amount_cents))

    def _seal(self) -> None:
        """Write a failed order's refund that read-only mode held back; the saga ends with it."""
        if not self._saga().filter(finished_at=None).exists():
            return
        self._refund()
        with transaction.atomic(using=self.order._state.db):
            self._hold(finished_at=timezone.now())

    def _compensate(self, reason: str) -> None:
        logger.info("Order %s fails: %s", self.order.id, reason)
        self._move(OrderState.COMPENSATING, None, "", reason=reason)

    def _postpone(self, error: bus.BusError) -> None:
        """A domain did not answer: try again later, or give up and compensate if it stays away."""
        order = self.order
        order.refresh_from_db()
        why = _waiting_for(order, error)
        # Patience counts from the saga's last step: how long the domain it needs has been away.
        last_step = order.steps.order_by("-at", "-id").values_list("at", flat=True).first()
        waited = timezone.now() - (last_step or order.created_at)
        gives_up = order.state in _DOMAIN_OF_STATE and waited > _give_up_after()
        attempts = 0 if gives_up else self._saga().values_list("attempts", flat=True).get() + 1
        # Giving up starts the compensation at the next sweep, with its own backoff.
        wait = 0.0 if gives_up else _retry_backoff().delay(attempts)
        last_error = f"{type(error).__name__}: {error.message}"[:2000]
        with transaction.atomic(using=order._state.db):
            self._hold(
                attempts=attempts,
                last_error=last_error,
                next_attempt_at=timezone.now() + datetime.timedelta(seconds=wait),
            )
        logger.warning("Order %s waits (attempt %d): %s", order.id, attempts, last_error)
        if gives_up:
            self._compensate(f"Gave up after {waited.total_seconds():.0f} s waiting for {why}.")
        elif order.state != OrderState.FAILED:
            self._set_waiting(f"Waiting for {why}.")

    # -- storage, each write fenced by the token ------------------------------

    def _saga(self) -> Any:
        return models.Saga.objects.using(self.order._state.db).filter(order_id=self.order.id)

    def _hold(self, **changes: Any) -> None:
        """Write `changes` to the saga if this runner still holds it, else `Overtaken`; called
        first in each transaction, so an overtaken runner's writes roll back with it."""
        if not self._saga().filter(token=self.token).update(**changes):
            raise Overtaken(f"the saga of order {self.order.id} was claimed by another runner")

    def _move(
        self,
        state: OrderState,
        step: StepName | None,
        detail: str,
        *,
        reason: str = "",
        finished: bool = False,
    ) -> None:
        """Store a state change, its step and its event in one transaction."""
        order = self.order
        with transaction.atomic(using=order._state.db):
            # The lease is renewed here, not in a write of its own before each step: every step
            # starts from a stored one (or the claim), and on SQLite each write waits its turn.
            if finished:
                self._hold(finished_at=timezone.now())
            else:
                self._hold(lease_until=timezone.now() + _lease())
            order.state = state
            order.reason = reason or order.reason
            order.waiting = ""
            order.updated_at = timezone.now()
            order.save(update_fields=["state", "reason", "waiting", "updated_at"])
            record(order, step, detail)

    def _step(self, step: StepName, detail: str) -> None:
        with transaction.atomic(using=self.order._state.db):
            self._hold(lease_until=timezone.now() + _lease())
            record(self.order, step, detail)

    def _set_waiting(self, waiting: str) -> None:
        """Say why the saga is held up (announced only when that changes)."""
        order = self.order
        waiting = waiting[:300]
        if order.waiting == waiting:
            return
        with transaction.atomic(using=order._state.db):
            self._hold(lease_until=timezone.now() + _lease())
            order.waiting = waiting
            order.updated_at = timezone.now()
            order.save(update_fields=["waiting", "updated_at"])
            record(order, None, "")
