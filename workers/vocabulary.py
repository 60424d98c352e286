"""The words the domains' contracts share: ids that cross domains, each spelled once.

An order id is minted by orders and stored by inventory and payments; a SKU is inventory's and
orders names it in every line; a customer id is the key of payments' accounts and of orders'
lists. Each contract imports them from here rather than from another domain's contract, which
would make contracts import each other in a circle. Like a contract, it imports no domain, and
a domain's models may use it (`choices`) as they use their own contract.

The limits are the narrowest that every domain's columns hold and every caller already uses:
64 characters for each id (orders mints 23, inventory and payments store up to 64).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

__all__ = ["CustomerId", "OrderId", "Sku", "choices"]

OrderId = Annotated[str, Field(min_length=1, max_length=64)]
CustomerId = Annotated[str, Field(min_length=1, max_length=64)]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def choices(values: type[StrEnum]) -> list[tuple[str, str]]:
    """A contract's enum as a model field's `choices`, labelled as Django's TextChoices labels them.

    The contract's enum is the one spelling of a state: the model stores its values, the service
    turns a stored value back into it with `OrderState(row.state)`, and mypy sees one type.
    """
    return [(member.value, member.name.replace("_", " ").title()) for member in values]
