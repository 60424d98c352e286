"""Accounts, their ledgers and the charges of orders; every row lives on its customer's shard."""

from django.db import models


class Account(models.Model):
    customer_id = models.CharField(primary_key=True, max_length=64)
    balance_cents = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(balance_cents__gte=0), name="balance_not_negative")
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.balance_cents} cents"


class LedgerEntry(models.Model):
    """One movement of money; an account's entries always add up to its balance."""

    class Kind(models.TextChoices):
        CREDIT = "credit"
        CHARGE = "charge"
        REFUND = "refund"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    amount_cents = models.BigIntegerField()  # signed: charges are negative
    order_id = models.CharField(max_length=64, blank=True, default="")
    # Makes each movement happen once: "charge:<order>", "refund:<order>", "credit:<reference>".
    reference = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.reference}: {self.amount_cents}"


class OrderCharge(models.Model):
    """The payment state of one order: charged, or refunded (possibly before any charge)."""

    class State(models.TextChoices):
        CHARGED = "charged"
        REFUNDED = "refunded"

    order_id = models.CharField(primary_key=True, max_length=64)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="charges", null=True)
    customer_id = models.CharField(max_length=64)
    amount_cents = models.BigIntegerField(default=0)
    state = models.CharField(max_length=8, choices=State.choices)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"order {self.order_id}: {self.state} {self.amount_cents}"
