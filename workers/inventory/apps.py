from django.apps import AppConfig


class InventoryConfig(AppConfig):
    """The catalogue and its stock; its tables live in the "inventory" database."""

    name = "workers.inventory"
    label = "inventory"
