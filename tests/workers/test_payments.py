"""The payments domain over the bus: money moves once per order, and the ledger always balances."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import bus
from bus.modes import set_read_only
from bus.testing import serving
from bus.threads import in_pool
from workers.payments.contract import ChargeRefused, InsufficientFunds, Payments, UnknownAccount, money

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture
async def payments() -> AsyncIterator[Payments]:
    async with serving("payments"):
        client = Payments.client()
        await client.credit(customer_id="ada", amount_cents=10_000)
        yield client


async def assert_ledger_balances(payments: Payments, customer_id: str) -> int:
    statement = await payments.statement(customer_id=customer_id)
    assert sum(line.amount_cents for line in statement.lines) == statement.balance_cents
    return statement.balance_cents


async def test_credit_opens_the_account_and_a_reference_credits_once(payments: Payments) -> None:
    assert (await payments.balance(customer_id="ada")).balance_cents == 10_000
    await payments.credit(customer_id="bob", amount_cents=500, reference="welcome")
    again = await payments.credit(customer_id="bob", amount_cents=500, reference="welcome")
    assert again.balance_cents == 500
    assert await assert_ledger_balances(payments, "bob") == 500


async def test_charging_twice_charges_once_and_returns_the_first_result(payments: Payments) -> None:
    first = await payments.charge(order_id="o-1", customer_id="ada", amount_cents=2_500)
    second = await payments.charge(order_id="o-1", customer_id="ada", amount_cents=2_500)
    assert first.state == second.state == "charged"
    assert first.balance_cents == 7_500
    assert await assert_ledger_balances(payments, "ada") == 7_500


async def test_insufficient_funds_charge_nothing(payments: Payments) -> None:
    with pytest.raises(
        InsufficientFunds,
        match=r"The balance of ada is 100\.00 and 200\.00 was asked for; nothing was charged\.",
    ) as caught:
        await payments.charge(order_id="o-1", customer_id="ada", amount_cents=20_000)
    assert caught.value.details["balance_cents"] == 10_000
    assert await assert_ledger_balances(payments, "ada") == 10_000


async def test_unknown_account_is_a_declared_error(payments: Payments) -> None:
    with pytest.raises(UnknownAccount, match="Customer 'zed' has no account"):
        await payments.charge(order_id="o-1", customer_id="zed", amount_cents=1)
    with pytest.raises(UnknownAccount):
        await payments.balance(customer_id="zed")


async def test_refunding_twice_refunds_once(payments: Payments) -> None:
    await payments.charge(order_id="o-1", customer_id="ada", amount_cents=3_000)
    first = await payments.refund(order_id="o-1", customer_id="ada")
    second = await payments.refund(order_id="o-1", customer_id="ada")
    assert first.state == second.state == "refunded"
    assert first.balance_cents == second.balance_cents == 10_000
    assert await assert_ledger_balances(payments, "ada") == 10_000
    kinds = [line.kind for line in (await payments.statement(customer_id="ada")).lines]
    assert kinds == ["credit", "charge", "refund"]


async def test_a_charge_arriving_after_its_refund_is_refused(payments: Payments) -> None:
    await payments.charge(order_id="o-1", customer_id="ada", amount_cents=3_000)
    await payments.refund(order_id="o-1", customer_id="ada")
    with pytest.raises(
        ChargeRefused, match="Order o-1 was refunded; a late or repeated charge for it is refused"
    ):
        await payments.charge(order_id="o-1", customer_id="ada", amount_cents=3_000)
    assert await assert_ledger_balances(payments, "ada") == 10_000


async def test_a_refund_before_any_charge_blocks_the_late_charge(payments: Payments) -> None:
    """The saga gave up on a charge that timed out, refunded, and then the charge arrived."""
    tombstone = await payments.refund(order_id="o-2", customer_id="ada")
    assert (tombstone.state, tombstone.amount_cents) == ("refunded", 0)
    with pytest.raises(ChargeRefused):
        await payments.charge(order_id="o-2", customer_id="ada", amount_cents=100)
    assert await assert_ledger_balances(payments, "ada") == 10_000


async def test_an_orders_payment_can_be_read_even_in_read_only_mode(
    payments: Payments, settings: object
) -> None:
    """The saga asks it when a refund cannot be written: a refund of nothing need not wait."""
    settings.BUS = {**settings.BUS, "MODE_CACHE_SECONDS": 0}  # type: ignore[attr-defined]
    await payments.charge(order_id="o-1", customer_id="ada", amount_cents=3_000)
    await payments.refund(order_id="o-2", customer_id="ada")
    await in_pool(set_read_only, "payments", True, "ledger migration")
    try:
        with pytest.raises(bus.ReadOnly):
            await payments.refund(order_id="o-1", customer_id="ada")
        answers = [await payments.payment(order_id=o, customer_id="ada") for o in ("o-1", "o-2", "o-3")]
    finally:
        await in_pool(set_read_only, "payments", False)
    assert [(p.state, p.amount_cents) for p in answers] == [("charged", 3_000), ("refunded", 0), ("none", 0)]


def test_money_reads_as_the_page_shows_it() -> None:
    assert [money(cents) for cents in (12_900, 1_000, 5, 0, -250)] == [
        "129.00",
        "10.00",
        "0.05",
        "0.00",
        "-2.50",
    ]
