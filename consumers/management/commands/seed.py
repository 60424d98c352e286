"""`manage.py seed`: demo products, stock and funded customers; running it again changes nothing.

Everything goes through the domains' contracts, served for the occasion by in-process workers
(next to any that already run), so seeding needs no other process and touches no domain's tables.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from bus.threads import in_pool
from bus.worker import serving
from workers.inventory.contract import Inventory, UnknownProduct
from workers.payments.contract import Payments, UnknownAccount, money

PRODUCTS = [
    ("ANVIL-1", "Anvil, 50 kg", 12_900, 20),
    ("BELLOWS-2", "Forge bellows", 8_450, 12),
    ("TONGS-3", "Blacksmith tongs", 2_390, 30),
    ("HAMMER-4", "Cross-peen hammer", 3_600, 25),
    ("APRON-5", "Leather apron", 4_200, 15),
    ("QUENCH-6", "Quench oil, 5 l", 1_990, 3),
]
# username, password, opening balance in cents (linus is short of funds on purpose).
CUSTOMERS = [
    ("ada", "ada-demo-1815", 50_000),
    ("grace", "grace-demo-1906", 20_000),
    ("linus", "linus-demo-1969", 1_000),
]


class Command(BaseCommand):
    help = "Create demo products, stock and funded customers; a second run changes and says nothing. " + (
        "Demo logins: " + ", ".join(f"{username} / {password}" for username, password, _ in CUSTOMERS) + "."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        products, customers = asyncio.run(self._seed())
        if not products and not customers:
            if options["verbosity"] >= 1:
                self.stdout.write(
                    "Demo data already seeded; nothing changed (`manage.py seed --help` lists the logins)."
                )
            return
        self.stdout.write(f"Seeded {len(products)} product(s) and {len(customers)} customer(s).")
        if customers:
            self.stdout.write("Demo logins (username / password, opening balance):")
        for username, password, cents in CUSTOMERS:
            if username in customers:
                self.stdout.write(f"  {username} / {password}   {money(cents)}")

    async def _seed(self) -> tuple[list[str], list[str]]:
        """The SKUs and customers this run created; both empty when everything was there."""
        added: list[str] = []
        funded: list[str] = []
        async with serving("inventory", "payments"):
            inventory = Inventory.client()
            for sku, name, price_cents, quantity in PRODUCTS:
                try:
                    await inventory.stock(sku=sku)
                except UnknownProduct:
                    await inventory.add_product(sku=sku, name=name, price_cents=price_cents)
                    await inventory.restock(sku=sku, quantity=quantity)
                    added.append(sku)
            payments = Payments.client()
            for username, password, cents in CUSTOMERS:
                created = await in_pool(_user, username, password)
                if created or not await _funded(payments, username):
                    await payments.credit(customer_id=username, amount_cents=cents, reference="seed")
                    funded.append(username)
        return added, funded


async def _funded(payments: Payments, username: str) -> bool:
    """Whether the seed's opening credit is in the customer's ledger already."""
    try:
        statement = await payments.statement(customer_id=username)
    except UnknownAccount:
        return False
    return any(line.reference == f"credit:{username}:seed" for line in statement.lines)


def _user(username: str, password: str) -> bool:
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    return created
