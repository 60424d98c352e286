"""Accounts, their ledgers and the charges of orders; every row lives on its customer's shard."""

from django.db import models

from workers.vocabulary import choices

from .contract import ChargeState, LedgerKind


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

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=8, choices=choices(LedgerKind))
    amount_cents = models.BigIntegerField()  # signed: charges are negative
    order_id = models.CharField(max_length=64, blank=True, default="")
    # Makes each movement happen once: "charge:<order>", "refund:<order>", "credit:<reference>".
    reference = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.reference}: {self.amount_cents}"


class OrderCharge(models.Model):
    """The payment state of one order: charged, or refunded (possibly before any charge)."""

    order_id = models.CharField(primary_key=True, max_length=64)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="charges", null=True)
    customer_id = models.CharField(max_length=64)
    amount_cents = models.BigIntegerField(default=0)
    state = models.CharField(max_length=8, choices=choices(ChargeState))
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"order {self.order_id}: {self.state} {self.amount_cents}"
