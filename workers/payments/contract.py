"""The payments domain's contract: accounts in integer cents, charges idempotent per order."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from bus import Contract, ContractError, Schema, rpc
from workers.vocabulary import CustomerId, OrderId

PositiveCents = Annotated[int, Field(gt=0, le=100_000_000_00)]


class ChargeState(StrEnum):
    """An order's charge: taken, or given back (a refund before any charge blocks it for good)."""

    CHARGED = "charged"
    REFUNDED = "refunded"


class PaymentState(StrEnum):
    """What payments.payment says of an order: a ChargeState, or none when nothing was charged."""

    NONE = "none"
    CHARGED = ChargeState.CHARGED.value
    REFUNDED = ChargeState.REFUNDED.value


class LedgerKind(StrEnum):
    """A movement of money: credits add, charges take (negative), refunds give a charge back."""

    CREDIT = "credit"
    CHARGE = "charge"
    REFUND = "refund"


class UnknownAccount(ContractError):
    """The customer has no account yet; credit it first."""


class InsufficientFunds(ContractError):
    """The balance is lower than the charge; nothing was charged."""


class ChargeRefused(ContractError):
    """The order was already refunded, so a late or retried charge for it is refused."""


def money(cents: int) -> str:
    """Cents as a person reads money, the way the page shows it: 12900 -> "129.00"."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


class Balance(Schema):
    customer_id: str
    balance_cents: int


class Charge(Schema):
    order_id: str
    customer_id: str
    amount_cents: int
    state: ChargeState
    balance_cents: int


class Payment(Schema):
    """What an order paid, as the ledger's primary says now: nothing, a charge, or a refund."""

    order_id: str
    state: PaymentState
    amount_cents: int


class LedgerLine(Schema):
    kind: LedgerKind
    amount_cents: int
    order_id: str
    reference: str


class Statement(Schema):
    customer_id: str
    balance_cents: int
    lines: list[LedgerLine]


class Payments(Contract, name="payments"):
    """Customer accounts. Every charge and refund is idempotent per order_id.

    Who may move money, once workers verify signatures (BUS["TRUSTED_KEYS"]): charges and refunds
    come from the orders saga only, credits from operators only (`seed`, `bus call` run as
    BUS_IDENTITY=operators); reads from any trusted service.
    """

    @rpc(errors=[UnknownAccount, InsufficientFunds, ChargeRefused], callers=["orders"])
    async def charge(
        self, *, order_id: OrderId, customer_id: CustomerId, amount_cents: PositiveCents
    ) -> Charge:
        """Take money for an order once: a repeat returns the first result; after a refund, refused."""

    @rpc(callers=["orders"])
    async def refund(self, *, order_id: OrderId, customer_id: CustomerId) -> Charge:
        """Give an order's money back once; a refund before any charge blocks that charge for good."""

    @rpc(read=True)
    async def payment(self, *, order_id: OrderId, customer_id: CustomerId) -> Payment:
        """Whether an order was charged; a read, so it answers in read-only mode, when refunds cannot."""

    @rpc(read=True, errors=[UnknownAccount])
    async def balance(self, *, customer_id: CustomerId) -> Balance:
        """The account's balance."""

    @rpc(callers=["operators"])
    async def credit(
        self,
        *,
        customer_id: CustomerId,
        amount_cents: PositiveCents,
        reference: Annotated[str, Field(max_length=100)] = "",
    ) -> Balance:
        """Add money, opening the account if needed; a repeated non-empty reference credits once."""

    @rpc(read=True, errors=[UnknownAccount])
    async def statement(self, *, customer_id: CustomerId) -> Statement:
        """The account's ledger, oldest first, with its balance."""
