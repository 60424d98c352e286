"""The payments domain's implementation: every row is reached through shards.database()."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from bus import Service

from . import models
from .contract import (
    Balance,
    Charge,
    ChargeRefused,
    ChargeState,
    InsufficientFunds,
    LedgerKind,
    LedgerLine,
    Payment,
    Payments,
    PaymentState,
    Statement,
    UnknownAccount,
    money,
)
from .shards import database


def _charge(row: models.OrderCharge, balance_cents: int) -> Charge:
    return Charge(
        order_id=row.order_id,
        customer_id=row.customer_id,
        amount_cents=row.amount_cents,
        state=ChargeState(row.state),
        balance_cents=balance_cents,
    )


def _account(alias: str, customer_id: str, *, lock: bool) -> models.Account:
    accounts = models.Account.objects.using(alias)
    account = (accounts.select_for_update() if lock else accounts).filter(customer_id=customer_id).first()
    if account is None:
        raise UnknownAccount(
            f"Customer {customer_id!r} has no account; credit it with payments.credit first.",
            customer_id=customer_id,
        )
    return account


def _move(
    account: models.Account, kind: LedgerKind, amount_cents: int, reference: str, order_id: str = ""
) -> None:
    """Change a balance and write its ledger line together, inside the caller's transaction."""
    account.balance_cents += amount_cents
    account.save(update_fields=["balance_cents"])
    models.LedgerEntry.objects.using(account._state.db).create(
        account=account, kind=kind, amount_cents=amount_cents, reference=reference, order_id=order_id
    )


class PaymentsService(Service, contract=Payments):
    def charge(self, *, order_id: str, customer_id: str, amount_cents: int) -> Charge:
        alias = database(customer_id, write=True)
        with transaction.atomic(using=alias):
            account = _account(alias, customer_id, lock=True)
            existing = (
                models.OrderCharge.objects.using(alias).select_for_update().filter(order_id=order_id).first()
            )
            if existing is not None and existing.state == ChargeState.REFUNDED:
                raise ChargeRefused(
                    f"Order {order_id} was refunded; a late or repeated charge for it is refused.",
                    order_id=order_id,
                )
            if existing is not None:
                return _charge(existing, account.balance_cents)
            if account.balance_cents < amount_cents:
                raise InsufficientFunds(
                    f"The balance of {customer_id} is {money(account.balance_cents)} and "
                    f"{money(amount_cents)} was asked for; nothing was charged.",
                    customer_id=customer_id,
                    balance_cents=account.balance_cents,
                    amount_cents=amount_cents,
                )
            row = models.OrderCharge.objects.using(alias).create(
                order_id=order_id,
                account=account,
                customer_id=customer_id,
                amount_cents=amount_cents,
                state=ChargeState.CHARGED,
            )
            _move(account, LedgerKind.CHARGE, -amount_cents, f"charge:{order_id}", order_id)
        return _charge(row, account.balance_cents)

    def refund(self, *, order_id: str, customer_id: str) -> Charge:
        alias = database(customer_id, write=True)
        with transaction.atomic(using=alias):
            row, created = (
                models.OrderCharge.objects.using(alias)
                .select_for_update()
                .get_or_create(
                    order_id=order_id,
                    defaults={"customer_id": customer_id, "state": ChargeState.REFUNDED},
                )
            )
            account = (
                models.Account.objects.using(alias)
                .select_for_update()
                .filter(customer_id=customer_id)
                .first()
            )
            balance = account.balance_cents if account else 0
            if created or row.state == ChargeState.REFUNDED:
                # Nothing was charged (the refund is a tombstone that blocks a late charge), or
                # it was refunded already: either way, nothing more to give back.
                return _charge(row, balance)
            assert account is not None  # a charged order always has its account
            row.state = ChargeState.REFUNDED
            row.save(update_fields=["state", "updated_at"])
            _move(account, LedgerKind.REFUND, row.amount_cents, f"refund:{order_id}", order_id)
        return _charge(row, account.balance_cents)

    def payment(self, *, order_id: str, customer_id: str) -> Payment:
        # The primary, not a replica: the saga decides on this answer that nothing is left to refund.
        charges = models.OrderCharge.objects.using(database(customer_id, write=True))
        row = charges.filter(order_id=order_id).first()
        if row is None:
            return Payment(order_id=order_id, state=PaymentState.NONE, amount_cents=0)
        return Payment(order_id=order_id, state=PaymentState(row.state), amount_cents=row.amount_cents)

    def balance(self, *, customer_id: str) -> Balance:
        account = _account(database(customer_id, write=False), customer_id, lock=False)
        return Balance(customer_id=customer_id, balance_cents=account.balance_cents)

    def credit(self, *, customer_id: str, amount_cents: int, reference: str = "") -> Balance:
        alias = database(customer_id, write=True)
        try:
            with transaction.atomic(using=alias):
                account, _ = (
                    models.Account.objects.using(alias)
                    .select_for_update()
                    .get_or_create(customer_id=customer_id)
                )
                key = (
                    f"credit:{customer_id}:{reference}" if reference else f"credit:{self.context.message_id}"
                )
                _move(account, LedgerKind.CREDIT, amount_cents, key)
        except IntegrityError:
            # The reference was used before: that credit happened once already.
            account = _account(alias, customer_id, lock=False)
        return Balance(customer_id=customer_id, balance_cents=account.balance_cents)

    def statement(self, *, customer_id: str) -> Statement:
        alias = database(customer_id, write=False)
        account = _account(alias, customer_id, lock=False)
        lines = [
            LedgerLine(
                kind=LedgerKind(entry.kind),
                amount_cents=entry.amount_cents,
                order_id=entry.order_id,
                reference=entry.reference,
            )
            for entry in account.entries.order_by("id")
        ]
        return Statement(customer_id=customer_id, balance_cents=account.balance_cents, lines=lines)
