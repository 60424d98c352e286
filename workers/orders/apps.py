from django.apps import AppConfig


class OrdersConfig(AppConfig):
    """Orders and the checkout saga that reserves stock, charges, and confirms or compensates."""

    name = "workers.orders"
    label = "orders"
