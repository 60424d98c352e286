"""The one routing table: HTTP, WebSockets, and the domain channels that `runworker` serves."""

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.asgi import get_asgi_application

from workers.inventory.service import InventoryService
from workers.orders.service import OrdersService
from workers.payments.service import PaymentsService

# Channel name -> the Service that serves it: `manage.py runworker inventory`.
domains = {
    "inventory": InventoryService.as_asgi(),
    "payments": PaymentsService.as_asgi(),
    "orders": OrdersService.as_asgi(),
}

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "channel": ChannelNameRouter(domains),
    }
)
