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
from workers.payments.contract import Payments

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
    help = "Create demo products, stock and funded customers (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        asyncio.run(self._seed())
        self.stdout.write("Demo logins (username / password):")
        for username, password, cents in CUSTOMERS:
            self.stdout.write(f"  {username} / {password}   balance {cents / 100:.2f}")

    async def _seed(self) -> None:
        async with serving("inventory", "payments"):
            inventory = Inventory.client()
            for sku, name, price_cents, quantity in PRODUCTS:
                try:
                    await inventory.stock(sku=sku)
                except UnknownProduct:
                    await inventory.add_product(sku=sku, name=name, price_cents=price_cents)
                    await inventory.restock(sku=sku, quantity=quantity)
            payments = Payments.client()
            for username, password, cents in CUSTOMERS:
                await in_pool(_user, username, password)
                await payments.credit(customer_id=username, amount_cents=cents, reference="seed")
        self.stdout.write(f"Seeded {len(PRODUCTS)} products and {len(CUSTOMERS)} customers.")


def _user(username: str, password: str) -> None:
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
