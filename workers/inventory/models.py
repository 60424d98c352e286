"""The inventory domain's tables; private to the domain (others use contract.py)."""

from django.db import models

from bus.outbox import AbstractOutboxMessage
from workers.vocabulary import choices

from .contract import HoldState, ReservationState


class Product(models.Model):
    sku = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=200)
    price_cents = models.PositiveBigIntegerField()
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)
    # Grows with every stock change, so a reader can tell the newer of two figures.
    version = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(reserved__lte=models.F("on_hand")), name="reserved_within_on_hand"
            )
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.name})"

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class OrderHold(models.Model):
    """One per order: whether its reservations are still open, released or committed."""

    order_id = models.CharField(primary_key=True, max_length=64)
    state = models.CharField(max_length=16, choices=choices(HoldState), default=HoldState.OPEN.value)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # The expiry sweep looks for open holds older than INVENTORY_HOLD_SECONDS.
        indexes = [models.Index(fields=["state", "updated_at"], name="hold_state_age")]

    def __str__(self) -> str:
        return f"order {self.order_id}: {self.state}"


class Reservation(models.Model):
    hold = models.ForeignKey(OrderHold, on_delete=models.CASCADE, related_name="reservations")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="reservations")
    quantity = models.PositiveIntegerField()
    state = models.CharField(
        max_length=16, choices=choices(ReservationState), default=ReservationState.HELD.value
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hold", "product"], name="one_reservation_per_order_and_sku")
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id} for order {self.hold_id}: {self.state}"


class Outbox(AbstractOutboxMessage):
    """inventory.stock_changed events, written in the transaction of the stock change."""
