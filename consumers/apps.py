from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    """The presentation side: HTTP and WebSocket consumers, pages, and demo data."""

    name = "consumers"
    label = "presentation"
