from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """Customer accounts and their ledgers, sharded by customer (settings.DATABASE_SHARDS)."""

    name = "workers.payments"
    label = "payments"
