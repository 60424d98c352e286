"""The one way to the payments tables: every query names its customer's shard through here."""

from bus.databases import alias_for


def database(customer_id: str, *, write: bool) -> str:
    """The alias for `customer_id`'s rows: its shard's primary, or a replica for reads."""
    return alias_for("payments", key=customer_id, write=write)
