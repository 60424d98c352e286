"""The one routing table: HTTP, WebSockets, and the domain channels that `runworker` serves."""

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application
from django.urls import path

from consumers.customer import CustomerMiddleware
from consumers.service import PresentationService
from consumers.socket import EventsConsumer
from workers.inventory.service import InventoryService
from workers.orders.service import OrdersService
from workers.payments.service import PaymentsService

# Channel name -> the Service that serves it: `manage.py runworker inventory`.
domains = {
    "inventory": InventoryService.as_asgi(),
    "payments": PaymentsService.as_asgi(),
    "orders": OrdersService.as_asgi(),
    "presentation": PresentationService.as_asgi(),
}

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": AllowedHostsOriginValidator(
            CustomerMiddleware(URLRouter([path("ws/", EventsConsumer.as_asgi())]))
        ),
        "channel": ChannelNameRouter(domains),
    }
)
